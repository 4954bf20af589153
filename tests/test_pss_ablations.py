"""PSS pool diagnostics, the US-Net baseline and the ablation options (priority, shuffled scores, bucket weights,
refreshed scores): the math, the samplers, and their effect on real models and real files."""
import copy
import csv
import json
import math
import os

import numpy as np
import pytest
import scipy.stats
import timm
import torch
from torch.utils.data import TensorDataset

import timm_pss  # noqa: F401
from timm_pss import Subnet
from timm_pss.pss import (
    GlobalWidthSampler, PoolMonitor, PrioritizedSubnetSampler, PSSTask, SubnetPool, USNetSampler, build_sampler,
    create_sampler, draw_probabilities, effective_members, fixed_batch, fresh_scores, global_width_bucket_weights,
    pool_diagnostics, priority_values, sampler_kwargs, spearman,
)
from timm_pss.pss.diagnostics import DIAGNOSTICS_COLUMNS
from timm_pss.pss.options import check_sampler_settings
from timm_pss.pss.pools import average_ranks, global_width_subnets
from timm_pss.train.args import parse_args


def _space(**kw):
    return timm.create_model('pss_mobilenetv1', device='meta', width_range=(0.25, 1.0), resolution_range=(16, 32, 4),
                             **kw).space


def _tiny_supernet(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model('pss_mobilenetv2', num_classes=10, resolution_range=(24, 32, 8), width_range=(0.5, 1.0),
                             **kw)


def _train(task, digits, steps, total=None, start=0):
    images, labels = digits
    optimizer = torch.optim.SGD(task.trainable_module.parameters(), lr=0.05)
    for step in range(start, start + steps):
        task.sampler.set_progress(step / (total or steps))
        result = task(images[step * 16 % 1024:][:16], labels[step * 16 % 1024:][:16])
        optimizer.zero_grad()
        result['loss'].backward()
        optimizer.step()


# the math

def test_average_ranks_spearman_and_effective_members_match_references():
    rng = np.random.default_rng(0)
    assert average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    for _ in range(20):
        a, b = rng.integers(0, 5, size=12).astype(float), rng.normal(size=12)  # a has ties
        assert average_ranks(a).tolist() == scipy.stats.rankdata(a).tolist()
        assert math.isclose(spearman(a, b), scipy.stats.spearmanr(a, b).statistic, rel_tol=1e-12, abs_tol=1e-12)
    assert spearman([1, 2, 3], [30, 20, 10]) == -1.0 and spearman([1, 2, 3], [1, 4, 9]) == 1.0
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match='one length'):
        spearman([1, 2], [1, 2, 3])
    assert math.isclose(effective_members(np.full(7, 1 / 7)), 7.0)
    assert effective_members([0.0, 1.0, 0.0]) == 1.0
    assert 1.0 < effective_members([0.9, 0.05, 0.05]) < 2.0


def test_priorities_are_scale_free():
    scores = np.array([-2.3, -2.1, -2.2, -1.9, -2.1])
    moved = 10.0 * scores + 7.0  # another loss level and spread, same order
    np.testing.assert_allclose(priority_values(moved, 'zscore'), priority_values(scores, 'zscore'))
    np.testing.assert_allclose(priority_values(moved, 'rank'), priority_values(scores, 'rank'))
    np.testing.assert_allclose(priority_values(np.exp(scores), 'rank'), priority_values(scores, 'rank'))
    assert priority_values(scores, 'rank').tolist() == [0.0, 0.625, 0.25, 1.0, 0.625]
    for priority in ('zscore', 'rank'):
        np.testing.assert_allclose(draw_probabilities(moved, 0.5, priority), draw_probabilities(scores, 0.5, priority))
        assert draw_probabilities(np.full(4, -3.0), 0.01, priority).tolist() == [0.25] * 4  # equal scores: uniform
    # raw (the reference) is not: the same order at a larger spread is far more focused
    assert draw_probabilities(moved, 0.5).max() > draw_probabilities(scores, 0.5).max() + 0.5
    with pytest.raises(ValueError, match='unknown priority .*raw, zscore, rank'):
        priority_values(scores, 'softmax')


