"""The samplers: which middle subnet each training step trains, and what they all provide (`Sampler`).

PSS (`PrioritizedSubnetSampler`) picks a bucket uniformly each step; with probability `p_random` (or while the
bucket's pool is not yet full) it trains a random subnet of that bucket, otherwise one drawn from the pool
(`timm_pss.pss.pools`). The trained subnet's score goes back into the pool. `p_random` and the temperature T decay
exponentially over training, moving the mix from exploration to the pools.

Ablations (each off by default, the default is the reference rule): `priority` draws from softmax over
z-scored or ranked scores instead of raw ones (scale-free, so T means the same at any loss level),
`shuffle_scores` draws with the scores permuted among a pool's members (focus without quality), and
`bucket_weights='global_width'` picks buckets as often as the MutualNet-style global-width sampler lands in them.
Baseline: `InBucketUniformSampler` (a random subnet of a random bucket, every step); the samplers of other methods
(MutualNet, US-Net, uniform over the space) are in `timm_pss.pss.baselines`.

All state is plain JSON (no pickle, no eval): pools, schedules, progress and the sampler's own RNG.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from ..costs import FlopsCost, SubnetCost
from ..spaces import RngLike, SearchSpace, Subnet
from .pools import (
    BUCKET_WEIGHTS, PRIORITIES, Proposal, SubnetPool, bucket_distribution, bucket_targets, exponential_schedule,
    global_width_bucket_weights,
)

__all__ = ['Sampler', 'SamplerConfig', 'PrioritizedSubnetSampler', 'InBucketUniformSampler', 'STATE_FORMAT',
           'EMPTY_BUCKET_PROBES']

STATE_FORMAT = 'timm_pss.pss_sampler/1'
# in-bucket draws tried (fixed seed) on a bucket whose candidate bank has no member, before it counts as empty
EMPTY_BUCKET_PROBES = 4


@runtime_checkable
class Sampler(Protocol):
    """What every sampler provides: what `PSSTask` trains, what training reports and checkpoints, and the best
    pooled subnet for a budget (what per-epoch evaluation measures)."""

    kind: str  # which sampler this is (the pool samplers record it in their checkpoints)
    space: SearchSpace
    pools: List[SubnetPool]
    progress: float

    def set_progress(self, progress: float) -> None:
        """Where training is, 0 (start) .. 1 (end)."""

    def propose(self) -> Proposal:
        """The next middle subnet to train."""

    def min_subnet(self) -> Subnet:
        """The sandwich's smallest subnet."""

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        """Record a trained proposal's score (minus its cross-entropy)."""

    def fill(self) -> List[int]:
        """Entries per pool."""

    def describe_bucket(self, bucket: int) -> str:
        """Pool `bucket`'s budget for people, e.g. '120.00M flops'."""

    def best_subnet(self, budget: float) -> Optional[Subnet]:
        """The best pooled subnet for a FLOPs budget, or None."""

    def state_dict(self) -> dict:
        """Plain JSON state, for checkpoints."""

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; a refused state (ValueError) changes nothing."""


@dataclass
class SamplerConfig:
    """A pool sampler's settings: bucket centres and width, pool size and score momentum, schedules, ablations."""
    targets: List[float]
    step: float
    pool_size: int
    momentum: float
    p_random: Tuple[float, float]
    temperature: Tuple[float, float]
    priority: str = 'raw'
    shuffle_scores: bool = False
    bucket_weights: str = 'uniform'


