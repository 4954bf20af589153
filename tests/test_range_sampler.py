"""In-range sampling over ranked candidates: uniform draws in [lo, hi), counts, bad input, and that FLOPs and any
other cost share the one sampler."""
import numpy as np
import pytest
import timm

import timm_pss  # noqa: F401  (registers the models)
from timm_pss.range_sampler import RangeSampler, ordered_range

COSTS = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 7.0])  # unsorted on purpose: draws name positions in this order


def test_draws_are_uniform_over_the_candidates_in_range():
    sampler = RangeSampler(COSTS)
    positions = sampler.draw(6000, np.random.default_rng(0), 3.0, 9.0)  # [3, 9): 3, 3, 5, 7 -- not 9, not 1
    assert positions.shape == (6000,)
    counts = np.bincount(positions, minlength=COSTS.size)
    assert counts[1] == 0 and counts[4] == 0
    assert set(np.flatnonzero(counts)) == {0, 2, 3, 5}
    assert np.all(np.abs(counts[[0, 2, 3, 5]] / 6000 - 0.25) < 0.03), counts


def test_count_span_and_empty_ranges():
    sampler = RangeSampler(COSTS)
    assert len(sampler) == 6 and sampler.span == (1.0, 9.0)
    assert sampler.count(3.0, 9.0) == 4 and sampler.count(0.0, 100.0) == 6 and sampler.count(9.0, 9.5) == 1
    assert sampler.count(3.5, 4.5) == 0 and sampler.count(7.0, 7.0) == 0 and sampler.count(8.0, 2.0) == 0
    assert sampler.draw(5, np.random.default_rng(0), 3.5, 4.5) is None


def test_integer_costs_and_sorted_input_keep_their_positions():
    sampler = RangeSampler(np.arange(10, dtype=np.int64) * 100)
    positions = sampler.draw(500, np.random.default_rng(1), 250, 520)
    assert set(positions.tolist()) == {3, 4, 5}


@pytest.mark.parametrize('costs, message', [
    (np.zeros((2, 2)), 'non-empty 1-d array'),
    (np.array([]), 'non-empty 1-d array'),
    (np.array([1.0, np.nan]), 'must not be NaN'),
])
def test_bad_costs_are_refused(costs, message):
    with pytest.raises(ValueError, match=message):
        RangeSampler(costs)


def test_ordered_range():
    assert ordered_range(('1', 2), 'r') == (1.0, 2.0)
    for bad in ((2, 1), (float('nan'), 1), ('a', 1), 5):
        with pytest.raises(ValueError, match='^r must be two numbers'):
            ordered_range(bad, 'r')


def test_flops_and_any_other_cost_share_one_sampler():
    """A cost that equals FLOPs, ranked and sampled through the generic path (as latency is), gives exactly the
    draws of `sample_many(flops_range=...)`: one in-range sampler serves both metrics."""
    space = timm.create_model('pss_mobilenetv2', device='meta').space
    lo, hi = 150e6, 160e6
    ranked = space.ranked_candidates(space.flops_many)
    assert ranked.span == space.ranked_candidates().span
    assert ranked.count(lo, hi) == space.num_candidates((lo, hi)) > 0
    ours = space.sample_in_range(64, 7, (lo, hi), cost=space.flops_many, ranked=ranked, unit='FLOPs')
    theirs = space.sample_many(64, rng=7, flops_range=(lo, hi))
    assert (ours.resolutions == theirs.resolutions).all() and (ours.widths == theirs.widths).all()
    f = space.flops_many(ours)
    assert ((f >= lo) & (f < hi)).all()
