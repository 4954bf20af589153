"""train_pss.py end to end on the embedded digits: outputs, safe checkpoints, kill + resume, torchrun, config."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import yaml
from safetensors.torch import load_file
from timm.utils import load_checkpoint_metadata

import timm_pss  # noqa: F401
from support import SUBPROCESS_TIMEOUT
from timm_pss.reporting import write_summary_row
from timm_pss.train import main
from timm_pss.train.args import EMBEDDED_DEFAULTS, build_parser, parse_args
from timm_pss.train.checks import UsageError, check_run_args, eval_metric_names
from timm_pss.train.data import create_datasets, create_loaders, monitor_batch, resolve_data_properties
from timm_pss.train.optimizer import create_optimizer, depthwise_weight_names, lr_base_scale, scaled_lr
from timm_pss.train.run import claim_output_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model', 'pss_mobilenetv1', '-b', '128', '--pss-num-pools', '3', '--pss-pool-size', '2', '--pss-top-k',
        '1', '--pss-calib-batches', '1', '--pss-resolutions', '16', '24', '8', '--log-interval', '5']


def _cmd(*args, launcher=None):
    return (launcher or [sys.executable]) + [str(ROOT / 'train_pss.py'), *TINY, *args]


def _run(*args, launcher=None, timeout=SUBPROCESS_TIMEOUT):
    proc = subprocess.run(_cmd(*args, launcher=launcher), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _rows(run_dir):
    with open(run_dir / 'results.csv') as f:
        return list(csv.DictReader(f))


def test_help_reads_well():
    out = subprocess.run([sys.executable, str(ROOT / 'train_pss.py'), '--help'], capture_output=True, text=True,
                         cwd=ROOT).stdout
    for option in ('--model', '--data-dir', '--batch-size', '--model-ema', '--mixup', '--resume', '--config',
                   '--pss-budget-range', '--pss-pool-size', '--pss-p-random', '--pss-heldout-frac'):
        assert option in out
    assert 'Prioritized Subnet Sampling' in out


# the embedded run's options: every output, --eval-metric, --val-interval and recovery checkpoints in two epochs
EMBEDDED_RUN = ['--epochs', '2', '--eval-metric', 'min_top1', '--val-interval', '2', '--recovery-interval', '3']


@pytest.fixture(scope='module')
def embedded_run(tmp_path_factory):
    """(run folder, log) of one uninterrupted embedded-digits run, as a real process: shared by the tests that
    only read it (its outputs, and the run a killed and resumed run must reproduce)."""
    output = tmp_path_factory.mktemp('embedded')
    log = _run(*EMBEDDED_RUN, '--output', str(output), '--experiment', 'run')
    return output / 'run', log


def test_embedded_run_writes_every_output(embedded_run):
    run, log = embedded_run
    assert 'budget table with validation accuracy' in log and 'Train: 1' in log and 'pools ' in log
    for name in ('model.safetensors', 'results.csv', 'results.json', 'summary.csv', 'args.yaml',
                 'accuracy_vs_flops.png', 'last.pth.tar'):
        assert (run / name).is_file(), name
    assert (run / 'accuracy_vs_flops.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert yaml.safe_load((run / 'args.yaml').read_text())['model'] == 'pss_mobilenetv1'
    rows = _rows(run)
    model = timm.create_model('pss_mobilenetv1', num_classes=10, resolution_range=(16, 24, 8))
    model.load_state_dict(load_file(str(run / 'model.safetensors')), strict=True)
    table = model.budget_table
    assert [e.flops for e in table] == [int(r['flops']) for r in rows] and len(rows) >= 3
    assert all(0 <= float(r['top1']) <= 100 and r['heldout_top1'] for r in rows)
    assert table[-1].subnet == model.space.max_subnet() and table[0].subnet == model.space.min_subnet()
    fitting = [e for e in table if e.flops <= table[1].flops]
    assert model.set_budget(table[1].flops) == max(fitting, key=lambda e: (e.metrics['heldout_top1'], e.flops))
    # the checkpoint loads without unpickling arbitrary objects and carries pools and RNG state
    meta = load_checkpoint_metadata(str(run / 'last.pth.tar'))
    assert meta['epoch'] == 1 and 'optimizer' in meta
    assert meta['task_state']['pss_sampler']['format'] == 'timm_pss.pss_sampler/1'
    assert set(meta['task_state']['rng']) == {'torch', 'numpy', 'python'}
    # plain torch.load(weights_only=True), no allowlisted classes: the args are a plain dict, not a Namespace
    import torch
    checkpoint = torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert type(checkpoint['args']) is dict and checkpoint['args']['model'] == checkpoint['arch'] == 'pss_mobilenetv1'
    with open(run / 'summary.csv') as f:
        assert [r['epoch'] for r in csv.DictReader(f)] == ['0', '1']
    assert not [p.name for p in run.iterdir() if p.name.startswith('.') or 'tmp' in p.name]  # no temporaries left
    # pool diagnostics, one row per (epoch, pool) plus a mean row per epoch, and a summary line per epoch
    with open(run / 'pss_diagnostics.csv', newline='') as f:
        reader = csv.DictReader(f)
        diagnostics = list(reader)
    assert reader.fieldnames[:5] == ['epoch', 'pool', 'top_member_prob', 'effective_members',
                                     'spearman_score_vs_fresh']
    assert [(r['epoch'], r['pool']) for r in diagnostics] == [(e, p) for e in '01' for p in ('0', '1', '2', 'mean')]
    assert 'Pools 1: top member p' in log and not list(run.glob('.*.tmp'))
    # --eval-metric ranks the checkpoints by the min subnet's top-1; --val-interval 2 evaluates the last epoch only
    with open(run / 'summary.csv') as f:
        min_top1 = {f'checkpoint-{r["epoch"]}.pth.tar': float(r['eval_min_top1'] or 'nan') for r in csv.DictReader(f)}
    ranked = dict(meta['saver']['checkpoint_files'])
    ranked[f'checkpoint-{meta["saver"]["pending"][0]}.pth.tar'] = meta['saver']['pending'][1]  # this last.pth.tar's
    assert ranked['checkpoint-0.pth.tar'] is None and ranked['checkpoint-1.pth.tar'] == min_top1['checkpoint-1.pth.tar']
    assert 'Epoch 0: no evaluation (--val-interval 2)' in log and 'Epoch 1: max' in log
    # --recovery-interval 3: recovery checkpoints during the epochs, timm's saver keeping the latest two; an ETA on
    # every progress line
    recovery = [p.name for p in run.glob('recovery-*.pth.tar')]
    assert 1 <= len(recovery) <= 2 and all(name.startswith('recovery-1-') for name in recovery)
    progress = [line for line in log.splitlines() if 'Train: ' in line]
    assert progress and all(' ETA ' in line for line in progress)


def test_killed_run_resumes_to_the_same_budget_table(embedded_run, tmp_path):
    """SIGKILL mid-epoch, resume from the last checkpoint: the same final table as the uninterrupted run."""
    args = [*EMBEDDED_RUN, '--output', str(tmp_path)]
    proc = subprocess.Popen(_cmd(*args, '--experiment', 'killed'), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = tmp_path / 'killed' / 'checkpoint-0.pth.tar'
    while not first.exists() and proc.poll() is None:  # no deadline: a slow or busy machine only takes longer
        time.sleep(0.1)
    # killed at once: somewhere in epoch 1 (or its start) whatever the machine's speed; only the kill matters
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / 'killed' / 'results.csv').exists()
    log = _run(*args, '--experiment', 'killed', '--resume', str(tmp_path / 'killed'))
    assert 'Resumed from' in log and 'at epoch 1' in log
    straight, resumed = _rows(embedded_run[0]), _rows(tmp_path / 'killed')
    assert [(r['flops'], r['resolution'], r['widths']) for r in resumed] == \
           [(r['flops'], r['resolution'], r['widths']) for r in straight]
    assert [r['top1'] for r in resumed] == [r['top1'] for r in straight]
    history = load_checkpoint_metadata(str(tmp_path / 'killed' / 'last.pth.tar'))['saver']['checkpoint_files']
    assert 'checkpoint-0.pth.tar' in [name for name, _ in history]  # the saver's history went on from before the kill


def test_torchrun_two_processes(tmp_path):
    """A real torchrun gloo group: DDP training, pools checked identical across ranks, only rank 0 writes."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}']
    log = _run('--epochs', '1', '--output', str(tmp_path), '--experiment', 'ddp', launcher=launcher)
    assert '2 processes' in log
    assert [p.name for p in tmp_path.iterdir()] == ['ddp']
    assert len(_rows(tmp_path / 'ddp')) >= 3
    meta = load_checkpoint_metadata(str(tmp_path / 'ddp' / 'last.pth.tar'))
    assert sum(len(p) for p in meta['task_state']['pss_sampler']['pools']) > 0