def test_shuffled_scores_give_a_permutation_of_the_probabilities():
    pool = SubnetPool(5)
    for i in range(5):
        pool.update(Subnet(24, (8 * (i + 1),)), -float(i))
    ordered = pool.draw_probabilities(0.5)
    rng = np.random.default_rng(0)
    shuffled = [pool.draw_probabilities(0.5, permutation=rng.permutation(5)) for _ in range(20)]
    for probs in shuffled:
        np.testing.assert_allclose(np.sort(probs), np.sort(ordered))
    assert any(not np.allclose(p, ordered) for p in shuffled)
    # at a low temperature the reference rule always takes the best member; shuffled, any member
    best = pool.best(1)[0][0]
    focused = [pool.draw(rng, 0.01) for _ in range(300)]
    blind = [pool.draw(rng, 0.01, shuffle_scores=True) for _ in range(300)]
    assert all(s == best for s in focused)
    assert 0.1 < sum(s == best for s in blind) / 300 < 0.35 and len(set(blind)) == 5


def test_sampler_priority_and_shuffle_change_pool_draws_and_round_trip():
    space = _space()
    samplers = {kw: PrioritizedSubnetSampler(space, num_pools=3, pool_size=4, seed=1, **dict([kw]))
                for kw in (('priority', 'raw'), ('priority', 'zscore'), ('shuffle_scores', True))}
    for sampler in samplers.values():
        for i in range(60):
            p = sampler.propose()
            sampler.update(p.bucket, p.subnet, -2.0 - 1e-5 * (space.flops(p.subnet) % 997))  # close raw scores
        sampler.set_progress(0.7)
    raw, zscore = samplers['priority', 'raw'], samplers['priority', 'zscore']
    assert raw.draw_probabilities(0).max() < 0.5 < zscore.draw_probabilities(0).max()  # T relative to the spread
    shuffle = samplers['shuffle_scores', True]
    state = json.loads(json.dumps(shuffle.state_dict()))
    assert state['shuffle_scores'] is True and state['priority'] == 'raw'
    other = PrioritizedSubnetSampler(space, num_pools=3, pool_size=4, seed=5, shuffle_scores=True)
    other.load_state_dict(state)
    assert [shuffle.propose() for _ in range(40)] == [other.propose() for _ in range(40)]
    with pytest.raises(ValueError, match="saved with priority 'raw', shuffle_scores True"):
        PrioritizedSubnetSampler(space, num_pools=3, pool_size=4).load_state_dict(state)


# bucket weights

def test_global_width_bucket_weights_follow_the_global_width_sampler():
    space = _space()
    sampler = create_sampler('prioritized', space, num_pools=10, pool_size=8, seed=0, bucket_weights='global_width')
    weights = sampler.bucket_probs
    assert weights.shape == (10,) and math.isclose(weights.sum(), 1.0)
    assert weights[:3].sum() > 0.3 + 0.1  # uniform buckets put 30% in the three lowest
    again = global_width_bucket_weights(space, sampler.targets, sampler.config.step, seed=0)
    np.testing.assert_array_equal(again, weights)  # deterministic given the seed
    # the weights are the MutualNet-style sampler's own bucket frequencies
    reference = create_sampler('global_width', space, num_pools=10, pool_size=8, seed=3)
    hits = np.bincount([b for b in (reference.propose().bucket for _ in range(2000)) if b >= 0], minlength=10)
    np.testing.assert_allclose(hits / hits.sum(), weights, atol=0.04)
    # and the weighted sampler draws its buckets with them; the default stays uniform
    drawn = np.bincount([sampler.propose().bucket for _ in range(2000)], minlength=10) / 2000
    np.testing.assert_allclose(drawn, weights, atol=0.04)
    uniform = create_sampler('prioritized', space, num_pools=10, pool_size=8, seed=0)
    assert uniform.bucket_probs is None
    assert np.bincount([uniform.propose().bucket for _ in range(2000)], minlength=10)[:3].sum() / 2000 < 0.36
    # resume: the weights travel in the state
    state = json.loads(json.dumps(sampler.state_dict()))
    other = create_sampler('prioritized', space, num_pools=10, pool_size=8, seed=9, bucket_weights='global_width')
    other.bucket_probs = None
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.bucket_probs, weights)
    assert [sampler.propose() for _ in range(30)] == [other.propose() for _ in range(30)]
    with pytest.raises(ValueError, match="bucket_weights 'global_width'; this run has 'raw', False, 'uniform'"):
        uniform.load_state_dict(state)
    with pytest.raises(ValueError, match='unknown bucket weights'):
        create_sampler('prioritized', space, num_pools=10, bucket_weights='mutualnet')


