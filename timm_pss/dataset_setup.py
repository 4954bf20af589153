"""Dataset set-up: lay out a dataset's files where timm's `--dataset torch/NAME --data-dir ROOT` reads them.

    python -m timm_pss.dataset_setup fashion-mnist ROOT
    python train_pss.py --dataset torch/fashion_mnist --data-dir ROOT ...

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (four IDX `.gz` files in
/usr/share/datasets/fashion-mnist/); they are gunzipped into ROOT/FashionMNIST/raw/, torchvision's layout, so no
download is needed. Each file is written to a temporary file in that folder, fsynced and renamed; a file already
there with the same content is kept, one with other content is never overwritten (nothing is written then).
"""
from __future__ import annotations

import argparse
import gzip
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .files import atomic_write, write_bytes_atomic

__all__ = ['DatasetSource', 'SOURCES', 'SetupError', 'idx_bytes', 'read_idx', 'setup_dataset', 'write_subset', 'main']

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetSource:
    """Where a system package keeps a dataset's files and where torchvision expects them under ROOT."""
    files: Tuple[str, ...]  # gzipped names in the source folder; written without '.gz'
    source_dir: str
    package: str  # the Debian package that installs source_dir
    raw_dir: str  # relative to ROOT
    timm_name: str  # --dataset value for timm


SOURCES: Dict[str, DatasetSource] = {
    'fashion-mnist': DatasetSource(
        files=('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz',
               't10k-labels-idx1-ubyte.gz'),
        source_dir='/usr/share/datasets/fashion-mnist', package='dataset-fashion-mnist',
        raw_dir='FashionMNIST/raw', timm_name='torch/fashion_mnist'),
}


class SetupError(ValueError):
    """The set-up cannot proceed: files missing from the source, or different files already at the destination."""


def _gunzipped_chunks(path: Path):
    try:
        with gzip.open(path, 'rb') as f:
            while chunk := f.read(_CHUNK):
                yield chunk
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise SetupError(f'{path} is not a readable gzip file ({e})') from e


def _check_idx(gz_path: Path) -> None:
    """The gunzipped content must be one whole IDX file: its magic (two zero bytes, type 0x08 unsigned byte, the
    number of dimensions), a 4-byte size per dimension, then exactly that many bytes of data."""
    head, total = b'', 0
    for chunk in _gunzipped_chunks(gz_path):
        if len(head) < 4 + 4 * 4:
            head += chunk[:64]
        total += len(chunk)
    if len(head) < 4 or head[:3] != b'\x00\x00\x08' or not 1 <= head[3] <= 4 or len(head) < 4 + 4 * head[3]:
        raise SetupError(f'{gz_path} does not gunzip to an IDX file of unsigned bytes ({total} bytes, header '
                         f'{head[:4].hex() or "empty"}); reinstall the package or give another --source')
    ndim = head[3]
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    if total != expected or not all(dims):
        raise SetupError(f'{gz_path} is a truncated or damaged IDX file: its header announces {"x".join(map(str, dims))} '
                         f'values ({expected} bytes) and it holds {total}')


def _same_content(gz_path: Path, existing: Path) -> bool:
    """Whether `existing` holds exactly the gunzipped content of `gz_path` (streamed, any size)."""
    with open(existing, 'rb') as f:
        for chunk in _gunzipped_chunks(gz_path):
            if f.read(len(chunk)) != chunk:
                return False
        return f.read(1) == b''


def setup_dataset(name: str, root: Path, source_dir: Optional[Path] = None) -> List[Path]:
    """Gunzip dataset `name`'s files from `source_dir` (default: its package's folder) into ROOT's raw folder.

    Returns the files written (those already there with the same content are skipped). Checks everything before
    writing anything: raises SetupError naming the missing source files and the package to install, a source that
    does not gunzip, or the destination files whose content differs.
    """
    if name not in SOURCES:
        raise SetupError(f'unknown dataset {name!r}; known: {sorted(SOURCES)}')
    spec = SOURCES[name]
    source_dir = Path(source_dir or spec.source_dir)
    missing = [f for f in spec.files if not (source_dir / f).is_file()]
    if missing:
        raise SetupError(f'{source_dir} lacks {", ".join(missing)}; install them with: '
                         f'apt-get install -y {spec.package}')
    for f in spec.files:  # every source must gunzip to a whole IDX file before anything is written
        _check_idx(source_dir / f)
    raw = Path(root) / spec.raw_dir
    pairs = [(source_dir / f, raw / f[:-len('.gz')]) for f in spec.files]
    different = [str(dest) for src, dest in pairs if dest.exists() and not _same_content(src, dest)]
    if different:
        raise SetupError(f'{", ".join(different)} already exist with other content; not overwritten (move them '
                         f'away to set up again)')
    raw.mkdir(parents=True, exist_ok=True)
    written = []
    for src, dest in pairs:
        if not dest.exists():
            with atomic_write(dest, 'wb') as f:  # a temporary beside dest, fsynced, renamed
                for chunk in _gunzipped_chunks(src):
                    f.write(chunk)
            written.append(dest)
    return written


def read_idx(path: Path) -> np.ndarray:
    """The array an unsigned-byte IDX file (MNIST's format) holds."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    return read_sn3_pascalvincent_tensor(str(path), strict=False).numpy()


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file (MNIST's format) holding `array`."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_subset(name: str, full_root: Path, root: Path, train_size: Optional[int], test_size: Optional[int],
                 seed: int = 0) -> Path:
    """A copy of dataset `name` (laid out under `full_root` by `setup_dataset`) under `root` that keeps a fixed
    random subset (chosen by `seed`, in the original order) of `train_size` training and `test_size` test images;
    None keeps all of a split. Files already holding the same bytes are left alone; others are written atomically.
    Asking for more images than a split has raises SetupError. Returns `root`."""
    spec = SOURCES[name]
    src, raw = Path(full_root) / spec.raw_dir, Path(root) / spec.raw_dir
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, size in (('train', train_size), ('t10k', test_size)):
        images = read_idx(src / f'{prefix}-images-idx3-ubyte')
        labels = read_idx(src / f'{prefix}-labels-idx1-ubyte')
        if size is not None and size > len(labels):
            raise SetupError(f'asked for {size} {prefix} images, {name} has {len(labels)}')
        keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:size or len(labels)])
        for kind, array in (('images-idx3', images[keep]), ('labels-idx1', labels[keep])):
            dest = raw / f'{prefix}-{kind}-ubyte'
            data = idx_bytes(array)
            if not dest.exists() or dest.read_bytes() != data:
                write_bytes_atomic(dest, data)
    return Path(root)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_pss.dataset_setup', description=__doc__.split('\n')[0])
    parser.add_argument('dataset', choices=sorted(SOURCES), help='dataset to set up')
    parser.add_argument('root', type=Path, help='dataset root, as given to train_pss.py --data-dir')
    parser.add_argument('--source', type=Path, default=None,
                        help='folder holding the .gz files (default: the Debian package\'s folder, e.g. '
                             f'{SOURCES["fashion-mnist"].source_dir})')
    args = parser.parse_args(argv)
    try:
        written = setup_dataset(args.dataset, args.root, args.source)
    except SetupError as e:
        print(f'{parser.prog}: error: {e}', file=sys.stderr)
        return 2
    spec = SOURCES[args.dataset]
    kept = len(spec.files) - len(written)
    print(f'{args.root / spec.raw_dir}: wrote {len(written)} files' + (f', kept {kept} identical' if kept else '')
          + f'. Train with: python train_pss.py --dataset {spec.timm_name} --data-dir {args.root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