def test_config_file_sets_defaults_and_rejects_unknown_pss_keys(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('epochs: 7\npss_budget_range: [110M, 570M, 10M]\npss_pool_size: 9\n')
    args, _ = parse_args(['-c', str(config), '--pss-pool-size', '5'])
    assert args.epochs == 7 and args.pss_pool_size == 5 and args.pss_budget_range == [110e6, 570e6, 10e6]
    embedded, _ = parse_args([])
    assert embedded.epochs == EMBEDDED_DEFAULTS['epochs']
    recipe = str(ROOT / 'recipes/pss_mobilenetv1_imagenet.yaml')
    imagenet, _ = parse_args(['--data-dir', '/data', '-c', recipe])
    assert imagenet.epochs == 250 and imagenet.pss_budget_range == [110e6, 570e6, 10e6] and not imagenet.pss_wd_depthwise
    config.write_text('pss_pool_sise: 7\n')  # a misspelt --pss-* key is an error (other unknown keys: a warning)
    with pytest.raises(SystemExit):
        parse_args(['-c', str(config)])
    with pytest.raises(SystemExit):
        parse_args(['--pss-finalize-only'])


def test_rejects_a_model_that_is_not_a_supernet(tmp_path):
    with pytest.raises(SystemExit) as e:
        _main(['--model', 'resnet18', '--epochs', '1', '--output', str(tmp_path / 'out')])
    assert e.value.code != 0 and 'not a timm_pss supernet' in str(e.value.code)
    assert not (tmp_path / 'out').exists()


def test_imagenet_style_folder_with_mixup_ema_amp_and_accumulation(tmp_path, capsys):
    """--data-dir with class folders goes through timm's create_dataset; the timm recipe options work together."""
    from timm_pss.data import DigitsDataset
    for split, folder in (('train', 'train'), ('val', 'validation')):
        for i, (image, label) in enumerate(DigitsDataset(split, image_size=24)):
            if i >= 120:
                break
            (tmp_path / 'data' / folder / f'c{label}').mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / 'data' / folder / f'c{label}' / f'{i}.png')
    log = _run_here(capsys, '--data-dir', str(tmp_path / 'data'), '--num-classes', '10', '--epochs', '1',
                    '-b', '16', '--grad-accum-steps', '2', '--mixup', '0.2', '--cutmix', '0.5', '--model-ema',
                    '--model-ema-decay', '0.9', '--amp', '--workers', '0', '--output', str(tmp_path),
                    '--experiment', 'folder')
    assert 'budget table with validation accuracy' in log
    meta = load_checkpoint_metadata(str(tmp_path / 'folder' / 'last.pth.tar'))
    assert 'state_dict_ema' in meta and len(_rows(tmp_path / 'folder')) >= 3