def test_global_width_subnets_round_to_the_nearest_choice_narrower_on_ties():
    space = _space()
    levels = np.r_[np.linspace(0, 1, 301), np.random.default_rng(0).random(200)]
    batch = global_width_subnets(space, levels, np.full(len(levels), 24))
    for level, widths in zip(levels.tolist(), batch.widths.tolist()):
        assert widths == [min(c, key=lambda w: (abs(w - (c[0] + level * (c[-1] - c[0]))), w))
                          for c in space.width_choices]
    assert set(batch.resolutions.tolist()) == {24}


# US-Net

def test_usnet_sampler_trains_one_width_level_at_the_max_resolution(digits):
    space = _space()
    sampler = create_sampler('usnet', space, num_pools=5, pool_size=8, seed=0)
    assert isinstance(sampler, USNetSampler) and isinstance(sampler, GlobalWidthSampler)
    top = max(space.resolutions)
    levels = set()
    for _ in range(300):
        p = sampler.propose()
        assert p.subnet.resolution == top and not p.from_pool
        rel = np.array([(w - c[0]) / (c[-1] - c[0]) for w, c in zip(p.subnet.widths, space.width_choices)])
        half_step = np.array([0.5 / (len(c) - 1) for c in space.width_choices]) + 1e-9
        assert (rel - half_step).max() <= (rel + half_step).min()  # one level shared by every group
        levels.add(round(float(np.median(rel)), 1))
        sampler.update(p.bucket, p.subnet, -1.0)
    assert len(levels) >= 10
    assert sampler.min_subnet() == Subnet(top, space.min_subnet().widths)
    state = json.loads(json.dumps(sampler.state_dict()))
    with pytest.raises(ValueError, match="saved by a 'usnet' sampler; this run uses 'global_width'"):
        create_sampler('global_width', space, num_pools=5, pool_size=8).load_state_dict(state)
    with pytest.raises(ValueError, match=r'priority change\(s\) how buckets and pool members are drawn; kind usnet'):
        create_sampler('usnet', space, num_pools=5, priority='zscore')
    # in the training step every subnet of the sandwich is at the max resolution
    model = _tiny_supernet()
    task = PSSTask(model, create_sampler('usnet', model.space, num_pools=3, pool_size=2, seed=0), verbose=False)
    seen = []
    set_subnet = model.set_subnet
    model.set_subnet = lambda subnet: (seen.append(subnet), set_subnet(subnet))
    _train(task, digits, 1)
    assert {s.resolution for s in seen} == {max(model.space.resolutions)}
    assert Subnet(32, model.space.min_subnet().widths) in seen


# fresh scores, diagnostics and refresh on a real model

@pytest.fixture(scope='module')
def trained_once(digits):
    """A supernet with dropout (its forward draws from the torch RNG) and pools after 4 PSS steps."""
    model = _tiny_supernet(drop_rate=0.3).train()
    sampler = PrioritizedSubnetSampler(model.space, num_pools=3, pool_size=2, seed=0, priority='rank')
    task = PSSTask(model, sampler, verbose=False)
    _train(task, digits, 4, total=8)
    return model, sampler


@pytest.fixture
def trained(trained_once):
    """(model, sampler, task): a fresh copy of `trained_once`, the torch RNG reseeded."""
    model, sampler = copy.deepcopy(trained_once)
    torch.manual_seed(7)
    return model, sampler, PSSTask(model, sampler, verbose=False)


