"""Nothing lost, nothing silent: train_pss.py's checks that stop a run before training, with one line and exit
code 2 (bad options, unwritable or full output, a folder in use, resumes that do not match), and its atomic summary."""
import csv
import os
import shutil
from pathlib import Path

import pytest

from timm_pss.reporting import write_summary_row
from timm_pss.train.args import parse_args
from timm_pss.train.checks import UsageError, check_run_args
from timm_pss.train.run import claim_output_dir
from train_support import TINY, usage_error, write_checkpoint, write_image_folders

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('case', ['data_dir', 'epochs', 'batch', 'empty_class', 'resume_empty', 'resume_model',
                                  'resume_pools', 'resume_unsafe'])
def test_usage_errors_stop_before_training(tmp_path, capsys, case):
    import fractions
    out = ['--output', str(tmp_path / 'out'), '--epochs', '1']
    base = TINY + out
    argv, expected = {
        'data_dir': (base + ['--data-dir', str(tmp_path / 'nope')], 'does not exist'),
        'epochs': (TINY + ['--output', str(tmp_path / 'out'), '--epochs', '0'], '--epochs must be at least 1, got 0'),
        'batch': (base + ['-b', '-1'], '--batch-size must be at least 1, got -1'),
        'empty_class': (base + ['--data-dir', str(tmp_path / 'data')], 'c1 holds no images'),
        'resume_empty': (base + ['--resume', str(tmp_path / 'empty')], 'holds no last.pth.tar'),
        'resume_model': (base + ['--resume', str(tmp_path / 'v2')], 'a run of pss_mobilenetv2 with --model'),
        'resume_pools': (base + ['--resume', str(tmp_path / 'pools5')], '--pss-num-pools 5'),
        'resume_unsafe': (base + ['--resume', str(tmp_path / 'unsafe')], 'weights_only=True) refused'),
    }[case]
    if case == 'empty_class':
        write_image_folders(tmp_path / 'data', ['c0', 'c1', 'c2'], empty=['c1'])
    (tmp_path / 'empty').mkdir()
    write_checkpoint(tmp_path / 'v2', base, model='pss_mobilenetv2')
    write_checkpoint(tmp_path / 'pools5', base, pss_num_pools=5)
    write_checkpoint(tmp_path / 'unsafe', base, payload={'state_dict': {}, 'args': fractions.Fraction(1, 3)})
    assert expected in usage_error(argv, capsys)
    assert not (tmp_path / 'out').exists()  # nothing was created


def test_read_only_output_stops_before_training(tmp_path, monkeypatch, capsys):
    """A --output that cannot be written (injected: mkdir raises EACCES there) is one line, before any epoch."""
    real_mkdir = os.mkdir
    readonly = tmp_path / 'readonly'
    readonly.mkdir()

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(readonly)):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, 'mkdir', mkdir)
    line = usage_error(TINY + ['--epochs', '1', '--output', str(readonly), '--experiment', 'x'], capsys)
    assert 'Permission denied' in line and 'writable --output' in line


def test_full_disk_stops_before_training(tmp_path, monkeypatch, capsys):
    """Free space far below a run's checkpoints (injected disk_usage) is refused, naming both numbers."""
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil_usage(total=2**30, used=2**30 - 5 * 2**20,
                                                                        free=5 * 2**20))
    line = usage_error(TINY + ['--epochs', '1', '--output', str(tmp_path / 'out')], capsys)
    assert '5.0 MiB free' in line and 'needs about' in line and '--checkpoint-hist' in line
    assert not (tmp_path / 'out').exists()


def test_finalize_only_needs_room_for_the_weights_alone(tmp_path, monkeypatch):
    """--pss-finalize-only writes no checkpoint: room for the weights twice over is enough for it, not for a
    training run."""
    import timm
    from timm_pss.train.checks import check_free_space
    model = timm.create_model('pss_mobilenetv1', num_classes=10)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil_usage(total=2**40, used=0, free=2 * weights))
    finalise = parse_args(TINY + ['--resume', str(tmp_path), '--pss-finalize-only'])[0]
    check_free_space(tmp_path, model, finalise)  # no UsageError
    with pytest.raises(UsageError, match='checkpoints of'):
        check_free_space(tmp_path, model, parse_args(TINY + ['--epochs', '1'])[0])


def shutil_usage(total, used, free):
    return shutil._ntuple_diskusage(total, used, free)