@pytest.mark.parametrize('model_name', ['pss_mobilenetv2', 'pss_resnet50'])
def test_other_models_train_on_the_embedded_default(tmp_path, capsys, model_name):
    log = _run_here(capsys, '--model', model_name, '--epochs', '1', '--pss-top-k', '1', '--output',
                    str(tmp_path), '--experiment', 'run')
    assert f'{model_name}: budget table with validation accuracy' in log
    rows = _rows(tmp_path / 'run')
    assert len(rows) >= 3 and all(0 <= float(r['top1']) <= 100 for r in rows)


# nothing lost, nothing silent: checks that stop before training, with one line and exit code 2

def _main(argv):
    """main(argv) in this process, leaving the root logger as it was (main adds a console handler)."""
    import logging
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        return main(argv)
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


def _run_here(capsys, *args):
    """What `_run` does, in this process: a run whose checks are about its outputs, not about the process (no
    interpreter and torch start-up per run); returns its log (stdout + stderr)."""
    _main(TINY + list(args))
    out, err = capsys.readouterr()
    return out + err


def _usage_error(argv, capsys):
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


def _checkpoint(folder, argv, payload=None, **changes):
    """A real train_pss.py-style checkpoint (torch.save) whose args are parse_args(argv) with `changes`."""
    import torch
    args = yaml.safe_load(yaml.safe_dump(vars(parse_args(argv)[0])))
    args.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(payload or {'epoch': 0, 'version': 2, 'arch': args['model'], 'state_dict': {}, 'args': args},
               folder / 'last.pth.tar')
    return folder


