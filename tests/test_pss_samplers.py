"""The samplers and their pools: schedules, pool rules, bucket targets, the sampler interface every sampler
provides, state round trips, the in-bucket, global-width and multi-cost samplers, sparse buckets."""
import json
import math

import numpy as np
import pytest
import timm

from timm_pss import Subnet
from timm_pss.pss import (GlobalWidthSampler, InBucketUniformSampler, MultiCostSampler, PrioritizedSubnetSampler,
                          Sampler, SpaceUniformSampler, SubnetPool, USNetSampler, bucket_targets, build_sampler,
                          create_sampler, exponential_schedule)

S = [Subnet(128, (8 * i,)) for i in range(1, 8)]


def test_exponential_schedule():
    assert exponential_schedule(1.0, 0.01, 0.0) == 1.0
    assert math.isclose(exponential_schedule(1.0, 0.01, 1.0), 0.01)
    assert math.isclose(exponential_schedule(1.0, 0.01, 0.5), 0.1)
    assert exponential_schedule(1.0, 0.01, -3) == 1.0 and math.isclose(exponential_schedule(1.0, 0.01, 7), 0.01)


def test_pool_insert_update_and_evict():
    pool = SubnetPool(capacity=3, momentum=0.9)
    pool.update(S[0], -1.0)                              # unseen: inserted as is
    assert len(pool) == 1 and pool.score(S[0]) == -1.0
    pool.update(S[0], -2.0)                              # re-seen: 0.9 * old + 0.1 * new
    assert math.isclose(pool.score(S[0]), -1.1) and len(pool) == 1
    pool.update(S[1], -0.5)
    pool.update(S[2], -3.0)
    assert pool.full
    pool.update(S[3], -0.1)                              # full: the lowest (S[2]) goes
    assert S[2] not in pool and S[3] in pool and len(pool) == 3
    pool.update(S[4], -9.0)                              # a new lowest is evicted at once
    assert S[4] not in pool and len(pool) == 3
    assert [s for s, _ in pool.best()] == [S[3], S[1], S[0]] and pool.best(1) == [(S[3], -0.1)]


def test_pool_ties_evict_the_oldest():
    pool = SubnetPool(capacity=2)
    pool.update(S[0], -1.0)
    pool.update(S[1], -1.0)
    pool.update(S[2], -1.0)
    assert S[0] not in pool and S[1] in pool and S[2] in pool


def test_pool_draws_follow_softmax():
    pool = SubnetPool(capacity=3)
    scores = [-1.0, -2.0, -3.0]
    for s, v in zip(S, scores):
        pool.update(s, v)
    rng = np.random.default_rng(0)
    for temperature in (1.0, 0.5):
        expected = np.exp(np.array(scores) / temperature)
        expected /= expected.sum()
        counts = np.bincount([S.index(pool.draw(rng, temperature)) for _ in range(20000)], minlength=3) / 20000
        assert np.allclose(counts, expected, atol=0.015), (temperature, counts, expected)
    assert all(pool.draw(rng, 0.001) == S[0] for _ in range(50))
    with pytest.raises(ValueError, match='empty pool'):
        SubnetPool(2).draw(rng, 1.0)
    with pytest.raises(ValueError, match='finite'):
        pool.update(S[5], float('nan'))


def test_pool_state_is_json():
    pool = SubnetPool(capacity=3)
    pool.update(S[0], -1.5)
    pool.update(S[1], -0.5)
    other = SubnetPool(capacity=3)
    other.load_state_dict(json.loads(json.dumps(pool.state_dict())))
    assert other.best() == pool.best()
    with pytest.raises(ValueError, match='capacity'):
        SubnetPool(capacity=1).load_state_dict(pool.state_dict())


def test_bucket_targets():
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    targets, step = bucket_targets(space, (110e6, 570e6, 10e6))
    assert len(targets) == 47 and step == 10e6 and targets[0] == 110e6 and targets[-1] == 570e6
    targets, step = bucket_targets(space, num_pools=5)
    assert len(targets) == 5 and targets[0] == space.flops_span[0] and targets[-1] == space.flops_span[1]
    with pytest.raises(ValueError, match='holds no subnet'):
        bucket_targets(space, (50e6, 570e6, 10e6))


def test_sampler_explores_until_pools_fill_then_uses_them():
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    sampler = PrioritizedSubnetSampler(space, num_pools=3, pool_size=2, p_random=(1.0, 0.01), seed=0)
    first = [sampler.propose() for _ in range(20)]
    assert not any(p.from_pool for p in first)  # pools are empty: always random, in the bucket's range
    for p in first:
        lo, hi = sampler.bucket_range(p.bucket)
        assert lo <= space.flops(p.subnet) < hi
        sampler.update(p.bucket, p.subnet, -float(space.flops(p.subnet)) / 1e9)
    assert sampler.fill() == [2, 2, 2]
    sampler.set_progress(1.0)
    assert math.isclose(sampler.p_random, 0.01) and math.isclose(sampler.temperature, 0.01)
    late = [sampler.propose() for _ in range(200)]
    assert sum(p.from_pool for p in late) > 180
    assert all(p.subnet in sampler.pools[p.bucket] for p in late if p.from_pool)


