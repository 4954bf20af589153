"""Helpers for the train_pss tests (imported as `train_support`): the tiny run's settings, train_pss.py in a
subprocess or in this process, a usage error expected, a real checkpoint, ImageNet-style class folders."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import SUBPROCESS_TIMEOUT
from timm_pss.train import main
from timm_pss.train.args import parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model', 'pss_mobilenetv1', '-b', '128', '--pss-num-pools', '3', '--pss-pool-size', '2', '--pss-top-k',
        '1', '--pss-calib-batches', '1', '--pss-resolutions', '16', '24', '8', '--log-interval', '5']


def train_command(*args, launcher=None):
    return (launcher or [sys.executable]) + [str(ROOT / 'train_pss.py'), *TINY, *args]


def run_train(*args, launcher=None, timeout=SUBPROCESS_TIMEOUT):
    proc = subprocess.run(train_command(*args, launcher=launcher), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def summary_rows(run_dir):
    with open(run_dir / 'results.csv') as f:
        return list(csv.DictReader(f))


def run_main(argv):
    """main(argv) in this process, leaving the root logger as it was (main adds a console handler)."""
    import logging
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        return main(argv)
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


def run_train_here(capsys, *args):
    """What `run_train` does, in this process: a run whose checks are about its outputs, not about the process (no
    interpreter and torch start-up per run); returns its log (stdout + stderr)."""
    run_main(TINY + list(args))
    out, err = capsys.readouterr()
    return out + err


def usage_error(argv, capsys):
    """Run main(argv) in-process; it must stop with exit code 2 and one error line, no traceback."""
    import logging
    handlers = logging.root.handlers[:]
    try:
        with pytest.raises(SystemExit) as e:
            main(argv)
    finally:  # main's logging handlers write to this test's captured stderr: drop them with it
        logging.root.handlers[:] = handlers
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert e.value.code == 2 and len(errors) == 1 and 'Traceback' not in err, err[-2000:]
    return errors[0]


def write_checkpoint(folder, argv, payload=None, **changes):
    """A real train_pss.py-style checkpoint (torch.save) whose args are parse_args(argv) with `changes`."""
    import torch
    args = yaml.safe_load(yaml.safe_dump(vars(parse_args(argv)[0])))
    args.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(payload or {'epoch': 0, 'version': 2, 'arch': args['model'], 'state_dict': {}, 'args': args},
               folder / 'last.pth.tar')
    return folder


def write_image_folders(root, classes, empty=()):
    from timm_pss.data import DigitsDataset
    for split in ('train', 'validation'):
        for c in classes:
            (root / split / c).mkdir(parents=True)
        for i, (image, label) in enumerate(DigitsDataset('val', image_size=8)):
            if i >= 2 * len(classes):
                break
            c = classes[i % len(classes)]
            if c not in empty:
                image.save(root / split / c / f'{i}.png')