def _image_folders(root, classes, empty=()):
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
        _image_folders(tmp_path / 'data', ['c0', 'c1', 'c2'], empty=['c1'])
    (tmp_path / 'empty').mkdir()
    _checkpoint(tmp_path / 'v2', base, model='pss_mobilenetv2')
    _checkpoint(tmp_path / 'pools5', base, pss_num_pools=5)
    _checkpoint(tmp_path / 'unsafe', base, payload={'state_dict': {}, 'args': fractions.Fraction(1, 3)})
    assert expected in _usage_error(argv, capsys)
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
    line = _usage_error(TINY + ['--epochs', '1', '--output', str(readonly), '--experiment', 'x'], capsys)
    assert 'Permission denied' in line and 'writable --output' in line


def test_full_disk_stops_before_training(tmp_path, monkeypatch, capsys):
    """Free space far below a run's checkpoints (injected disk_usage) is refused, naming both numbers."""
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil_usage(total=2**30, used=2**30 - 5 * 2**20,
                                                                        free=5 * 2**20))
    line = _usage_error(TINY + ['--epochs', '1', '--output', str(tmp_path / 'out')], capsys)
    assert '5.0 MiB free' in line and 'needs about' in line and '--checkpoint-hist' in line
    assert not (tmp_path / 'out').exists()


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


def test_torchvision_grayscale_dataset_infers_classes_and_one_channel(tmp_path, capsys):
    """--dataset torch/fashion_mnist: 10 classes from the dataset, in_chans=1 normalised by the data's own mean/std."""
    from support import write_fashion_mnist_gz
    from timm_pss.dataset_setup import setup_dataset
    setup_dataset('fashion-mnist', tmp_path / 'data', write_fashion_mnist_gz(tmp_path / 'src'))
    log = _run_here(capsys, '--dataset', 'torch/fashion_mnist', '--data-dir', str(tmp_path / 'data'),
                    '--epochs', '1', '-b', '16', '--workers', '0', '--scale', '0.5', '1', '--hflip', '0.5',
                    '--output', str(tmp_path), '--experiment', 'fashion')
    assert 'budget table with validation accuracy' in log
    run = tmp_path / 'fashion'
    config = json.loads((run / 'config.json').read_text())
    assert config['num_classes'] == 10 and config['model_args']['in_chans'] == 1
    mean, std = config['pretrained_cfg']['mean'], config['pretrained_cfg']['std']
    assert len(mean) == len(std) == 1 and 0.2 < mean[0] < 0.6 and 0.1 < std[0] < 0.5  # the data's, not ImageNet's
    model = timm.create_model('pss_mobilenetv1', num_classes=10, in_chans=1, resolution_range=(16, 24, 8))
    model.load_state_dict(load_file(str(run / 'model.safetensors')), strict=True)
    assert model.get_classifier().out_features == 10 and model.conv_stem.weight.shape[1] == 1
    assert len(_rows(run)) >= 3


