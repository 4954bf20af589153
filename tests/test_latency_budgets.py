"""Latency budgets wherever FLOPs budgets are: latency-keyed buckets and pools, several metrics at once, the budget
table's predicted latency, set_budget(latency_ms=...), and train_pss.py against a real lookup table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from timm_pss import SubnetBatch
from timm_pss.costs import FlopsCost, LatencyCost
from timm_pss.latency import build_lut, record_latency
from timm_pss.pss import MultiCostSampler, PrioritizedSubnetSampler, create_sampler
from timm_pss.train.checks import UsageError, read_latency_table
from support import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_classes=10, resolution_range=(16, 24, 8))
FAST = dict(threads=1, warmup=0, repeats=3, overhead_subnets=3)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return timm.create_model('pss_mobilenetv1', **TINY).eval()


@pytest.fixture(scope='module')
def lut(model):
    return build_lut(model, **FAST)


def _loader(n=16, size=24):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=8)


def test_latency_cost_samples_inside_latency_buckets(model, lut):
    cost = LatencyCost(model.space, lut)
    lo, hi = cost.span
    assert 0 < lo < hi
    assert lo <= cost.of(model.space.min_subnet()) + 1e-9 and cost.of(model.space.max_subnet()) <= hi + 1e-9
    # windows around the predicted latencies of real subnets (lowest, median, highest), so each holds subnets
    # whatever this machine measured: a window chosen as a fraction of the span can fall into a gap
    values = np.sort(cost.many(model.space.sample_many(2000, rng=0)))
    width = (hi - lo) / 50
    for centre in (lo, float(np.median(values)), hi):
        a, b = max(lo, centre - width / 2), min(hi, centre + width / 2) + 1e-9
        batch = cost.sample_many(500, rng=0, value_range=(a, b))
        predicted = lut.predict_many(batch)
        assert ((predicted >= a) & (predicted < b)).all()
        assert cost.num_candidates((a, b)) > 0
    with pytest.raises(ValueError, match='holds no subnet: predicted latencies of this space span'):
        cost.sample_many(1, rng=0, value_range=(hi + 1, hi + 2))
    assert FlopsCost(model.space).span == tuple(float(v) for v in model.space.flops_span)


def test_buckets_without_subnets_are_left_out_with_a_warning():
    """A space whose costs have a gap (two resolutions 4x apart in pixels, narrow widths): the evenly spaced buckets
    inside the gap are found when the sampler is built, named in a warning, and never drawn during training."""
    m = timm.create_model('pss_mobilenetv1', num_classes=10, resolution_range=(16, 32, 16), width_range=(0.9, 1.0))
    space = m.space
    flops = np.sort(space.flops_many(space.sample_many(4000, rng=0)).astype(float))
    gap = int(np.argmax(np.diff(flops)))
    assert flops[gap + 1] > 2 * flops[gap]                       # the gap: 16 px subnets below, 32 px above
    with pytest.warns(UserWarning, match=r'PSS buckets hold no subnet and are left out of sampling'):
        sampler = PrioritizedSubnetSampler(space, num_pools=9, pool_size=2, seed=0)
    assert sampler.empty_buckets                                  # found at construction ...
    for b in sampler.empty_buckets:
        lo, hi = sampler.bucket_range(b)
        assert flops[gap] < lo and hi <= flops[gap + 1]           # ... and each lies inside the gap
    assert sorted(sampler.live_buckets + sampler.empty_buckets) == list(range(9))
    for i in range(200):                                          # ... and training never draws one
        sampler.set_progress(i / 200)
        p = sampler.propose()
        assert p.bucket in sampler.live_buckets
        lo, hi = sampler.bucket_range(p.bucket)
        assert lo <= space.flops(p.subnet) < hi
        sampler.update(p.bucket, p.subnet, -float(i % 7))
    assert all(sampler.fill()[b] == 0 for b in sampler.empty_buckets)
    multi = MultiCostSampler([sampler], seed=0)
    assert {multi.propose().bucket for _ in range(100)} <= set(sampler.live_buckets)
    with pytest.raises(ValueError, match='no bucket holds a subnet'):
        PrioritizedSubnetSampler(space, budget_range=(flops[gap] * 1.2, flops[gap] * 1.2, flops[gap] * 0.1))


def test_latency_keyed_pools(model, lut):
    cost = LatencyCost(model.space, lut)
    sampler = PrioritizedSubnetSampler(model.space, num_pools=4, pool_size=2, seed=0, cost=cost)
    assert sampler.describe_bucket(0).endswith('ms latency')
    for _ in range(40):
        p = sampler.propose()
        lo, hi = sampler.bucket_range(p.bucket)
        assert lo <= lut.predict(p.subnet) < hi
        sampler.update(p.bucket, p.subnet, 0.0)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state['cost_kind'] == 'latency'
    with pytest.raises(ValueError, match="pools keyed by 'latency'; this run keys them by 'flops'"):
        PrioritizedSubnetSampler(model.space, num_pools=4, pool_size=2).load_state_dict(state)


def test_several_metrics_at_once(model, lut):
    def make(seed):
        return MultiCostSampler([
            create_sampler('prioritized', model.space, num_pools=3, pool_size=2, seed=1, cost=FlopsCost(model.space)),
            create_sampler('prioritized', model.space, num_pools=4, pool_size=2, seed=2,
                           cost=LatencyCost(model.space, lut))], seed=seed)
    sampler = make(0)
    assert len(sampler.pools) == 7 and [c.kind for c in sampler.bucket_costs] == ['flops'] * 3 + ['latency'] * 4
    seen = set()
    for i in range(80):
        sampler.set_progress(i / 80)
        p = sampler.propose()
        lo, hi = sampler.bucket_range(p.bucket)
        value = sampler.bucket_costs[p.bucket].of(p.subnet)
        assert lo <= value < hi
        sampler.update(p.bucket, p.subnet, -float(i))
        seen.add(p.bucket)
    assert seen == set(range(7))
    state = json.loads(json.dumps(sampler.state_dict()))
    other = make(5)
    other.load_state_dict(state)
    assert [sampler.propose() for _ in range(20)] == [other.propose() for _ in range(20)]
    with pytest.raises(ValueError, match='not a multi-cost PSS sampler state'):
        other.load_state_dict(sampler.samplers[0].state_dict())
    bad = json.loads(json.dumps(state))
    bad['samplers'][0]['progress'] = 0.123  # fine on its own ...
    bad['samplers'][1]['pools'][0][0][1] = float('nan')  # ... but the latency sampler's state is refused
    before = json.dumps(other.state_dict())
    with pytest.raises(ValueError, match='pool scores must be finite'):
        other.load_state_dict(bad)
    assert json.dumps(other.state_dict()) == before  # and the FLOPs sampler was not loaded either
    with pytest.raises(ValueError, match='lists a cost kind twice'):
        MultiCostSampler([sampler.samplers[0], sampler.samplers[0]])
    with pytest.raises(ValueError, match='prioritized and uniform samplers only'):
        MultiCostSampler([create_sampler('global_width', model.space, num_pools=3)])


def test_several_metrics_with_global_width_bucket_weights(model, lut):
    """Each metric's buckets share 1 / (number of metrics), split by that metric's own bucket weights."""
    def make(seed):
        return MultiCostSampler([
            create_sampler('prioritized', model.space, num_pools=3, pool_size=2, seed=1, bucket_weights='global_width'),
            create_sampler('prioritized', model.space, num_pools=4, pool_size=2, seed=2, bucket_weights='global_width',
                           cost=LatencyCost(model.space, lut))], seed=seed)
    sampler = make(0)
    flops_weights, latency_weights = (s.bucket_probs for s in sampler.samplers)
    assert not np.allclose(latency_weights, 0.25)
    np.testing.assert_allclose(sampler.bucket_probs, np.r_[flops_weights, latency_weights] / 2)
    drawn = np.bincount([sampler.propose().bucket for _ in range(2000)], minlength=7) / 2000
    np.testing.assert_allclose(drawn, sampler.bucket_probs, atol=0.04)
    other = make(5)
    other.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    assert [sampler.propose() for _ in range(20)] == [other.propose() for _ in range(20)]


def test_budget_table_records_latency_and_set_budget_selects_by_it(model, lut):
    space = model.space
    subnets = [space.min_subnet()] + [space.sample(rng=i) for i in range(4)] + [space.max_subnet()]
    timm_pss.fill_budget_table(model, subnets, _loader(), num_batches=1)
    table = record_latency(model, lut)
    predicted = lut.predict_many(SubnetBatch.from_subnets([e.subnet for e in table]))
    assert np.allclose([e.metrics['latency_ms'] for e in table], predicted)
    assert table.info['latency_device'] == 'cpu' and table.info['latency_device_name'] == lut.device_name
    assert table.info['latency_threads'] == '1' and table == model.budget_table

    # the state dict carries the latencies and their device
    twin = timm.create_model('pss_mobilenetv1', **TINY)
    twin.load_state_dict(model.state_dict())
    assert twin.budget_table == table

    order = np.argsort(predicted)
    for rank, i in enumerate(order):
        chosen = model.set_budget(latency_ms=float(predicted[i]) + 1e-9)
        assert chosen.metrics['latency_ms'] == max(e.metrics['latency_ms'] for e in table
                                                   if e.metrics['latency_ms'] <= predicted[i] + 1e-9)
        assert model.active_budget_index == table.entries.index(chosen)
    assert timm_pss.set_budget(model, latency_ms=f'{predicted.max() + 1}ms').metrics['latency_ms'] == predicted.max()
    with pytest.raises(ValueError, match='latency budget .* is below the smallest budget-table entry'):
        model.set_budget(latency_ms=float(predicted.min()) / 2)
    with pytest.raises(ValueError, match='exactly one budget'):
        model.set_budget('1M', latency_ms=5)
    with timm_pss.budget(model, latency_ms=float(predicted.min()) + 1e-9) as entry:
        assert model.active_subnet == entry.subnet

    # latencies predicted for another device type are refused, with the way out
    info = {**table.info, 'latency_device': 'cuda:0'}
    twin.set_table_metrics([{} for _ in table], info=info)
    with pytest.raises(ValueError, match='predicted for cuda:0 .* the model is on cpu: record latencies'):
        twin.set_budget(latency_ms=100)
    assert twin.set_budget('1G') is not None  # FLOPs budgets are unaffected


def test_record_latency_refuses_a_table_of_another_model(lut):
    other = timm.create_model('pss_mobilenetv1', num_classes=10, resolution_range=(16, 32, 8))
    timm_pss.fill_budget_table(other, [other.space.min_subnet(), other.space.max_subnet()], _loader(), num_batches=1)
    with pytest.raises(ValueError, match='does not fit the model'):
        record_latency(other, lut)


def test_train_pss_with_flops_and_latency_pools(model, lut, tmp_path):
    table_path = tmp_path / 'lut.json'
    lut.save(table_path)
    cmd = [sys.executable, str(ROOT / 'train_pss.py'), '--model', 'pss_mobilenetv1', '--epochs', '1', '-b', '128',
           '--pss-resolutions', '16', '24', '8', '--pss-num-pools', '3', '--pss-pool-size', '2', '--pss-top-k', '1',
           '--pss-calib-batches', '1', '--pss-metrics', 'flops', 'latency', '--pss-latency-table', str(table_path),
           '--output', str(tmp_path), '--experiment', 'run']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = timm.create_model(f'local-dir:{tmp_path / "run"}', pretrained=True)
    table = trained.budget_table
    assert all('latency_ms' in e.metrics for e in table) and table.info['latency_device'] == 'cpu'
    assert np.allclose([e.metrics['latency_ms'] for e in table],
                       lut.predict_many(SubnetBatch.from_subnets([e.subnet for e in table])))
    fastest = min(e.metrics['latency_ms'] for e in table)
    assert trained.set_budget(latency_ms=fastest).metrics['latency_ms'] == fastest
    log = proc.stdout + proc.stderr
    assert 'ms latency' in log and 'flops' in log

    bad = [*cmd[:cmd.index('--pss-latency-table')], '--output', str(tmp_path), '--experiment', 'bad']
    proc = subprocess.run(bad, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert proc.returncode == 2 and '--pss-cost-kinds latency needs --pss-latency-table' in proc.stderr


def test_train_pss_stops_with_one_line_on_a_bad_latency_table(model, lut, tmp_path):
    """A missing, broken or foreign --pss-latency-table stops before training with exit 2 and names the file."""
    broken = tmp_path / 'broken.json'
    broken.write_text('{"format": "timm_pss.latency_table/1", "model"')  # cut off mid-write
    for path, reason in ((tmp_path / 'missing.json', 'No such file'), (broken, 'broken.json'),
                         (tmp_path, 'Is a directory')):
        with pytest.raises(UsageError) as e:
            read_latency_table(str(path))
        assert e.value.exit_code == 2 and reason in str(e.value)
    lut.save(tmp_path / 'lut.json')
    assert read_latency_table(str(tmp_path / 'lut.json'), model).model == lut.model
    other = timm.create_model('pss_mobilenetv2', num_classes=10, resolution_range=(16, 24, 8))
    with pytest.raises(UsageError) as e:
        read_latency_table(str(tmp_path / 'lut.json'), other)
    assert e.value.exit_code == 2 and 'does not fit' in str(e.value)
