"""Prioritized subnet pools: one pool of well-scored subnets per FLOPs bucket, drawn by softmax(score / T).

Each training step PSS picks a bucket uniformly; with probability `p_random` (or while the bucket's pool is not yet
full) it trains a random subnet of that bucket, otherwise one drawn from the pool. The trained subnet's score
(minus its cross-entropy on the batch) goes back into the pool: a known subnet's score becomes an exponential
moving average, and a pool over capacity evicts its lowest score. `p_random` and the temperature T decay
exponentially over training, moving the mix from exploration to the pools.

All state is plain JSON (no pickle, no eval): pools, schedules, progress and the sampler's own RNG.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..costs import FlopsCost, SubnetCost
from ..spaces import RngLike, SearchSpace, Subnet

__all__ = ['exponential_schedule', 'SubnetPool', 'Proposal', 'PrioritizedSubnetSampler', 'GlobalWidthSampler',
           'MultiCostSampler', 'UniformSubnetSampler', 'bucket_targets', 'SAMPLERS', 'create_sampler']

STATE_FORMAT = 'timm_pss.pss_sampler/1'
# in-bucket draws tried (fixed seed) on a bucket whose candidate bank has no member, before it counts as empty
EMPTY_BUCKET_PROBES = 4


def exponential_schedule(start: float, end: float, progress: float) -> float:
    """`start * (end / start) ** progress`, progress clipped to [0, 1] (the paper's p_random and T schedules)."""
    progress = min(max(float(progress), 0.0), 1.0)
    return start * (end / start) ** progress


def softmax_probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(scores / temperature), computed stably."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


class SubnetPool:
    """The best-scored subnets of one bucket, at most `capacity`, scores updated as an EMA with `momentum`."""

    def __init__(self, capacity: int, momentum: float = 0.9):
        if capacity < 1:
            raise ValueError(f'pool capacity must be at least 1, got {capacity}')
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f'pool momentum (lambda) must be in [0, 1), got {momentum}')
        self.capacity = int(capacity)
        self.momentum = float(momentum)
        self._scores: Dict[Subnet, float] = {}  # insertion ordered: among equal scores the oldest is evicted

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, subnet: Subnet) -> bool:
        return subnet in self._scores

    @property
    def full(self) -> bool:
        return len(self._scores) >= self.capacity

    def score(self, subnet: Subnet) -> float:
        return self._scores[subnet]

    def update(self, subnet: Subnet, score: float) -> None:
        """Insert `subnet` with `score`, or blend into its score (`m * old + (1 - m) * new`); evict the lowest."""
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f'a pool score must be finite, got {score}')
        old = self._scores.get(subnet)
        self._scores[subnet] = score if old is None else self.momentum * old + (1.0 - self.momentum) * score
        if len(self._scores) > self.capacity:
            worst = min(self._scores, key=self._scores.__getitem__)
            del self._scores[worst]

    def draw(self, rng: np.random.Generator, temperature: float) -> Subnet:
        """A pooled subnet with probability softmax(score / temperature)."""
        if not self._scores:
            raise ValueError('cannot draw from an empty pool')
        subnets = list(self._scores)
        probs = softmax_probabilities(np.fromiter(self._scores.values(), float, len(subnets)), temperature)
        return subnets[int(rng.choice(len(subnets), p=probs))]

    def best(self, k: Optional[int] = None) -> List[Tuple[Subnet, float]]:
        """The top `k` (all by default) (subnet, score) pairs, best first."""
        ranked = sorted(self._scores.items(), key=lambda item: -item[1])
        return ranked if k is None else ranked[:k]

    def state_dict(self) -> list:
        return [[s.to_dict(), v] for s, v in self._scores.items()]

    def load_state_dict(self, entries: Sequence) -> None:
        """Restore from `state_dict()`; every score must be finite (checked before anything changes)."""
        self._scores = self.parse_state(entries)

    def parse_state(self, entries: Sequence) -> Dict[Subnet, float]:
        """{subnet: score} from `state_dict()` output, or ValueError: a malformed entry, a non-finite score, or
        more subnets than `capacity`."""
        scores = {}
        try:
            for entry in entries:
                subnet, score = entry
                subnet = Subnet.from_dict(subnet)
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                    raise ValueError(f'the score of subnet {subnet} is {score!r}; pool scores must be finite numbers')
                scores[subnet] = float(score)
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f'malformed pool state: {e}') from None
        if len(scores) > self.capacity:
            raise ValueError(f'pool state holds {len(scores)} subnets, capacity is {self.capacity}')
        return scores


class Proposal(NamedTuple):
    """One middle subnet to train: its bucket, the subnet, and whether it came from the pool."""
    bucket: int
    subnet: Subnet
    from_pool: bool