# parity with timm's train.py: its args.yaml as -c, embedded defaults, --help

def test_timm_args_yaml_is_accepted_with_a_warning_for_unused_keys(caplog):
    """tests/data/timm_args.yaml is what timm's train.py writes (every option of its parser, here for --data-dir
    /data/imagenet): it is read, our keys apply, the others are named in one warning."""
    timm_args = str(ROOT / 'tests/data/timm_args.yaml')
    with caplog.at_level('INFO', logger='train_pss'):
        args, _ = parse_args(['-c', timm_args, '--epochs', '3'])
    assert args.data_dir == '/data/imagenet' and args.epochs == 3 and args.batch_size == 128
    assert args.hflip == 0.5 and args.scale == [0.08, 1.0]  # a named dataset: timm's defaults, not the digits'
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and 'naflex_loader' in warnings[0] and 'kd_model_name' in warnings[0]
    assert not any('embedded digits' in r.getMessage() for r in caplog.records)


def test_embedded_defaults_apply_only_when_no_dataset_is_named(tmp_path, caplog):
    config = tmp_path / 'c.yaml'
    config.write_text('data_dir: /data/imagenet\n')
    args, _ = parse_args(['-c', str(config)])  # data_dir in the YAML: timm's defaults, not the digits'
    assert (args.batch_size, args.lr, args.hflip, args.pss_num_pools) == (128, None, 0.5, 40)
    config.write_text('data: /data/imagenet\n')  # timm's old positional dataset path
    assert parse_args(['-c', str(config)])[0].data_dir == '/data/imagenet'
    config.write_text('epochs: 3\n')
    with caplog.at_level('INFO', logger='train_pss'):
        args, _ = parse_args(['-c', str(config), '-b', '16'])
    assert (args.epochs, args.batch_size, args.lr, args.hflip) == (3, 16, 0.1, 0.0)
    shown = [r.getMessage() for r in caplog.records if 'embedded digits' in r.getMessage()]
    assert len(shown) == 1 and 'lr=0.1' in shown[0] and ' epochs=' not in shown[0] and 'batch_size' not in shown[0]


@pytest.mark.parametrize('text, expected', [
    ('epochs: 2.5\n', 'epochs: 2.5 is not an integer'),
    ('lr: fast\n', "lr: 'fast' is not a valid float"),
    ('pss_metrics: [speed]\n', "'speed' is not one of flops, latency"),
    ('pss_resolutions: [16, 24]\n', 'has 2 values, 3 expected'),
    ('amp: yes please\n', 'is not true or false'),
    ('- a list\n', 'not a mapping'),
])
def test_config_values_are_converted_and_checked(tmp_path, capsys, text, expected):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    with pytest.raises(SystemExit) as e:
        parse_args(['-c', str(config)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err, err
    config.write_text('lr: 1e-3\nepochs: "7"\npss_budget_range: [110M, 5.7e8, 10M]\n')  # YAML strings convert
    args, _ = parse_args(['-c', str(config)])
    assert (args.lr, args.epochs, args.pss_budget_range) == (1e-3, 7, [110e6, 570e6, 10e6])


def _help_default(text: str, option: str) -> str:
    """The '(default: X)' that --help shows for `option` (the help may wrap onto the next lines)."""
    block = text[text.index(option + ' '):]
    return block[block.index('(default: ') + len('(default: '):block.index(')', block.index('(default: '))]


def test_help_gives_every_option_one_line_and_the_defaults_that_apply(capsys):
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != 'help']
    missing = [a.option_strings[-1] for a in options if not a.help or '\n' in a.help]
    assert not missing, f'options without a one-line help: {missing}'
    for argv, batch, epochs, hflip in (([], 64, 25, 0.0), (['--data-dir', '/data/imagenet'], 128, 300, 0.5)):
        with pytest.raises(SystemExit) as e:
            parse_args(argv + ['--help'])
        text = capsys.readouterr().out
        assert e.value.code == 0
        args, _ = parse_args(argv)
        assert (args.batch_size, args.epochs, args.hflip) == (batch, epochs, hflip)
        assert _help_default(text, '--batch-size N') == str(args.batch_size)
        assert _help_default(text, '--epochs N') == str(args.epochs)
        assert _help_default(text, '--hflip HFLIP') == str(args.hflip)
        assert _help_default(text, '--checkpoint-hist N') == str(args.checkpoint_hist)


def test_lr_base_scale_follows_the_optimizer_as_in_timm():
    assert [lr_base_scale(o) for o in ('sgd', 'momentum', 'adamw', 'AdaBelief', 'lamb', 'nadam')] == \
        ['linear', 'linear', 'sqrt', 'sqrt', 'sqrt', 'sqrt']
    assert scaled_lr(0.1, 1024, 256, 'linear') == pytest.approx(0.4)
    assert scaled_lr(0.1, 1024, 256, 'sqrt') == pytest.approx(0.2)
    args, _ = parse_args(['--data-dir', '/data'])
    assert args.checkpoint_hist == 10 and args.lr_base_scale == ''


def test_layer_decay_is_kept_without_depthwise_weight_decay():
    """The recipes' pss_wd_depthwise: false used to build its own groups and drop --layer-decay."""
    model = timm.create_model('pss_mobilenetv2', num_classes=10)
    args, _ = parse_args(['--data-dir', '/data', '--no-pss-wd-depthwise', '--layer-decay', '0.5',
                                    '--lr', '0.1', '--weight-decay', '1e-4'])
    optimizer = create_optimizer(model, args)
    groups = optimizer.param_groups
    assert len({g['lr_scale'] for g in groups}) > 2  # layer-wise scales
    decayed = {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}
    depthwise = dict(model.named_parameters())
    names = depthwise_weight_names(model)
    assert names and not decayed & {id(depthwise[n]) for n in names}
    assert id(model.conv_stem.weight) in decayed and id(model.bn1.weight) not in decayed
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))


