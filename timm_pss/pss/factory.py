"""Samplers by name: `create_sampler` (the --pss-sampler values) and `build_sampler` (one per cost kind)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ..costs import FlopsCost, LatencyCost
from ..spaces import SearchSpace
from .multi_cost import MultiCostSampler
from .baselines import GlobalWidthSampler, USNetSampler
from .options import ABLATION_DEFAULTS, SAMPLERS, check_sampler_settings
from .samplers import InBucketUniformSampler, PrioritizedSubnetSampler, Sampler

__all__ = ['SAMPLERS', 'create_sampler', 'build_sampler']


def create_sampler(kind: str, space: SearchSpace, **kwargs) -> PrioritizedSubnetSampler:
    """A pool-keeping sampler by name, for training and ablations (same buckets, pools and finalisation).

    'prioritized': PSS. 'uniform': the paper's ablation, a random in-bucket subnet every step (p_random fixed
    at 1; pools only record scores; `InBucketUniformSampler`). 'global_width': MutualNet style, one global width
    level and a random resolution (see GlobalWidthSampler). 'usnet': US-Net, one global width level at the max
    resolution.
    """
    if kind == 'prioritized':
        return PrioritizedSubnetSampler(space, **kwargs)
    if kind == 'uniform':
        return InBucketUniformSampler(space, **kwargs)
    if kind == 'global_width':
        return GlobalWidthSampler(space, **kwargs)
    if kind == 'usnet':
        return USNetSampler(space, **kwargs)
    raise ValueError(f'unknown sampler {kind!r}; choose one of {", ".join(SAMPLERS)}')


def build_sampler(
        space: SearchSpace,
        kind: str = 'prioritized',
        cost_kinds: Sequence[str] = ('flops',),
        latency_table=None,
        budget_range: Optional[Tuple[float, float, float]] = None,
        latency_range: Optional[Tuple[float, float, float]] = None,
        seed: int = 0,
        **kwargs,
) -> Sampler:
    """The `kind` sampler over each cost kind ('flops', 'latency'): one sampler, or one per cost kind (seeds
    `seed`, `seed + 1`, ...) behind a `MultiCostSampler`. `latency_table` predicts the latency costs;
    `budget_range` (FLOPs, as --pss-budget-range) / `latency_range` (ms) are the (lo, hi, step) bucket centres of
    each; other keyword arguments go to every sampler (`create_sampler`). The settings are checked
    (`check_sampler_settings`) before any sampler is built (each takes a while)."""
    check_sampler_settings(kind, tuple(cost_kinds), has_latency_table=latency_table is not None,
                           **{key: kwargs[key] for key in ABLATION_DEFAULTS if key in kwargs})
    samplers = []
    for i, cost_kind in enumerate(cost_kinds):
        cost = FlopsCost(space) if cost_kind == 'flops' else LatencyCost(space, latency_table)
        cost_range = budget_range if cost_kind == 'flops' else latency_range
        samplers.append(create_sampler(kind, space, budget_range=cost_range, seed=seed + i, cost=cost, **kwargs))
    return samplers[0] if len(samplers) == 1 else MultiCostSampler(samplers, seed=seed)