def test_fresh_scores_leave_bn_statistics_rng_and_subnet_untouched(digits, trained):
    model, sampler, _ = trained
    images, labels = digits[0][1000:1032], digits[1][1000:1032]
    members = [m for pool in sampler.pools for m in pool.members()]
    model.set_subnet(members[0])
    model.eval()
    buffers = copy.deepcopy(dict(model.named_buffers()))
    rng_state = torch.get_rng_state()
    scores = fresh_scores(model, members, images, labels)
    assert torch.equal(torch.get_rng_state(), rng_state)
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert model.active_subnet == members[0] and not model.training
    # each score is the -CE of a train-mode forward (batch statistics, dropout), as the training step sees it
    twin = copy.deepcopy(model).train()
    for subnet in members:
        torch.manual_seed(123)
        score = fresh_scores(model, [subnet], images, labels)[0]
        twin.set_subnet(subnet)
        torch.manual_seed(123)
        with torch.no_grad():
            assert math.isclose(score, -torch.nn.functional.cross_entropy(twin(images), labels).item(), rel_tol=1e-6)
            twin.eval()
            assert not math.isclose(score, -torch.nn.functional.cross_entropy(twin(images), labels).item(),
                                    rel_tol=1e-3)
            twin.train()


def test_monitoring_mid_training_changes_nothing_and_refresh_replaces_scores(digits, trained_once):
    """Diagnostics alone: training continues bit for bit as without them. Refresh: scores become fresh -CE."""
    images, labels = fixed_batch(TensorDataset(*digits), 32, seed=0)
    runs = []
    for monitor in (False, True):
        model, sampler = copy.deepcopy(trained_once)
        task = PSSTask(model, sampler, verbose=False)
        torch.manual_seed(7)
        if monitor:
            rows = PoolMonitor(model, sampler, images, labels).end_epoch(0)
            assert rows['pool'] == 'mean'
        _train(task, digits, 2, start=4, total=8)
        runs.append((model.state_dict(), sampler.state_dict(), torch.get_rng_state()))
    (a_weights, a_pools, a_rng), (b_weights, b_pools, b_rng) = runs
    assert a_pools == b_pools and torch.equal(a_rng, b_rng)
    for name, value in a_weights.items():
        assert torch.equal(value, b_weights[name]), name

    members = [pool.members() for pool in sampler.pools]
    old = [pool.scores() for pool in sampler.pools]
    rng_state = torch.get_rng_state()
    flat = fresh_scores(model, [s for m in members for s in m], images, labels)  # the monitor's one pass
    expected = np.split(flat, np.cumsum([len(m) for m in members])[:-1])
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert PoolMonitor(model, sampler, images, labels, diagnostics=False, refresh=True).end_epoch(0) is None
    for pool, m, before, fresh in zip(sampler.pools, members, old, expected):
        assert pool.members() == m  # same members, same order
        np.testing.assert_allclose(pool.scores(), fresh, rtol=0, atol=1e-6)
        assert len(pool) == 0 or not np.allclose(pool.scores(), before)
    assert sum(sampler.fill()) >= 3