def test_sampler_state_round_trip_gives_identical_continuation():
    space = timm.create_model('pss_mobilenetv2', device='meta').space
    a = PrioritizedSubnetSampler(space, num_pools=4, pool_size=2, seed=7)
    for i in range(30):
        a.set_progress(i / 30)
        p = a.propose()
        a.update(p.bucket, p.subnet, -i / 10)
    state = json.loads(json.dumps(a.state_dict()))
    b = PrioritizedSubnetSampler(space, num_pools=4, pool_size=2, seed=999)
    b.load_state_dict(state)
    assert [a.propose() for _ in range(25)] == [b.propose() for _ in range(25)]
    with pytest.raises(ValueError, match='other buckets or pool settings'):
        PrioritizedSubnetSampler(space, num_pools=5, pool_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match='not a PSS sampler state'):
        b.load_state_dict({'pools': []})


def test_uniform_in_bucket_ablation_never_draws_from_pools():
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    sampler = create_sampler('uniform', space, num_pools=3, pool_size=2, seed=0)
    assert isinstance(sampler, InBucketUniformSampler)
    for i in range(60):
        sampler.set_progress(i / 59)
        p = sampler.propose()
        assert not p.from_pool and sampler.p_random == 1.0
        lo, hi = sampler.bucket_range(p.bucket)
        assert lo <= space.flops(p.subnet) < hi
        sampler.update(p.bucket, p.subnet, -i)
    assert sampler.fill() == [2, 2, 2]  # the pools still record scores, for finalisation
    # its state is a prioritized sampler's with p_random fixed, as the runs that wrote it stored it
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state['kind'] == 'prioritized' and state['p_random'] == [1.0, 1.0]
    with pytest.raises(ValueError, match='unknown sampler .*prioritized, uniform, global_width'):
        create_sampler('bogus', space)


@pytest.fixture(scope='module')
def small_space():
    """One space for the sampler tests: its FLOPs candidate bank is built once (the first sampler) and shared."""
    return timm.create_model('pss_mobilenetv1', device='meta', resolution_range=(16, 24, 8)).space


SAMPLER_MAKERS = {
    PrioritizedSubnetSampler: lambda space, seed: PrioritizedSubnetSampler(space, num_pools=4, pool_size=3, seed=seed),
    InBucketUniformSampler: lambda space, seed: InBucketUniformSampler(space, num_pools=4, pool_size=3, seed=seed),
    GlobalWidthSampler: lambda space, seed: GlobalWidthSampler(space, num_pools=4, pool_size=3, seed=seed),
    USNetSampler: lambda space, seed: USNetSampler(space, num_pools=4, pool_size=3, seed=seed),
    SpaceUniformSampler: lambda space, seed: SpaceUniformSampler(space, seed=seed),
    MultiCostSampler: lambda space, seed: MultiCostSampler(
        [PrioritizedSubnetSampler(space, num_pools=4, pool_size=3, seed=seed)], seed=seed),
}


@pytest.mark.parametrize('cls', list(SAMPLER_MAKERS), ids=lambda cls: cls.__name__)
def test_every_sampler_provides_the_sampler_interface(cls, small_space):
    space = small_space
    methods = [name for name in ('set_progress', 'propose', 'min_subnet', 'update', 'fill', 'describe_bucket',
                                 'best_subnet', 'state_dict', 'load_state_dict')
               if callable(getattr(Sampler, name, None))]
    assert len(methods) == 9 and all(callable(getattr(cls, name, None)) for name in methods)
    sampler = SAMPLER_MAKERS[cls](space, 0)
    assert isinstance(sampler, Sampler) and isinstance(sampler.kind, str)
    assert all(isinstance(sampler.describe_bucket(b), str) for b in range(max(1, len(sampler.pools))))
    for i in range(30):
        sampler.set_progress(i / 29)
        p = sampler.propose()
        space.validate(p.subnet)
        sampler.update(p.bucket, p.subnet, -float(i % 7))
    assert sampler.progress == 1.0 and len(sampler.fill()) == len(sampler.pools)
    space.validate(sampler.min_subnet())
    best = sampler.best_subnet(space.flops(space.max_subnet()))
    assert best is None if not sampler.pools else any(best in pool for pool in sampler.pools)
    other = SAMPLER_MAKERS[cls](space, 7)
    other.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    assert [sampler.propose() for _ in range(10)] == [other.propose() for _ in range(10)]