def test_runs_never_share_a_folder(tmp_path):
    """A second run with the same --output/--experiment gets NAME-1 (the first run's files stay), concurrent runs
    get distinct folders, and only --resume continues an existing one."""
    args = parse_args(TINY + ['--output', str(tmp_path), '--experiment', 'conc'])[0]
    first = claim_output_dir(args)
    (first / 'args.yaml').write_text('first run')
    assert claim_output_dir(args) == tmp_path / 'conc-1'
    assert (first / 'args.yaml').read_text() == 'first run'
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(lambda _: claim_output_dir(args), range(8)))
    assert len(set(claimed)) == 8
    checkpoint = first / 'last.pth.tar'
    assert claim_output_dir(args, resume_path=checkpoint) == first  # --resume continues its own folder
    fork = parse_args(TINY + ['--output', str(tmp_path), '--experiment', 'fork'])[0]
    assert claim_output_dir(fork, resume_path=checkpoint) == tmp_path / 'fork'


def test_summary_rows_are_rewritten_atomically(tmp_path, monkeypatch):
    path = tmp_path / 'summary.csv'
    for epoch in range(3):
        write_summary_row(path, epoch, {'loss': 1.0 / (epoch + 1)}, {'top1': 10.0 * epoch}, lr=0.1)
    before = path.read_bytes()
    real_writerow = csv.DictWriter.writerow

    def fail_on_new_row(self, row):
        if row.get('epoch') == 3:
            raise OSError(28, 'No space left on device')
        return real_writerow(self, row)

    monkeypatch.setattr(csv.DictWriter, 'writerow', fail_on_new_row)
    with pytest.raises(OSError):
        write_summary_row(path, 3, {'loss': 0.2}, {'top1': 40.0}, lr=0.1)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['summary.csv']
    monkeypatch.undo()
    # a resumed run rewrites the killed epoch's row instead of appending a second one
    write_summary_row(path, 1, {'loss': 0.7}, {'top1': 15.0}, lr=0.1)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r['epoch'], r['eval_top1']) for r in rows] == [('0', '0.0'), ('1', '15.0')]


@pytest.mark.parametrize('change, saved', [(['--pss-sampler', 'uniform'], {}),
                                           ([], {'pss_priority': 'zscore'}),
                                           (['--pss-shuffle-scores'], {})])
def test_resume_refuses_another_way_of_drawing_subnets(tmp_path, change, saved):
    """A prioritized run continued as in-bucket uniform (both save the same sampler state) would silently mix
    two methods in one run."""
    base = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1']
    folder = write_checkpoint(tmp_path / 'run', base, **saved)
    args, _ = parse_args(base + change + ['--resume', str(folder)])
    with pytest.raises(UsageError) as e:
        check_run_args(args)
    assert e.value.exit_code == 2
    option = '--' + (next(iter(saved)) if saved else change[0][2:]).replace('_', '-')
    assert option in str(e.value)
    same = base + [f'--pss-priority={value}' for value in saved.values()]  # the saved run's own settings
    check_run_args(parse_args(same + ['--resume', str(folder)])[0])  # accepted


def test_resume_accepts_the_class_count_the_run_inferred(tmp_path):
    """The saved run inferred --num-classes 10 from the data; resuming it without --num-classes infers it again."""
    base = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1']
    folder = write_checkpoint(tmp_path / 'run', base, num_classes=10)
    args, _ = parse_args(base + ['--resume', str(folder)])
    check_run_args(args)  # no UsageError
    args, _ = parse_args(base + ['--resume', str(folder), '--num-classes', '5'])
    with pytest.raises(UsageError, match='--num-classes'):
        check_run_args(args)


@pytest.mark.parametrize('threads,load,warns', [(None, 0.0, False), (1, 9.0, False), (2, 9.0, True)])
def test_threads_are_applied_and_logged_with_a_busy_cpu_warning(monkeypatch, caplog, threads, load, warns):
    """--threads sets torch's thread count; the log says the count and the load, and advises --threads 1 only when
    more than one thread would compete with a CPU already busier than its cores."""
    import logging
    import torch
    from timm_pss.train.run import set_threads
    before = torch.get_num_threads()
    monkeypatch.setattr(os, 'getloadavg', lambda: (load, load, load))
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    args, _ = parse_args(TINY + (['--threads', str(threads)] if threads else []))
    try:
        with caplog.at_level(logging.INFO, logger='train_pss'):
            set_threads(args, primary=True)
        assert torch.get_num_threads() == (threads or before)
    finally:
        torch.set_num_threads(before)
    lines = [r.getMessage() for r in caplog.records]
    assert any(f'CPU threads per process: {threads or before} ' in m and f'load average {load:.1f} on 2 cores' in m
               for m in lines), lines
    assert any('--threads 1' in m and 'busy' in m for m in lines) == warns


def test_threads_below_one_are_refused(tmp_path, capsys):
    assert 'threads' in usage_error(TINY + ['--threads', '0', '--output', str(tmp_path / 'out')], capsys)