def test_diagnostics_csv_rows_and_atomic_rewrite(digits, trained, tmp_path, monkeypatch):
    model, sampler, _ = trained
    images, labels = fixed_batch(TensorDataset(*digits), 32, seed=1)
    path = tmp_path / 'pss_diagnostics.csv'
    monitor = PoolMonitor(model, sampler, images, labels, csv_path=path)
    monitor.end_epoch(0)
    monitor.end_epoch(1)
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == DIAGNOSTICS_COLUMNS
    assert [(r['epoch'], r['pool']) for r in rows] == [(e, p) for e in '01' for p in ('0', '1', '2', 'mean')]
    for r in rows:
        if int(float(r['members'])) > 0:
            assert 0 < float(r['top_member_prob']) <= 1 and 1 <= float(r['effective_members']) <= 2
    pool_rows = [r for r in rows if r['epoch'] == '1' and r['pool'] != 'mean']
    expected = pool_diagnostics(sampler, monitor.fresh_pool_scores())
    assert [float(r['top_member_prob']) for r in pool_rows] == pytest.approx(
        [r['top_member_prob'] for r in expected[:-1]], nan_ok=True)
    probs = sampler.draw_probabilities(0)
    assert math.isclose(float(pool_rows[0]['effective_members']), effective_members(probs))
    # a failed write leaves the previous file whole and no temporary behind
    before = path.read_bytes()
    monkeypatch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('disk full')))
    with pytest.raises(OSError, match='disk full'):
        monitor.end_epoch(2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['pss_diagnostics.csv']
    monkeypatch.undo()
    # a resumed run keeps the epochs before it and drops the replayed one
    resumed = PoolMonitor(model, sampler, images, labels, csv_path=path, start_epoch=1)
    resumed.end_epoch(1)
    with open(path, newline='') as f:
        assert [(r['epoch'], r['pool']) for r in csv.DictReader(f)] == [
            (e, p) for e in '01' for p in ('0', '1', '2', 'mean')]


def test_fixed_batch_depends_on_the_seed_only():
    data = TensorDataset(torch.arange(100.0).view(100, 1), torch.arange(100) % 10)
    torch.manual_seed(0)
    a = fixed_batch(data, 16, seed=4)
    torch.manual_seed(1)
    np.random.seed(1)
    b = fixed_batch(data, 16, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and len(set(a[0].flatten().tolist())) == 16
    assert not torch.equal(fixed_batch(data, 16, seed=5)[0], a[0])
    assert fixed_batch(data, 500, seed=0)[0].shape == (100, 1)


# the command line

def test_train_pss_options_reach_the_sampler_and_bad_combinations_exit_2():
    space = _space()
    args, _ = parse_args(['--pss-priority', 'zscore', '--pss-shuffle-scores', '--pss-bucket-weights',
                                    'global_width', '--pss-refresh-scores', '--pss-num-pools', '5'])
    sampler = build_sampler(space, **sampler_kwargs(args))
    assert (sampler.config.priority, sampler.config.shuffle_scores, sampler.config.bucket_weights) == (
        'zscore', True, 'global_width') and args.pss_refresh_scores and not args.pss_no_diagnostics
    args, _ = parse_args(['--pss-sampler', 'usnet', '--pss-num-pools', '5'])
    assert isinstance(build_sampler(space, **sampler_kwargs(args)), USNetSampler)
    default, _ = parse_args([])
    assert (default.pss_priority, default.pss_bucket_weights, default.pss_shuffle_scores,
            default.pss_refresh_scores) == ('raw', 'uniform', False, False)
    for bad in (['--pss-sampler', 'usnet', '--pss-priority', 'rank'],
                ['--pss-sampler', 'global_width', '--pss-shuffle-scores'],
                ['--pss-priority', 'softmax']):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(bad)
        assert exit_info.value.code == 2


@pytest.mark.parametrize('settings, library, command_line', [
    (dict(kind='usnet', cost_kinds=('flops', 'latency'), has_latency_table=True), 'kind usnet keeps pools for one '
     'cost kind only; drop the other cost_kinds',
     '--pss-sampler usnet keeps pools for one cost kind only; drop the other --pss-cost-kinds'),
    (dict(kind='global_width', shuffle_scores=True, priority='rank'), 'priority, shuffle_scores change(s) how',
     '--pss-priority, --pss-shuffle-scores change(s) how buckets and pool members are drawn; --pss-sampler '
     'global_width draws neither'),
    (dict(cost_kinds=('flops', 'flops')), "cost_kinds lists a cost kind twice: ['flops', 'flops']",
     "--pss-cost-kinds lists a cost kind twice: ['flops', 'flops']"),
    (dict(cost_kinds=('latency',)), 'cost_kinds latency needs latency_table (build one with '
     'timm_pss.latency.build_lut)', '--pss-cost-kinds latency needs --pss-latency-table JSON (build one with python -m '
     'timm_pss.latency'),
])
def test_one_rule_refuses_a_sampler_setting_in_keyword_and_option_names(settings, library, command_line, capsys):
    """check_sampler_settings states each rule once: library callers (build_sampler, the samplers) read it in
    keyword names, parse_args in option names with exit code 2."""
    with pytest.raises(ValueError) as error:
        check_sampler_settings(**settings)
    assert library in str(error.value)
    options = dict(kind='--pss-sampler', cost_kinds='--pss-metrics', priority='--pss-priority')
    argv = [v for key, value in settings.items() if key in options
            for v in [options[key], *([value] if isinstance(value, str) else value)]]
    argv += ['--pss-shuffle-scores'] * settings.get('shuffle_scores', False)
    argv += ['--pss-latency-table', 'lut.json'] * settings.get('has_latency_table', False)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and command_line in capsys.readouterr().err
