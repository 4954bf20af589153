"""Prioritized Subnet Sampling in training: the step on real data (pools fill, scores move, the model learns),
state round trips mid-training, AMP/EMA/mixup, DDP consistency, finalisation on held-out data, a diverged step."""
import copy
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import timm
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import NativeScaler
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from timm_pss.pss import PrioritizedSubnetSampler, PSSTask, SpaceUniformSampler, TrainingDiverged, finalize_budget_table
from support import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]


def _tiny_supernet(seed=0):
    torch.manual_seed(seed)
    return timm.create_model('pss_mobilenetv2', num_classes=10, resolution_range=(24, 32, 8), width_range=(0.5, 1.0))


def _loader(digits, n=512, batch=32, shuffle_seed=0):
    images, labels = digits
    g = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(TensorDataset(images[:n], labels[:n]), batch_size=batch, shuffle=True, generator=g)


def _train(task, optimizer, loader, steps, start=0, total=None):
    total = total or steps
    losses = []
    it = iter(loader)
    for step in range(start, start + steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        task.sampler.set_progress(step / total)
        result = task(x, y)
        optimizer.zero_grad()
        result['loss'].backward()
        optimizer.step()
        losses.append(result['loss_max'].item())
    return losses


def test_training_fills_pools_moves_scores_and_learns(digits):
    model = _tiny_supernet().train()
    sampler = PrioritizedSubnetSampler(model.space, num_pools=4, pool_size=3, seed=0)
    task = PSSTask(model, sampler, verbose=False)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mix = []
    losses = []
    snapshots = []
    for chunk in range(4):
        losses += _train(task, optimizer, _loader(digits, shuffle_seed=chunk), 10, start=chunk * 10, total=40)
        mix.append(sum(p.from_pool for p in task.last_proposals))
        snapshots.append({b: dict(zip(pool.members(), pool.scores().tolist())) for b, pool in enumerate(sampler.pools)})
    assert len(calls) == 40 * 3, 'one forward per subnet: max, middle, min'
    assert sum(sampler.fill()) >= 8
    moved = [s for b in snapshots[1] for s in snapshots[1][b] if s in snapshots[-1].get(b, {})
             and snapshots[1][b][s] != snapshots[-1][b][s]]
    assert moved or any(set(snapshots[1][b]) != set(snapshots[-1][b]) for b in snapshots[1])
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    assert sampler.p_random < 0.05  # the schedule moved towards the pools


def test_sampling_mix_moves_from_random_to_pool(digits):
    model = _tiny_supernet().train()
    sampler = PrioritizedSubnetSampler(model.space, num_pools=2, pool_size=2, seed=3, p_random=(1.0, 0.01))
    task = PSSTask(model, sampler, num_middle=2, verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    from_pool = []
    loader = _loader(digits, n=128, batch=32)
    for step in range(16):
        _train(task, optimizer, loader, 1, start=step, total=16)
        from_pool += [p.from_pool for p in task.last_proposals]
    assert not any(from_pool[:6]) and sum(from_pool[-8:]) >= 6


def test_state_round_trip_mid_training_is_identical(digits):
    """Save model + optimizer + task state mid-training, restore into fresh objects: the same continuation."""
    def build():
        model = _tiny_supernet(seed=5).train()
        sampler = PrioritizedSubnetSampler(model.space, num_pools=3, pool_size=2, seed=11)
        return model, PSSTask(model, sampler, verbose=False), torch.optim.SGD(model.parameters(), lr=0.05,
                                                                            momentum=0.9)

    model, task, opt = build()
    _train(task, opt, _loader(digits, shuffle_seed=1), 8, total=16)
    saved = copy.deepcopy({'model': model.state_dict(), 'opt': opt.state_dict(),
                           'task': json.loads(json.dumps(task.get_task_state()))})
    _train(task, opt, _loader(digits, shuffle_seed=2), 8, start=8, total=16)

    model2, task2, opt2 = build()
    model2.load_state_dict(saved['model'])
    opt2.load_state_dict(saved['opt'])
    task2.load_task_state(saved['task'])
    _train(task2, opt2, _loader(digits, shuffle_seed=2), 8, start=8, total=16)
    assert task2.sampler.state_dict() == task.sampler.state_dict()
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)
    with pytest.raises(ValueError, match='no PSS sampler state'):
        task2.load_task_state({})
    task2.load_task_state({}, strict=False)


def test_amp_scaler_accumulation_ema_and_mixup(digits):
    model = _tiny_supernet().train()
    sampler = PrioritizedSubnetSampler(model.space, num_pools=2, pool_size=2, seed=0)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    task = PSSTask(model, sampler, criterion=SoftTargetCrossEntropy(), verbose=False)
    ema = task.setup_ema(decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = NativeScaler(device='cpu')
    x, y = next(iter(_loader(digits, batch=32)))
    optimizer.zero_grad()
    for micro in range(2):  # gradient accumulation over two micro-batches, one optimizer step
        xm, ym = mixup(x.clone(), y.clone())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            result = task(xm, ym, hard_target=y)
        scaler(result['loss'], optimizer, need_update=micro == 1)
    task.update_ema()
    assert sum(sampler.fill()) == 2 and all(math.isfinite(s) for p in sampler.pools for _, s in p.best())
    assert timm_pss.find_supernet(ema).space.group_names == model.space.group_names
    timm_pss.find_supernet(ema).set_subnet(model.space.min_subnet())
    # soft targets without explicit hard labels: the dominant class scores the subnet
    xm, ym = mixup(x.clone(), y.clone())
    assert torch.isfinite(task(xm, ym)['loss'])


def test_uniform_sampler_baseline(digits):
    model = _tiny_supernet().train()
    sampler = SpaceUniformSampler(model.space, seed=0)
    task = PSSTask(model, sampler, verbose=False)
    _train(task, torch.optim.SGD(model.parameters(), lr=0.01), _loader(digits), 2)
    state = json.loads(json.dumps(sampler.state_dict()))
    other = SpaceUniformSampler(model.space, seed=5)
    other.load_state_dict(state)
    assert [sampler.propose() for _ in range(5)] == [other.propose() for _ in range(5)]


def test_ddp_pools_identical_on_every_rank(tmp_path):
    """A real 2-process torchrun group on gloo: different data per rank, identical pools and weights."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
           str(ROOT / 'tests' / 'pss_ddp_worker.py'), str(tmp_path), '10']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['local_losses'] != r1['local_losses']  # the ranks really trained on different batches
    assert r0['sampler'] == r1['sampler'] and sum(len(p) for p in r0['sampler']['pools']) > 0
    assert r0['checksum'] == r1['checksum']


def test_finalize_budget_table_selects_on_heldout_data(digits):
    model = _tiny_supernet().train()
    sampler = PrioritizedSubnetSampler(model.space, num_pools=3, pool_size=2, seed=0)
    task = PSSTask(model, sampler, verbose=False)
    _train(task, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), _loader(digits), 12)
    images, labels = digits
    calib = DataLoader(TensorDataset(images[:256], labels[:256]), batch_size=64)
    heldout = DataLoader(TensorDataset(images[1500:1600], labels[1500:1600]), batch_size=50)
    table = finalize_budget_table(model, sampler, calib, heldout, top_k=2, calib_batches=2)
    nonempty = sum(1 for p in sampler.pools if len(p))
    subnets = [e.subnet for e in table]
    assert model.space.max_subnet() in subnets and model.space.min_subnet() in subnets
    assert nonempty <= len(table) <= nonempty + 2
    assert all(0 <= e.metrics['heldout_top1'] <= 100 for e in table)
    assert sum('score' in e.metrics for e in table) >= 1
    for bucket, pool in enumerate(sampler.pools):
        pooled = {s for s, _ in pool.best(2)}
        assert not pooled or pooled & set(subnets)
    # set_budget picks the best held-out accuracy among the entries that fit, so a dominated entry is never used
    entry = model.set_budget(max(e.flops for e in table))
    assert entry == max(table, key=lambda e: (e.metrics['heldout_top1'], e.flops))


def test_a_diverged_step_stops_training_and_leaves_the_pools_as_they_were(digits):
    """A non-finite loss (here: a corrupted weight) stops the step with TrainingDiverged before any pool is updated,
    rather than writing NaN scores into the pools."""
    model = _tiny_supernet().train()
    sampler = PrioritizedSubnetSampler(model.space, num_pools=2, pool_size=2, seed=0)
    task = PSSTask(model, sampler, verbose=False)
    images, labels = digits
    task(images[:8], labels[:8])  # a healthy step records one score
    before = [dict(zip(pool.members(), pool.scores().tolist())) for pool in sampler.pools]
    with torch.no_grad():
        model.get_classifier().weight[0, 0] = float('nan')
    with pytest.raises(TrainingDiverged, match=r'training diverged: non-finite cross-entropy \(middle subnet .*nan'):
        task(images[:8], labels[:8])
    assert [dict(zip(pool.members(), pool.scores().tolist())) for pool in sampler.pools] == before
