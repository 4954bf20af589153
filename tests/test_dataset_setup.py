"""python -m timm_pss.dataset_setup: Fashion-MNIST's IDX files laid out for torchvision, atomically, no clobbering."""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision

from support import write_fashion_mnist_gz
from timm_pss import dataset_setup
from timm_pss.dataset_setup import SetupError, setup_dataset

ROOT = Path(__file__).resolve().parents[1]
NAMES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def test_lays_out_the_raw_folder_torchvision_reads(tmp_path):
    source = write_fashion_mnist_gz(tmp_path / 'src')
    written = setup_dataset('fashion-mnist', tmp_path / 'data', source)
    raw = tmp_path / 'data' / 'FashionMNIST' / 'raw'
    assert sorted(p.name for p in written) == sorted(NAMES) == sorted(p.name for p in raw.iterdir())
    for name in NAMES:
        assert (raw / name).read_bytes() == gzip.decompress((source / f'{name}.gz').read_bytes())
    train = torchvision.datasets.FashionMNIST(str(tmp_path / 'data'), train=True)
    test = torchvision.datasets.FashionMNIST(str(tmp_path / 'data'), train=False)
    assert len(train) == 64 and len(test) == 32 and train[3][0].size == (28, 28) and train[3][1] == 3
    # a second run keeps identical files and writes nothing
    assert setup_dataset('fashion-mnist', tmp_path / 'data', source) == []


def test_refuses_to_overwrite_a_different_file_and_writes_nothing(tmp_path):
    source = write_fashion_mnist_gz(tmp_path / 'src')
    raw = tmp_path / 'data' / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    (raw / 't10k-labels-idx1-ubyte').write_bytes(b'someone else\'s file')
    with pytest.raises(SetupError, match='t10k-labels-idx1-ubyte already exist with other content'):
        setup_dataset('fashion-mnist', tmp_path / 'data', source)
    assert [p.name for p in raw.iterdir()] == ['t10k-labels-idx1-ubyte']
    assert (raw / 't10k-labels-idx1-ubyte').read_bytes() == b'someone else\'s file'


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    source = write_fashion_mnist_gz(tmp_path / 'src')
    calls = []

    real_replace = os.replace

    def rename_fails_on_the_second_file(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError('disk full')
        real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', rename_fails_on_the_second_file)
    with pytest.raises(OSError, match='disk full'):
        setup_dataset('fashion-mnist', tmp_path / 'data', source)
    raw = tmp_path / 'data' / 'FashionMNIST' / 'raw'
    assert [p.name for p in raw.iterdir()] == ['train-images-idx3-ubyte']  # the first, complete; no temporaries
    monkeypatch.undo()
    assert len(setup_dataset('fashion-mnist', tmp_path / 'data', source)) == 3  # a re-run completes the rest


def test_cli_missing_package_files_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'timm_pss.dataset_setup', 'fashion-mnist', str(tmp_path / 'data'),
                           '--source', str(tmp_path / 'nothing')], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ''
    assert len(proc.stderr.strip().splitlines()) == 1
    assert 'apt-get install -y dataset-fashion-mnist' in proc.stderr and 'train-images-idx3-ubyte.gz' in proc.stderr
    assert not (tmp_path / 'data').exists()


def test_cli_sets_up_and_prints_the_training_command(tmp_path):
    source = write_fashion_mnist_gz(tmp_path / 'src')
    proc = subprocess.run([sys.executable, '-m', 'timm_pss.dataset_setup', 'fashion-mnist', str(tmp_path / 'data'),
                           '--source', str(source)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert 'wrote 4 files' in proc.stdout and '--dataset torch/fashion_mnist' in proc.stdout


def test_corrupt_source_is_a_clear_error(tmp_path):
    source = write_fashion_mnist_gz(tmp_path / 'src')
    (source / 'train-labels-idx1-ubyte.gz').write_bytes(b'not gzip')
    with pytest.raises(SetupError, match='train-labels-idx1-ubyte.gz is not a readable gzip file'):
        setup_dataset('fashion-mnist', tmp_path / 'data', source)
    assert not (tmp_path / 'data').exists()


@pytest.mark.parametrize('content, match', [
    (b'', 'does not gunzip to an IDX file'),                                  # a 0-byte .gz
    (gzip.compress(b''), 'does not gunzip to an IDX file'),                   # gzip of nothing
    (gzip.compress(b'\x00\x00\x08\x01' + (64).to_bytes(4, 'big') + bytes(10)), 'truncated or damaged IDX'),
], ids=['zero-bytes', 'empty-gzip', 'truncated'])
def test_empty_or_truncated_sources_are_refused_before_anything_is_written(tmp_path, content, match):
    source = write_fashion_mnist_gz(tmp_path / 'src')
    (source / 'train-labels-idx1-ubyte.gz').write_bytes(content)
    with pytest.raises(SetupError, match=match):
        setup_dataset('fashion-mnist', tmp_path / 'data', source)
    assert not (tmp_path / 'data').exists()