def test_best_subnet_is_the_top_scored_member_of_the_highest_pool_within_the_budget(small_space):
    space = small_space
    sampler = PrioritizedSubnetSampler(space, num_pools=4, pool_size=3, seed=0)
    targets = sampler.targets
    assert sampler.best_subnet(targets[-1] + 1) is None  # nothing pooled yet
    for bucket in (0, 2):  # pools 1 and 3 stay empty
        subnets = sampler.cost.sample_many(3, rng=bucket, value_range=sampler.bucket_range(bucket))
        for i in range(3):
            sampler.update(bucket, subnets.subnet(i), -float(i))
    best_of = {b: sampler.pools[b].best(1)[0][0] for b in (0, 2)}
    assert sampler.best_subnet(targets[-1]) == best_of[2]  # pool 3 is empty: the next lower one
    assert sampler.best_subnet(targets[2]) == best_of[2]  # a pool whose centre equals the budget counts
    assert sampler.best_subnet(targets[2] - 1) == best_of[0]
    assert sampler.best_subnet(targets[0] - 1) is None  # below every pool
    multi = MultiCostSampler([sampler])
    assert [multi.best_subnet(b) for b in (targets[-1], targets[0] - 1)] == [best_of[2], None]


def test_every_module_of_the_pss_package_defines_what_its_all_lists():
    import importlib
    for name in ('pools', 'samplers', 'baselines', 'multi_cost', 'factory', 'task', 'diagnostics', 'finalize'):
        module = importlib.import_module(f'timm_pss.pss.{name}')
        assert [n for n in module.__all__ if n not in vars(module)] == [], name
    import timm_pss.pss.pools as pools
    with pytest.raises(AttributeError):
        pools.PrioritizedSubnetSampler  # the samplers live in their own modules only


def test_build_sampler_keys_pools_by_each_cost_kind(small_space):
    space = small_space
    sampler = build_sampler(space, 'uniform', num_pools=3, pool_size=2, seed=4)
    assert isinstance(sampler, InBucketUniformSampler) and sampler.cost.kind == 'flops'
    with pytest.raises(ValueError, match='cost_kinds latency needs latency_table'):
        build_sampler(space, cost_kinds=('flops', 'latency'))
    with pytest.raises(ValueError, match="unknown cost kind 'params'"):
        build_sampler(space, cost_kinds=('params',))


def test_global_width_sampler_moves_every_group_together():
    space = timm.create_model('pss_mobilenetv1', device='meta', width_range=(0.25, 1.0)).space
    sampler = create_sampler('global_width', space, num_pools=5, pool_size=50, seed=0)
    assert isinstance(sampler, GlobalWidthSampler)
    levels, resolutions = set(), set()
    for _ in range(400):
        p = sampler.propose()
        assert not p.from_pool
        # one level for every group: each width sits at the same relative position of its choices
        # (the nearest choice to min + u * (max - min) of its group, for one u shared by all groups)
        rel = np.array([(w - c[0]) / (c[-1] - c[0]) for w, c in zip(p.subnet.widths, space.width_choices)])
        half_step = np.array([0.5 / (len(c) - 1) for c in space.width_choices]) + 1e-9
        assert (rel - half_step).max() <= (rel + half_step).min()
        levels.add(round(float(np.median(rel)), 1))
        resolutions.add(p.subnet.resolution)
        flops = space.flops(p.subnet)
        if p.bucket >= 0:
            lo, hi = sampler.bucket_range(p.bucket)
            assert lo <= flops < hi
        else:
            assert all(not (lo <= flops < hi) for lo, hi in map(sampler.bucket_range, range(5)))
        sampler.update(p.bucket, p.subnet, 0.0)
    assert len(levels) >= 10 and resolutions == set(space.resolutions)
    assert all(n > 0 for n in sampler.fill())
    state = json.loads(json.dumps(sampler.state_dict()))
    with pytest.raises(ValueError, match="saved by a 'global_width' sampler; this run uses 'prioritized'"):
        create_sampler('prioritized', space, num_pools=5, pool_size=50).load_state_dict(state)
    other = create_sampler('global_width', space, num_pools=5, pool_size=50, seed=3)
    other.load_state_dict(state)
    assert [sampler.propose() for _ in range(10)] == [other.propose() for _ in range(10)]


def test_sparse_bucket_pool_counts_as_full_with_every_subnet_it_offers():
    """MobileNetV2's top bucket holds fewer distinct subnets than pool_size: its pool must still come into use."""
    space = timm.create_model('pss_mobilenetv2', device='meta').space
    sampler = PrioritizedSubnetSampler(space, budget_range=(70e6, 300e6, 10e6), pool_size=50, seed=0)
    top = len(sampler.pools) - 1
    available = space.num_candidates(sampler.bucket_range(top))
    assert 0 < available < 50 and sampler.fill_targets[top] == available
    sampler.set_progress(1.0)
    for _ in range(3000):
        p = sampler.propose()
        if p.bucket == top:
            sampler.update(p.bucket, p.subnet, -1.0)
    assert len(sampler.pools[top]) == available
    draws = [sampler.propose() for _ in range(400)]
    assert any(p.from_pool for p in draws if p.bucket == top)
