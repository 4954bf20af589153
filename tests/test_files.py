"""timm_pss.files: atomic writes survive a failure mid-write, stale temporaries go, new folders are never shared."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from timm_pss.files import (
    TEMP_PREFIX, atomic_path, atomic_write, check_new_file, claim_new_dir, remove_stale_temporaries, write_text_atomic,
)


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_failure_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / 'config.json'
    write_text_atomic(target, '{"old": true}')
    with pytest.raises(RuntimeError, match='disk gone'):
        with atomic_write(target) as f:
            f.write('{"new": ')  # part of the new content is on disk when the writer fails
            f.flush()
            raise RuntimeError('disk gone')
    assert json.loads(target.read_text()) == {'old': True}
    assert _temporaries(tmp_path) == []
    write_text_atomic(target, '{"new": true}')
    assert json.loads(target.read_text()) == {'new': True} and _temporaries(tmp_path) == []


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    """A serializer given the temporary's name that writes part of the file and raises changes nothing."""
    target = tmp_path / 'lut.json'
    target.write_text('previous table')
    with pytest.raises(OSError, match='no space left'):
        with atomic_path(target) as temp:
            assert temp.parent == tmp_path and temp.name.startswith(TEMP_PREFIX) and temp.suffix == '.json'
            temp.write_text('{"format": "timm_pss.lat')
            raise OSError(28, 'no space left on device')
    assert target.read_text() == 'previous table' and _temporaries(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f'{TEMP_PREFIX}{dead_pid}-deadbeef-model.safetensors'
    alive = tmp_path / f'{TEMP_PREFIX}{os.getppid()}-cafecafe-model.safetensors'  # a running writer: left alone
    other = tmp_path / '.tmp_other_tool'
    for p in (stale, alive, other):
        p.write_bytes(b'partial')
    write_text_atomic(tmp_path / 'results.csv', 'a,b\n')
    assert not stale.exists() and alive.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path) == []


def test_claim_new_dir_adds_a_suffix_and_concurrent_claims_never_share(tmp_path):
    first = claim_new_dir(tmp_path / 'out' / 'run')
    (first / 'args.yaml').write_text('mine')
    assert first == tmp_path / 'out' / 'run'
    assert claim_new_dir(tmp_path / 'out' / 'run') == tmp_path / 'out' / 'run-1'
    assert (first / 'args.yaml').read_text() == 'mine'
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_new_dir(tmp_path / 'conc'), range(16)))
    assert len(set(claimed)) == 16 and all(p.is_dir() for p in claimed)


def test_check_new_file(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        check_new_file(tmp_path / 'missing' / 'x.json')
    (tmp_path / 'x.json').write_text('{}')
    with pytest.raises(ValueError, match='--force'):
        check_new_file(tmp_path / 'x.json')
    assert check_new_file(tmp_path / 'x.json', force=True) == tmp_path / 'x.json'
    with pytest.raises(ValueError, match='is a folder'):
        check_new_file(tmp_path)
    assert check_new_file(tmp_path / 'y.json') == tmp_path / 'y.json'


def test_a_truncated_latency_table_names_the_file(tmp_path):
    from timm_pss.latency import LatencyTable
    path = tmp_path / 'lut.json'
    path.write_text('{"format": "timm_pss.lat')  # what a kill during a non-atomic save left behind
    with pytest.raises(ValueError, match=f'{path}: latency table is not valid JSON'):
        LatencyTable.load(path)


def _special(kind, folder):
    """A FIFO or a symlink (to a file that must stay untouched) in a temporary folder: never a real device."""
    path = folder / f'out-{kind}'
    if kind == 'fifo':
        os.mkfifo(path)
    else:
        (folder / 'precious.txt').write_text('keep me')
        os.symlink(folder / 'precious.txt', path)
    return path


@pytest.mark.parametrize('kind', ['fifo', 'symlink'])
def test_only_regular_files_are_ever_replaced(tmp_path, kind):
    path = _special(kind, tmp_path)
    with pytest.raises(ValueError, match='writes only new files or over regular files'):
        write_text_atomic(path, 'new')
    with pytest.raises(ValueError, match='writes only new files or over regular files'):
        check_new_file(path, force=True)
    assert (path.is_fifo() if kind == 'fifo' else path.is_symlink() and path.read_text() == 'keep me')
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize('kind', ['fifo', 'symlink'])
def test_the_latency_cli_refuses_a_special_output_even_with_force(tmp_path, kind):
    path = _special(kind, tmp_path)
    proc = subprocess.run([sys.executable, '-m', 'timm_pss.latency', '--model', 'pss_mobilenetv2', '--output',
                           str(path), '--force'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and 'writes only new files or over regular files' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (path.is_fifo() if kind == 'fifo' else path.is_symlink() and path.read_text() == 'keep me')