class PrioritizedSubnetSampler:
    """PSS's sampling state for one supernet: budget buckets, a pool per bucket, schedules, and its own RNG.

    Args:
        space: the supernet's search space.
        budget_range: (lo, hi, step) bucket centres in the cost's unit, e.g. (110e6, 570e6, 10e6) FLOPs; default:
            `num_pools` centres spread over the space's span.
        pool_size: subnets kept per pool (reference: 50).
        momentum: lambda of the score EMA (reference: 0.9).
        p_random: (start, end) of the probability of a random in-bucket subnet (reference: 1.0 -> 0.01).
        temperature: (start, end) of the softmax temperature (reference: 1.0 -> 0.01).
        seed: seed of the sampler's RNG; give every rank the same seed so all ranks make the same decisions.
        cost: what the buckets measure: `FlopsCost(space)` (default) or a `LatencyCost` (predicted ms).
        priority: what pool draws take the softmax of: 'raw' scores (reference), per-pool 'zscore' or 'rank'.
        shuffle_scores: draw with the scores permuted among a pool's members (a control; off: reference).
        bucket_weights: 'uniform' buckets (reference) or 'global_width': each bucket as often as the global-width
            sampler lands in it (`global_width_bucket_weights`).
    """

    kind = 'prioritized'

    def __init__(
            self,
            space: SearchSpace,
            budget_range: Optional[Tuple[float, float, float]] = None,
            num_pools: int = 40,
            pool_size: int = 50,
            momentum: float = 0.9,
            p_random: Tuple[float, float] = (1.0, 0.01),
            temperature: Tuple[float, float] = (1.0, 0.01),
            seed: RngLike = 0,
            cost: Optional[SubnetCost] = None,
            priority: str = 'raw',
            shuffle_scores: bool = False,
            bucket_weights: str = 'uniform',
    ):
        if priority not in PRIORITIES:
            raise ValueError(f'unknown priority {priority!r}; choose one of {", ".join(PRIORITIES)}')
        if bucket_weights not in BUCKET_WEIGHTS:
            raise ValueError(f'unknown bucket weights {bucket_weights!r}; choose one of {", ".join(BUCKET_WEIGHTS)}')
        for name, (start, end) in (('p_random', p_random), ('temperature', temperature)):
            if not (start > 0 and end > 0):
                raise ValueError(f'{name} schedule ends must be positive, got {(start, end)}')
        if not 0 < p_random[0] <= 1 or not 0 < p_random[1] <= 1:
            raise ValueError(f'p_random must lie in (0, 1], got {p_random}')
        self.cost = cost or FlopsCost(space)
        targets, step = bucket_targets(space, budget_range, num_pools, self.cost)
        self.space = space
        self.config = SamplerConfig([float(t) for t in targets], step, int(pool_size), float(momentum),
                              tuple(map(float, p_random)), tuple(map(float, temperature)), priority,
                              bool(shuffle_scores), bucket_weights)
        # bucket draw probabilities; None: uniform, drawn as the reference does (rng.integers)
        self.bucket_probs: Optional[np.ndarray] = None
        if bucket_weights == 'global_width':
            self.bucket_probs = global_width_bucket_weights(
                space, targets, step, self.cost, seed=seed if isinstance(seed, (int, np.integer)) else 0)
        self.pools = [SubnetPool(pool_size, momentum) for _ in targets]
        # a bucket with fewer distinct subnets than pool_size counts as full once it holds all it can get
        self.fill_targets = [
            min(pool_size, self.cost.num_candidates(self.bucket_range(b)) or pool_size) for b in range(len(targets))]
        self.empty_buckets = self._find_empty_buckets()
        self.live_buckets = [b for b in range(len(targets)) if b not in self.empty_buckets]
        if self.bucket_probs is not None and self.empty_buckets:
            self.bucket_probs[self.empty_buckets] = 0.0
            self.bucket_probs /= self.bucket_probs.sum()
        self.rng = np.random.default_rng(seed)
        self.progress = 0.0

    def _find_empty_buckets(self) -> List[int]:
        """Buckets in which no subnet can be found, left out of sampling with a warning.

        Predicted latencies (and, rarely, FLOPs) of a space with few resolutions form clusters with gaps, so an
        evenly spaced bucket can hold no subnet on one device and many on another. Such a bucket is found here,
        deterministically (same answer on every DDP rank), rather than by a failed draw in the middle of training.
        """
        empty = []
        for b in range(len(self.config.targets)):
            if self.cost.num_candidates(self.bucket_range(b)) > 0:
                continue
            try:
                self.cost.sample_many(EMPTY_BUCKET_PROBES, rng=0, value_range=self.bucket_range(b))
            except ValueError:
                empty.append(b)
        if len(empty) == len(self.config.targets):
            raise ValueError(f'no bucket holds a subnet: the {len(empty)} {self.cost.kind} buckets around '
                             f'{", ".join(self.describe_bucket(b) for b in empty)} fall into gaps of this space; '
                             f'choose other buckets (budget range or number of pools)')
        if empty:
            warnings.warn(f'{len(empty)} of {len(self.config.targets)} PSS buckets hold no subnet and are left out of '
                          f'sampling (their pools stay empty): {", ".join(self.describe_bucket(b) for b in empty)}; '
                          f'the space\'s {self.cost.kind} values have gaps there', stacklevel=3)
        return empty

    # schedule

    @property
    def targets(self) -> List[float]:
        return self.config.targets

    @property
    def bucket_costs(self) -> List[SubnetCost]:
        """The cost each bucket measures (one per pool)."""
        return [self.cost] * len(self.pools)

    def describe_bucket(self, bucket: int) -> str:
        return f'{self.cost.format(self.config.targets[bucket])} {self.cost.kind}'

    def bucket_range(self, bucket: int) -> Tuple[float, float]:
        t, half = self.config.targets[bucket], self.config.step / 2
        return t - half, t + half

    def set_progress(self, progress: float) -> None:
        """Where training is, 0 (start) .. 1 (end): epoch / epochs, or per step for a finer schedule."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    @property
    def p_random(self) -> float:
        return exponential_schedule(*self.config.p_random, self.progress)

    @property
    def temperature(self) -> float:
        return exponential_schedule(*self.config.temperature, self.progress)

    # sampling

    def propose(self) -> Proposal:
        """Pick a bucket (uniformly, or by `bucket_probs`), then a random in-bucket subnet or one from its pool.

        A pool is drawn from once it is full: `pool_size` subnets, or every distinct subnet its bucket offers.
        """
        if self.bucket_probs is None:
            return self.propose_in(self.live_buckets[int(self.rng.integers(len(self.live_buckets)))])
        return self.propose_in(int(self.rng.choice(len(self.pools), p=self.bucket_probs)))

    def propose_in(self, bucket: int) -> Proposal:
        """A random subnet of `bucket`, or one drawn from its pool (see `propose`)."""
        pool = self.pools[bucket]
        if len(pool) < self.fill_targets[bucket] or self.rng.random() < self.p_random:
            return Proposal(bucket, self.cost.sample(self.rng, self.bucket_range(bucket)), False)
        c = self.config
        return Proposal(bucket, pool.draw(self.rng, self.temperature, c.priority, c.shuffle_scores), True)

    def bucket_distribution(self) -> np.ndarray:
        """The probability of each bucket being drawn by `propose` (empty buckets: 0)."""
        return bucket_distribution(len(self.pools), self.live_buckets, self.bucket_probs)

    def draw_probabilities(self, bucket: int) -> np.ndarray:
        """Pool `bucket`'s draw distribution now (members in `members()` order), scores unshuffled."""
        return self.pools[bucket].draw_probabilities(self.temperature, self.config.priority)

    def min_subnet(self) -> Subnet:
        """The sandwich's smallest subnet."""
        return self.space.min_subnet()

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        self.pools[bucket].update(subnet, score)

    def fill(self) -> List[int]:
        """Entries per pool."""
        return [len(p) for p in self.pools]

    def best_subnet(self, budget: float) -> Optional[Subnet]:
        """The best-scored subnet of the highest pool whose centre is at or below `budget` FLOPs, or None: no such
        pool holds a subnet yet, or the pools are keyed by another cost (latency)."""
        if self.cost.kind != 'flops':
            return None
        for bucket in sorted(range(len(self.pools)), key=lambda b: -self.config.targets[b]):
            if self.config.targets[bucket] <= budget and len(self.pools[bucket]):
                return self.pools[bucket].best(1)[0][0]
        return None

    # state

    def state_dict(self) -> dict:
        """Plain JSON: configuration, progress, RNG state and every pool."""
        c = self.config
        return {
            'format': STATE_FORMAT,
            'kind': self.kind,
            'cost_kind': self.cost.kind,
            'targets': list(c.targets), 'step': c.step, 'pool_size': c.pool_size, 'momentum': c.momentum,
            'p_random': list(c.p_random), 'temperature': list(c.temperature),
            'priority': c.priority, 'shuffle_scores': c.shuffle_scores, 'bucket_weights': c.bucket_weights,
            'bucket_probs': None if self.bucket_probs is None else self.bucket_probs.tolist(),
            'progress': self.progress,
            'rng': self.rng.bit_generator.state,
            'pools': [p.state_dict() for p in self.pools],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; the buckets and pool settings must match this sampler's, every pooled
        subnet must lie in the space and in its pool's bucket, and every score must be finite. Everything is
        checked first: a refused state (ValueError) leaves the sampler as it was."""
        self.apply_state(self.parse_state(state))

    def apply_state(self, parsed: tuple) -> None:
        """Take a state `parse_state` checked (all of it or nothing, so several samplers can load together)."""
        bucket_probs = parsed[-1]
        self.pools, self.rng, self.progress, self.config.p_random, self.config.temperature = parsed[:-1]
        if bucket_probs is not None:
            self.bucket_probs = bucket_probs

    def parse_state(self, state: dict) -> tuple:
        """(pools, rng, progress, p_random, temperature, bucket_probs) from a `state_dict()`, checked; changes
        nothing."""
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise ValueError(f'not a PSS sampler state (expected "format": "{STATE_FORMAT}")')
        kind = state.get('kind', 'prioritized')
        if kind != self.kind:
            raise ValueError(f'sampler state was saved by a {kind!r} sampler; this run uses {self.kind!r}')
        cost_kind = state.get('cost_kind', 'flops')
        if cost_kind != self.cost.kind:
            raise ValueError(f'sampler state has pools keyed by {cost_kind!r}; this run keys them by '
                             f'{self.cost.kind!r}')
        c = self.config
        theirs = (state.get('targets') or [], state.get('step'), state.get('pool_size'), state.get('momentum'))
        same = (len(theirs[0]) == len(c.targets) and np.allclose(theirs[0], c.targets)
                and theirs[1] is not None and math.isclose(theirs[1], c.step) and theirs[2] == c.pool_size
                and theirs[3] is not None and math.isclose(theirs[3], c.momentum))
        if not same:
            raise ValueError(f'PSS sampler state was saved with other buckets or pool settings: '
                             f'{len(theirs[0])} buckets, step {theirs[1]}, pool_size {theirs[2]}, momentum '
                             f'{theirs[3]}; this run has {len(c.targets)} buckets, step {c.step}, pool_size '
                             f'{c.pool_size}, momentum {c.momentum}')
        theirs = (state.get('priority', 'raw'), bool(state.get('shuffle_scores', False)),
                  state.get('bucket_weights', 'uniform'))
        if theirs != (c.priority, c.shuffle_scores, c.bucket_weights):
            raise ValueError(f'PSS sampler state was saved with priority {theirs[0]!r}, shuffle_scores {theirs[1]}, '
                             f'bucket_weights {theirs[2]!r}; this run has {c.priority!r}, {c.shuffle_scores}, '
                             f'{c.bucket_weights!r}')
        bucket_probs = state.get('bucket_probs')
        if bucket_probs is not None:
            bucket_probs = np.asarray(bucket_probs, dtype=np.float64)
            if (bucket_probs.shape != (len(c.targets),) or not np.isfinite(bucket_probs).all()
                    or (bucket_probs < 0).any() or not math.isclose(bucket_probs.sum(), 1.0)):
                raise ValueError(f'PSS sampler state has bucket_probs for {bucket_probs.size} buckets summing to '
                                 f'{bucket_probs.sum():.6g}; need {len(c.targets)} non-negative, summing to 1')
        try:
            if len(state['pools']) != len(c.targets):
                raise ValueError(f'{len(state["pools"])} pools for {len(c.targets)} buckets')
            pools = [SubnetPool(c.pool_size, c.momentum) for _ in c.targets]
            for bucket, (pool, entries) in enumerate(zip(pools, state['pools'])):
                try:
                    pool.apply_state(pool.parse_state(entries))
                    for subnet in pool.members():
                        self.space.validate(subnet)
                        self._check_in_bucket(bucket, subnet)
                except ValueError as e:
                    raise ValueError(f'pool {bucket} ({self.describe_bucket(bucket)}): {e}') from None
            rng = np.random.default_rng()
            rng.bit_generator.state = state['rng']
            progress = float(state['progress'])
            p_random, temperature = (tuple(float(v) for v in state[k]) for k in ('p_random', 'temperature'))
            if not (math.isfinite(progress) and len(p_random) == 2 == len(temperature)
                    and all(math.isfinite(v) and v > 0 for v in p_random + temperature)):
                raise ValueError(f'progress {progress}, p_random {p_random} and temperature {temperature} must be '
                                 f'finite, the schedules two positive numbers each')
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f'PSS sampler state refused: {e}') from None
        return pools, rng, min(max(progress, 0.0), 1.0), p_random, temperature, bucket_probs

    def _check_in_bucket(self, bucket: int, subnet: Subnet) -> None:
        lo, hi = self.bucket_range(bucket)
        value = self.cost.of(subnet)
        slack = 1e-9 * self.config.step  # float rounding of the bucket edges, not a wider bucket
        if not lo - slack <= value < hi + slack:
            raise ValueError(f'subnet {subnet} has {self.cost.format(value)} {self.cost.kind}, outside its bucket '
                             f'[{self.cost.format(lo)}, {self.cost.format(hi)})')


class InBucketUniformSampler(PrioritizedSubnetSampler):
    """The paper's ablation: a random subnet of a uniformly chosen bucket every step (`p_random` fixed at 1), so
    training never draws from the pools; they only record scores, for finalisation.

    Its state is a prioritized sampler's (it is one, with another schedule), as in the runs that wrote it.
    """

    def __init__(self, space: SearchSpace, **kwargs):
        super().__init__(space, **{**kwargs, 'p_random': (1.0, 1.0)})
