"""train_pss.py end to end on the embedded digits: outputs, safe checkpoints, kill + resume, torchrun, config."""
import csv
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model', 'pss_mobilenetv1', '-b', '128', '--pss-num-pools', '3', '--pss-pool-size', '2', '--pss-top-k',
        '1', '--pss-calib-batches', '1', '--pss-resolutions', '16', '24', '8', '--log-interval', '5']


def _cmd(*args, launcher=None):
    return (launcher or [sys.executable]) + [str(ROOT / 'train_pss.py'), *TINY, *args]


def _run(*args, launcher=None, timeout=600):
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


def test_embedded_run_writes_every_output(tmp_path):
    log = _run('--epochs', '2', '--output', str(tmp_path), '--experiment', 'run')
    run = tmp_path / 'run'
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


def test_killed_run_resumes_to_the_same_budget_table(tmp_path):
    """SIGKILL mid-epoch, resume from the last checkpoint: the same final table as an uninterrupted run."""
    args = ['--epochs', '3', '--output', str(tmp_path)]
    _run(*args, '--experiment', 'straight')
    proc = subprocess.Popen(_cmd(*args, '--experiment', 'killed'), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = tmp_path / 'killed' / 'checkpoint-0.pth.tar'
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # well into epoch 1
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / 'killed' / 'results.csv').exists()
    log = _run(*args, '--experiment', 'killed', '--resume', str(tmp_path / 'killed'))
    assert 'Resumed from' in log and 'at epoch 1' in log
    straight, resumed = _rows(tmp_path / 'straight'), _rows(tmp_path / 'killed')
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


def test_config_file_sets_defaults_and_rejects_unknown_keys(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        import train_pss
    finally:
        sys.path.remove(str(ROOT))
    config = tmp_path / 'c.yaml'
    config.write_text('epochs: 7\npss_budget_range: [110M, 570M, 10M]\npss_pool_size: 9\n')
    args, _ = train_pss.parse_args(['-c', str(config), '--pss-pool-size', '5'])
    assert args.epochs == 7 and args.pss_pool_size == 5 and args.pss_budget_range == [110e6, 570e6, 10e6]
    embedded, _ = train_pss.parse_args([])
    assert embedded.epochs == train_pss.EMBEDDED_DEFAULTS['epochs']
    recipe = str(ROOT / 'recipes/pss_mobilenetv1_imagenet.yaml')
    imagenet, _ = train_pss.parse_args(['--data-dir', '/data', '-c', recipe])
    assert imagenet.epochs == 250 and imagenet.pss_budget_range == [110e6, 570e6, 10e6] and not imagenet.pss_wd_depthwise
    config.write_text('epochz: 7\n')
    with pytest.raises(SystemExit):
        train_pss.parse_args(['-c', str(config)])
    with pytest.raises(SystemExit):
        train_pss.parse_args(['--pss-finalize-only'])


def test_rejects_a_model_that_is_not_a_supernet(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / 'train_pss.py'), '--model', 'resnet18', '--epochs', '1',
                           '--output', str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and 'not a timm_pss supernet' in proc.stderr


def test_imagenet_style_folder_with_mixup_ema_amp_and_accumulation(tmp_path):
    """--data-dir with class folders goes through timm's create_dataset; the timm recipe options work together."""
    from timm_pss.data import DigitsDataset
    for split, folder in (('train', 'train'), ('val', 'validation')):
        for i, (image, label) in enumerate(DigitsDataset(split, image_size=24)):
            if i >= 120:
                break
            (tmp_path / 'data' / folder / f'c{label}').mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / 'data' / folder / f'c{label}' / f'{i}.png')
    log = _run('--data-dir', str(tmp_path / 'data'), '--num-classes', '10', '--epochs', '1', '-b', '16',
               '--grad-accum-steps', '2', '--mixup', '0.2', '--cutmix', '0.5', '--model-ema', '--model-ema-decay',
               '0.9', '--amp', '--workers', '0', '--output', str(tmp_path), '--experiment', 'folder')
    assert 'budget table with validation accuracy' in log
    meta = load_checkpoint_metadata(str(tmp_path / 'folder' / 'last.pth.tar'))
    assert 'state_dict_ema' in meta and len(_rows(tmp_path / 'folder')) >= 3


@pytest.mark.parametrize('model_name', ['pss_mobilenetv2', 'pss_resnet50'])
def test_other_models_train_on_the_embedded_default(tmp_path, model_name):
    log = _run('--model', model_name, '--epochs', '1', '--pss-top-k', '1', '--output', str(tmp_path),
               '--experiment', 'run')
    assert f'{model_name}: budget table with validation accuracy' in log
    rows = _rows(tmp_path / 'run')
    assert len(rows) >= 3 and all(0 <= float(r['top1']) <= 100 for r in rows)


def test_torchvision_grayscale_dataset_infers_classes_and_one_channel(tmp_path):
    """--dataset torch/fashion_mnist: 10 classes from the dataset, in_chans=1 normalised by the data's own mean/std."""
    from support import write_fashion_mnist_gz
    from timm_pss.dataset_setup import setup_dataset
    setup_dataset('fashion-mnist', tmp_path / 'data', write_fashion_mnist_gz(tmp_path / 'src'))
    log = _run('--dataset', 'torch/fashion_mnist', '--data-dir', str(tmp_path / 'data'), '--epochs', '1', '-b', '16',
               '--workers', '0', '--scale', '0.5', '1', '--hflip', '0.5', '--output', str(tmp_path),
               '--experiment', 'fashion')
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
