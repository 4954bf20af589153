"""train_pss.py end to end on the embedded digits: outputs, safe checkpoints, kill + resume, torchrun, config,
other models and datasets, channels_last and torch.compile, the ranks' wait."""
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

from support import SUBPROCESS_TIMEOUT
from timm_pss.train.args import EMBEDDED_DEFAULTS, parse_args
from timm_pss.train.data import create_datasets, create_loaders, monitor_batch, resolve_data_properties
from train_support import TINY, run_main, run_train, run_train_here, summary_rows, train_command

ROOT = Path(__file__).resolve().parents[1]


def test_help_reads_well():
    out = subprocess.run([sys.executable, str(ROOT / 'train_pss.py'), '--help'], capture_output=True, text=True,
                         cwd=ROOT).stdout
    for option in ('--model', '--data-dir', '--batch-size', '--model-ema', '--mixup', '--resume', '--config',
                   '--pss-budget-range', '--pss-pool-size', '--pss-p-random', '--pss-heldout-frac'):
        assert option in out
    assert 'Prioritized Subnet Sampling' in out
    assert '--input-size C H W ' in out and 'N N N N' not in out  # three values, shown once each


EMBEDDED_RUN = ['--epochs', '2', '--eval-metric', 'min_top1', '--val-interval', '2', '--recovery-interval', '3']


@pytest.fixture(scope='module')
def embedded_run(tmp_path_factory):
    """(run folder, log) of one uninterrupted embedded-digits run, as a real process: shared by the tests that
    only read it (its outputs, and the run a killed and resumed run must reproduce)."""
    output = tmp_path_factory.mktemp('embedded')
    log = run_train(*EMBEDDED_RUN, '--output', str(output), '--experiment', 'run')
    return output / 'run', log


def test_embedded_run_writes_every_output(embedded_run):
    run, log = embedded_run
    assert 'budget table with validation accuracy' in log and 'Train: 1' in log and 'pools ' in log
    for name in ('model.safetensors', 'results.csv', 'results.json', 'summary.csv', 'args.yaml',
                 'accuracy_vs_flops.png', 'last.pth.tar'):
        assert (run / name).is_file(), name
    assert (run / 'accuracy_vs_flops.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert yaml.safe_load((run / 'args.yaml').read_text())['model'] == 'pss_mobilenetv1'
    rows = summary_rows(run)
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
    proc = subprocess.Popen(train_command(*args, '--experiment', 'killed'), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = tmp_path / 'killed' / 'checkpoint-0.pth.tar'
    while not first.exists() and proc.poll() is None:  # no deadline: a slow or busy machine only takes longer
        time.sleep(0.1)
    # killed at once: somewhere in epoch 1 (or its start) whatever the machine's speed; only the kill matters
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / 'killed' / 'results.csv').exists()
    log = run_train(*args, '--experiment', 'killed', '--resume', str(tmp_path / 'killed'))
    assert 'Resumed from' in log and 'at epoch 1' in log
    straight, resumed = summary_rows(embedded_run[0]), summary_rows(tmp_path / 'killed')
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
    log = run_train('--epochs', '1', '--output', str(tmp_path), '--experiment', 'ddp', launcher=launcher)
    assert '2 processes' in log
    assert [p.name for p in tmp_path.iterdir()] == ['ddp']
    assert len(summary_rows(tmp_path / 'ddp')) >= 3
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
    assert imagenet.epochs == 250 and imagenet.pss_budget_range == [110e6, 570e6, 10e6]
    assert not imagenet.pss_wd_depthwise
    config.write_text('pss_pool_sise: 7\n')  # a misspelt --pss-* key is an error (other unknown keys: a warning)
    with pytest.raises(SystemExit):
        parse_args(['-c', str(config)])
    with pytest.raises(SystemExit):
        parse_args(['--pss-finalize-only'])


def test_rejects_a_model_that_is_not_a_supernet(tmp_path):
    with pytest.raises(SystemExit) as e:
        run_main(['--model', 'resnet18', '--epochs', '1', '--output', str(tmp_path / 'out')])
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
    log = run_train_here(capsys, '--data-dir', str(tmp_path / 'data'), '--num-classes', '10', '--epochs', '1',
                    '-b', '16', '--grad-accum-steps', '2', '--mixup', '0.2', '--cutmix', '0.5', '--model-ema',
                    '--model-ema-decay', '0.9', '--amp', '--workers', '0', '--output', str(tmp_path),
                    '--experiment', 'folder')
    assert 'budget table with validation accuracy' in log
    meta = load_checkpoint_metadata(str(tmp_path / 'folder' / 'last.pth.tar'))
    assert 'state_dict_ema' in meta and len(summary_rows(tmp_path / 'folder')) >= 3


@pytest.mark.parametrize('model_name', ['pss_mobilenetv2', 'pss_resnet50'])
def test_other_models_train_on_the_embedded_default(tmp_path, capsys, model_name):
    log = run_train_here(capsys, '--model', model_name, '--epochs', '1', '--pss-top-k', '1', '--output',
                    str(tmp_path), '--experiment', 'run')
    assert f'{model_name}: budget table with validation accuracy' in log
    rows = summary_rows(tmp_path / 'run')
    assert len(rows) >= 3 and all(0 <= float(r['top1']) <= 100 for r in rows)


def test_torchvision_grayscale_dataset_infers_classes_and_one_channel(tmp_path, capsys):
    """--dataset torch/fashion_mnist: 10 classes from the dataset, in_chans=1 normalised by the data's own mean/std."""
    from support import write_fashion_mnist_gz
    from timm_pss.dataset_setup import setup_dataset
    setup_dataset('fashion-mnist', tmp_path / 'data', write_fashion_mnist_gz(tmp_path / 'src'))
    log = run_train_here(capsys, '--dataset', 'torch/fashion_mnist', '--data-dir', str(tmp_path / 'data'),
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
    assert len(summary_rows(run)) >= 3


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
