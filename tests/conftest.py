"""Shared test data: scikit-learn's bundled handwritten digits (real data, no download) as small RGB tensors.

The suite runs one compute thread per process (this process and the subprocesses it starts): on a busy or shared
CPU, torch's default of one thread per core spins threads that wait on each other, and a test then takes many
times as long; one thread keeps each test's cost proportional to its work.
"""
import os

for _name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_name, '1')

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


@pytest.fixture(scope='session')
def digits():
    """(images (1797, 3, 32, 32) in [0, 1], labels (1797,)) from sklearn's load_digits."""
    from sklearn.datasets import load_digits
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=32, mode='bilinear', align_corners=False).repeat(1, 3, 1, 1)
    return images, torch.tensor(data.target)


# a small real train_pss.py run on the embedded digits (2 epochs, 3 pools): what a user's first run folder holds
TRAINED_RUN_ARGS = ['--model', 'pss_mobilenetv1', '-b', '128', '--pss-num-pools', '3', '--pss-pool-size', '2',
                    '--pss-top-k', '1', '--pss-calib-batches', '1', '--pss-resolutions', '16', '24', '8',
                    '--log-interval', '5', '--epochs', '2']


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
    """(run folder, log) of a finished train_pss.py process on the embedded digits, shared by the tests that only
    read it."""
    import subprocess
    import sys
    from pathlib import Path

    from support import SUBPROCESS_TIMEOUT

    root = Path(__file__).resolve().parents[1]
    output = tmp_path_factory.mktemp('trained')
    proc = subprocess.run([sys.executable, str(root / 'train_pss.py'), *TRAINED_RUN_ARGS, '--output', str(output),
                           '--experiment', 'run'], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return output / 'run', proc.stdout + proc.stderr