def bucket_targets(space: SearchSpace, budget_range: Optional[Tuple[float, float, float]] = None,
                   num_pools: int = 40, cost: Optional[SubnetCost] = None) -> Tuple[np.ndarray, float]:
    """(bucket centres, step): `budget_range=(lo, hi, step)` in the cost's unit (default FLOPs), both ends
    included, or `num_pools` centres spread evenly over the space's cost span. Every bucket
    [t - step/2, t + step/2) must overlap that span."""
    cost = cost or FlopsCost(space)
    f_min, f_max = cost.span
    if budget_range is None:
        if num_pools < 2:
            raise ValueError(f'num_pools must be at least 2, got {num_pools}')
        targets, step = np.linspace(f_min, f_max, num_pools), (f_max - f_min) / (num_pools - 1)
    else:
        lo, hi, step = (float(v) for v in budget_range)
        if not (0 < step and lo <= hi):
            raise ValueError(f'budget_range (lo, hi, step) needs lo <= hi and step > 0, got {budget_range}')
        targets = np.arange(lo, hi + step / 2, step)
    for t in targets:
        if t + step / 2 <= f_min or t - step / 2 > f_max:
            raise ValueError(f'the bucket {cost.format(t)} +- {cost.format(step / 2)} holds no subnet: this space '
                             f'spans {cost.format(f_min)} .. {cost.format(f_max)} ({cost.metric})')
    return targets, float(step)