def test_grayscale_stem_is_not_taken_for_a_depthwise_conv():
    model = timm.create_model('pss_mobilenetv1', num_classes=10, in_chans=1)
    assert 'conv_stem.weight' not in depthwise_weight_names(model)


@pytest.mark.parametrize('extra, expected', [
    (['--eval-metric', 'loss'], '--eval-metric loss is not recorded by train_pss.py'),
    (['--img-size', '64'], '--img-size 64: a supernet trains each subnet at its own resolution (16..24 px'),
    (['--input-size', '3', '32', '32'], '--input-size 3 32 32: a supernet'),
])
def test_timm_options_with_another_meaning_are_refused(tmp_path, capsys, extra, expected):
    argv = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1'] + extra
    assert expected in _usage_error(argv, capsys)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('extra, expected', [
    (['--sync-bn'], '--sync-bn cannot work with a supernet'),
    (['--val-interval', '0'], '--val-interval must be at least 1, got 0'),
    (['--aug-repeats', '3'], '--aug-repeats 3 repeats each image across ranks: it needs distributed training'),
    (['--drop-connect', '0.1', '--drop-path', '0.1'], '--drop-connect is the deprecated name of --drop-path'),
    (['--log-wandb'], '--log-wandb needs the wandb package'),
])
def test_timm_options_that_cannot_work_are_refused_in_one_line(tmp_path, capsys, monkeypatch, extra,
                                                                expected):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # wandb absent (importing it fails), installed or not
    argv = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1'] + extra
    assert expected in _usage_error(argv, capsys)
    assert not (tmp_path / 'out').exists()


def test_drop_connect_is_drop_path():
    assert parse_args(['--drop-connect', '0.1'])[0].drop_path == 0.1


def test_eval_metric_names_a_recorded_metric():
    args, _ = parse_args(['--pss-eval-budgets', '300M', '--eval-metric', 'top1@300M'])
    check_run_args(args)
    assert args.eval_metric == 'top1@300.00M' and args.eval_metric in eval_metric_names(args)


