"""Helpers shared by several test files (imported as `support`; pytest puts tests/ on sys.path)."""
import importlib
import os

import torch


# a safety net against a hung subprocess, not a speed requirement: CI machines may be slow or busy
SUBPROCESS_TIMEOUT = 1800


def outputs_per_budget(model, x):
    """The model's logits for `x` at every budget-table entry, in table order."""
    outs = []
    with torch.no_grad():
        for index in range(len(model.budget_table)):
            model.set_budget_entry(index)
            outs.append(model(x))
    return outs


def write_fashion_mnist_gz(folder, num_train=64, num_test=32, seed=0):
    """Tiny Fashion-MNIST-format IDX files (28x28 uint8 images, labels 0..9), gzipped under the dataset's own
    names in `folder`; each class's images are brighter by class so a model can learn something."""
    import gzip
    import struct
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (('train', num_train), ('t10k', num_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.integers(0, 60, (n, 28, 28)) + labels[:, None, None] * 19).astype(np.uint8)
        with gzip.open(folder / f'{prefix}-images-idx3-ubyte.gz', 'wb') as f:
            f.write(struct.pack('>IIII', 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f'{prefix}-labels-idx1-ubyte.gz', 'wb') as f:
            f.write(struct.pack('>II', 0x801, n) + labels.tobytes())
    return folder


def import_benchmark(name: str):
    """Import benchmarks/`name`.py as a module (pyproject's pytest `pythonpath` puts benchmarks/ on the path),
    keeping os.environ as it was: the benchmarks set one-thread variables for themselves, which must not reach the
    other tests or their subprocesses."""
    environ = dict(os.environ)
    try:
        return importlib.import_module(name)
    finally:
        os.environ.clear()
        os.environ.update(environ)