@dataclass
class _Config:
    targets: List[float]
    step: float
    pool_size: int
    momentum: float
    p_random: Tuple[float, float]
    temperature: Tuple[float, float]


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
    ):
        for name, (start, end) in (('p_random', p_random), ('temperature', temperature)):
            if not (start > 0 and end > 0):
                raise ValueError(f'{name} schedule ends must be positive, got {(start, end)}')
        if not 0 < p_random[0] <= 1 or not 0 < p_random[1] <= 1:
            raise ValueError(f'p_random must lie in (0, 1], got {p_random}')
        self.cost = cost or FlopsCost(space)
        targets, step = bucket_targets(space, budget_range, num_pools, self.cost)
        self.space = space
        self.config = _Config([float(t) for t in targets], step, int(pool_size), float(momentum),
                              tuple(map(float, p_random)), tuple(map(float, temperature)))
        self.pools = [SubnetPool(pool_size, momentum) for _ in targets]
        # a bucket with fewer distinct subnets than pool_size counts as full once it holds all it can get
        self.fill_targets = [
            min(pool_size, self.cost.num_candidates(self.bucket_range(b)) or pool_size) for b in range(len(targets))]
        self.empty_buckets = self._find_empty_buckets()
        self.live_buckets = [b for b in range(len(targets)) if b not in self.empty_buckets]
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
            raise ValueError(f'no bucket holds a subnet: the {len(empty)} {self.cost.metric} buckets around '
                             f'{", ".join(self.describe_bucket(b) for b in empty)} fall into gaps of this space; '
                             f'choose other buckets (budget range or number of pools)')
        if empty:
            warnings.warn(f'{len(empty)} of {len(self.config.targets)} PSS buckets hold no subnet and are left out of '
                          f'sampling (their pools stay empty): {", ".join(self.describe_bucket(b) for b in empty)}; '
                          f'the space\'s {self.cost.metric} values have gaps there', stacklevel=3)
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
        return f'{self.cost.format(self.config.targets[bucket])} {self.cost.metric}'

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
        """Pick a bucket uniformly, then a random in-bucket subnet or one from its pool (DESIGN.md section 1).

        A pool is drawn from once it is full: `pool_size` subnets, or every distinct subnet its bucket offers.
        """
        return self.propose_in(self.live_buckets[int(self.rng.integers(len(self.live_buckets)))])

    def propose_in(self, bucket: int) -> Proposal:
        """A random subnet of `bucket`, or one drawn from its pool (see `propose`)."""
        pool = self.pools[bucket]
        if len(pool) < self.fill_targets[bucket] or self.rng.random() < self.p_random:
            return Proposal(bucket, self.cost.sample(self.rng, self.bucket_range(bucket)), False)
        return Proposal(bucket, pool.draw(self.rng, self.temperature), True)

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        self.pools[bucket].update(subnet, score)

    def fill(self) -> List[int]:
        """Entries per pool."""
        return [len(p) for p in self.pools]

    # state

    def state_dict(self) -> dict:
        """Plain JSON: configuration, progress, RNG state and every pool."""
        c = self.config
        return {
            'format': STATE_FORMAT,
            'kind': self.kind,
            'metric': self.cost.metric,
            'targets': list(c.targets), 'step': c.step, 'pool_size': c.pool_size, 'momentum': c.momentum,
            'p_random': list(c.p_random), 'temperature': list(c.temperature),
            'progress': self.progress,
            'rng': self.rng.bit_generator.state,
            'pools': [p.state_dict() for p in self.pools],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; the buckets and pool settings must match this sampler's, every pooled
        subnet must lie in the space and in its pool's bucket, and every score must be finite. Everything is
        checked first: a refused state (ValueError) leaves the sampler as it was."""
        self._apply_state(self._parse_state(state))

    def _apply_state(self, parsed: tuple) -> None:
        self.pools, self.rng, self.progress, self.config.p_random, self.config.temperature = parsed

    def _parse_state(self, state: dict) -> tuple:
        """(pools, rng, progress, p_random, temperature) from a `state_dict()`, checked; changes nothing."""
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise ValueError(f'not a PSS sampler state (expected "format": "{STATE_FORMAT}")')
        kind = state.get('kind', 'prioritized')
        if kind != self.kind:
            raise ValueError(f'sampler state was saved by a {kind!r} sampler; this run uses {self.kind!r}')
        metric = state.get('metric', 'flops')
        if metric != self.cost.metric:
            raise ValueError(f'sampler state has pools keyed by {metric!r}; this run keys them by '
                             f'{self.cost.metric!r}')
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
        try:
            if len(state['pools']) != len(c.targets):
                raise ValueError(f'{len(state["pools"])} pools for {len(c.targets)} buckets')
            pools = [SubnetPool(c.pool_size, c.momentum) for _ in c.targets]
            for bucket, (pool, entries) in enumerate(zip(pools, state['pools'])):
                try:
                    pool._scores = pool.parse_state(entries)
                    for subnet in pool._scores:
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
        return pools, rng, min(max(progress, 0.0), 1.0), p_random, temperature

    def _check_in_bucket(self, bucket: int, subnet: Subnet) -> None:
        lo, hi = self.bucket_range(bucket)
        value = self.cost.of(subnet)
        slack = 1e-9 * self.config.step  # float rounding of the bucket edges, not a wider bucket
        if not lo - slack <= value < hi + slack:
            raise ValueError(f'subnet {subnet} has {self.cost.format(value)} {self.cost.metric}, outside its bucket '
                             f'[{self.cost.format(lo)}, {self.cost.format(hi)})')


class GlobalWidthSampler(PrioritizedSubnetSampler):
    """US-Net / MutualNet style middle subnets for baselines: one global width level for every group.

    Each proposal draws a level u ~ U[0, 1] (every group at its min width + u * (max - min), rounded to its nearest
    width choice) and a uniform resolution, anywhere in the space. Training never draws from the pools; they only
    record the scores of the global subnets seen in each bucket, so finalisation works as for PSS.
    """
    kind = 'global_width'

    def propose(self) -> Proposal:
        space = self.space
        level = self.rng.random()
        widths = tuple(min(c, key=lambda w: (abs(w - (c[0] + level * (c[-1] - c[0]))), w))
                       for c in space.width_choices)
        subnet = Subnet(space.resolutions[int(self.rng.integers(len(space.resolutions)))], widths)
        return Proposal(self.bucket_of(self.cost.of(subnet)), subnet, False)

    def bucket_of(self, value: float) -> int:
        """The bucket holding cost `value`, or -1 when it lies outside every bucket."""
        first = self.config.targets[0] - self.config.step / 2
        bucket = int(math.floor((value - first) / self.config.step))
        return bucket if 0 <= bucket < len(self.pools) else -1

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        if bucket >= 0:
            super().update(bucket, subnet, score)


MULTI_STATE_FORMAT = 'timm_pss.pss_multi_sampler/1'


class MultiCostSampler:
    """Pools for several metrics at once (PSS-Net's multi-constraint variant, e.g. FLOPs and latency buckets).

    Each step picks one bucket uniformly among all metrics' buckets and lets that metric's sampler propose; bucket
    indices run over the samplers in order. Same interface as `PrioritizedSubnetSampler`.
    """

    def __init__(self, samplers: Sequence[PrioritizedSubnetSampler], seed: RngLike = 0):
        if not samplers:
            raise ValueError('MultiCostSampler needs at least one sampler')
        if any(type(s) is not PrioritizedSubnetSampler for s in samplers):
            raise ValueError('several metrics at once work with the prioritized and uniform samplers only')
        metrics = [s.cost.metric for s in samplers]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f'one sampler per metric, got {metrics}')
        self.samplers = list(samplers)
        self.space = samplers[0].space
        self.rng = np.random.default_rng(seed)
        self._owner = [(i, b) for i, s in enumerate(self.samplers) for b in range(len(s.pools))]
        self._live = [k for k, (i, b) in enumerate(self._owner) if b not in self.samplers[i].empty_buckets]

    @property
    def config(self) -> _Config:
        return self.samplers[0].config

    @property
    def pools(self) -> List[SubnetPool]:
        return [p for s in self.samplers for p in s.pools]

    @property
    def targets(self) -> List[float]:
        return [t for s in self.samplers for t in s.targets]

    @property
    def bucket_costs(self) -> List[SubnetCost]:
        return [c for s in self.samplers for c in s.bucket_costs]

    def describe_bucket(self, bucket: int) -> str:
        i, b = self._owner[bucket]
        return self.samplers[i].describe_bucket(b)

    def bucket_range(self, bucket: int) -> Tuple[float, float]:
        i, b = self._owner[bucket]
        return self.samplers[i].bucket_range(b)

    @property
    def progress(self) -> float:
        return self.samplers[0].progress

    def set_progress(self, progress: float) -> None:
        for s in self.samplers:
            s.set_progress(progress)

    @property
    def p_random(self) -> float:
        return self.samplers[0].p_random

    @property
    def temperature(self) -> float:
        return self.samplers[0].temperature

    def propose(self) -> Proposal:
        bucket = self._live[int(self.rng.integers(len(self._live)))]
        i, b = self._owner[bucket]
        proposal = self.samplers[i].propose_in(b)
        return Proposal(bucket, proposal.subnet, proposal.from_pool)

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        i, b = self._owner[bucket]
        self.samplers[i].update(b, subnet, score)

    def fill(self) -> List[int]:
        return [n for s in self.samplers for n in s.fill()]

    def state_dict(self) -> dict:
        return {'format': MULTI_STATE_FORMAT, 'rng': self.rng.bit_generator.state,
                'samplers': [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get('format') != MULTI_STATE_FORMAT:
            raise ValueError(f'not a multi-metric PSS sampler state (expected "format": "{MULTI_STATE_FORMAT}"); '
                             f'was the run trained with one metric?')
        theirs = [s.get('metric', 'flops') for s in state['samplers']]
        ours = [s.cost.metric for s in self.samplers]
        if theirs != ours:
            raise ValueError(f'sampler state has pools for metrics {theirs}; this run has {ours}')
        parsed = [s._parse_state(sub) for s, sub in zip(self.samplers, state['samplers'])]  # all checked first
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state['rng']
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'multi-metric PSS sampler state refused: bad "rng" ({e})') from None
        for s, p in zip(self.samplers, parsed):
            s._apply_state(p)
        self.rng = rng


class UniformSubnetSampler:
    """The plain sandwich rule's sampler (US-Net / BigNAS style): middle subnets uniform over the space, no pools.

    Same interface as `PrioritizedSubnetSampler`, for baselines and ablations.
    """
    format = 'timm_pss.uniform_sampler/1'

    def __init__(self, space: SearchSpace, seed: RngLike = 0):
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.progress = 0.0
        self.pools: List[SubnetPool] = []

    def set_progress(self, progress: float) -> None:
        self.progress = min(max(float(progress), 0.0), 1.0)

    def propose(self) -> Proposal:
        return Proposal(-1, self.space.sample(self.rng), False)

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        """Uniform sampling keeps no pools."""

    def fill(self) -> List[int]:
        return []

    def state_dict(self) -> dict:
        return {'format': self.format, 'progress': self.progress, 'rng': self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get('format') != self.format:
            raise ValueError(f'not a uniform sampler state (expected "format": "{self.format}")')
        self.rng.bit_generator.state = state['rng']
        self.progress = float(state['progress'])


SAMPLERS = ('prioritized', 'uniform', 'global_width')


def create_sampler(kind: str, space: SearchSpace, **kwargs) -> PrioritizedSubnetSampler:
    """A pool-keeping sampler by name, for training and ablations (same buckets, pools and finalisation).

    'prioritized': PSS. 'uniform': the paper's ablation, a random in-bucket subnet every step (p_random fixed
    at 1; pools only record scores). 'global_width': US-Net style, one global width level (see GlobalWidthSampler).
    """
    if kind == 'prioritized':
        return PrioritizedSubnetSampler(space, **kwargs)
    if kind == 'uniform':
        return PrioritizedSubnetSampler(space, **{**kwargs, 'p_random': (1.0, 1.0)})
    if kind == 'global_width':
        return GlobalWidthSampler(space, **kwargs)
    raise ValueError(f'unknown sampler {kind!r}; choose one of {", ".join(SAMPLERS)}')