def test_channels_last_and_torch_compile_follow_the_subnet_switching():
    """A compiled channels_last PSS step (max, a pooled middle, min subnet) gives the eager channels_last step's
    loss and gradients; each new subnet is a new graph, a subnet seen before reuses its graph. Backend 'eager' runs
    dynamo's capture and guards (what recompiles) without inductor's code generation, to stay fast on a CPU."""
    import copy
    import torch
    from torch._dynamo.utils import counters
    from timm_pss.pss import PrioritizedSubnetSampler, PSSTask
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model('pss_mobilenetv1', num_classes=10, resolution_range=(16, 24, 8))
    model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    images = torch.randn(4, 3, 24, 24).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (4,))
    steps = []
    for net, compiled in ((model, False), (twin, True)):
        task = PSSTask(net, PrioritizedSubnetSampler(net.space, num_pools=2, pool_size=2, seed=0), verbose=False)
        if compiled:
            task.compile(backend='eager')
        result = task(images, labels)
        result['loss'].backward()
        steps.append((result['loss'].item(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    (loss, grads), (loss_c, grads_c) = steps
    assert loss_c == pytest.approx(loss, rel=1e-5) and len(grads) == len(grads_c)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads, grads_c))
    graphs = counters['stats']['unique_graphs']
    assert graphs >= 3  # max, middle and min subnet: one graph each
    task(images, labels)  # max and min again: no new graph (a change of grad mode would be one)
    assert counters['stats']['unique_graphs'] - graphs <= 1  # at most the newly drawn middle subnet


def test_pool_monitor_batch_is_normalised_like_the_prefetcher_delivers():
    """timm's prefetcher leaves uint8 images in the dataset and normalises on the device: the pool monitor's fixed
    batch must match what the plain loader gives (here on the CPU, where PrefetchLoader also runs)."""
    import torch
    from timm.data.loader import PrefetchLoader
    batches = []
    for prefetcher in (False, True):
        args, _ = parse_args(TINY)
        args.distributed, args.prefetcher = False, prefetcher
        datasets = resolve_data_properties(args, create_datasets(args))
        config = dict(input_size=(args.in_chans, 24, 24), interpolation='bilinear', mean=(0.5,) * args.in_chans,
                      std=(0.25,) * args.in_chans, crop_pct=1.0, crop_mode='center')
        calib_loader = create_loaders(args, config, datasets, False, torch.device('cpu'))[1]
        assert isinstance(calib_loader, PrefetchLoader) == prefetcher
        batches.append(monitor_batch(calib_loader, 8, seed=0))
    (plain, labels), (prefetched, labels_p) = batches
    assert prefetched.dtype == plain.dtype == torch.float32 and torch.equal(labels, labels_p)
    assert torch.allclose(plain, prefetched, atol=1e-5)


@pytest.mark.parametrize('mode, waited', [('wait_group', True), ('default_group', False)])
def test_other_ranks_outwait_rank0_beyond_the_default_timeout(tmp_path, mode, waited):
    """2 gloo ranks whose default group times out after 2 s: rank 0 works 8 s (its finalisation) while rank 1
    waits. On train_pss's wait group rank 1 waits it out; on the default group (the old barrier) it is aborted."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                           f'--master_port={port}', str(ROOT / 'tests/dist_wait_worker.py'), mode],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert (proc.returncode == 0) == waited, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ('rank 1 waited' in proc.stdout) == waited


@pytest.mark.parametrize('change, saved', [(['--pss-sampler', 'uniform'], {}),
                                           ([], {'pss_priority': 'zscore'}),
                                           (['--pss-shuffle-scores'], {})])
def test_resume_refuses_another_way_of_drawing_subnets(tmp_path, change, saved):
    """A prioritized run continued as in-bucket uniform (both save the same sampler state) would silently mix
    two methods in one run."""
    base = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1']
    folder = _checkpoint(tmp_path / 'run', base, **saved)
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
    folder = _checkpoint(tmp_path / 'run', base, num_classes=10)
    args, _ = parse_args(base + ['--resume', str(folder)])
    check_run_args(args)  # no UsageError
    args, _ = parse_args(base + ['--resume', str(folder), '--num-classes', '5'])
    with pytest.raises(UsageError, match='--num-classes'):
        check_run_args(args)
