"""Prioritized subnet pools: one pool of well-scored subnets per FLOPs bucket, drawn by softmax(score / T).

Each training step PSS picks a bucket uniformly; with probability `p_random` (or while the bucket's pool is not yet
full) it trains a random subnet of that bucket, otherwise one drawn from the pool. The trained subnet's score
(minus its cross-entropy on the batch) goes back into the pool: a known subnet's score becomes an exponential
moving average, and a pool over capacity evicts its lowest score. `p_random` and the temperature T decay
exponentially over training, moving the mix from exploration to the pools.

Ablations (each off by default, the default is the reference rule): `priority` draws from softmax over
z-scored or ranked scores instead of raw ones (scale-free, so T means the same at any loss level),
`shuffle_scores` draws with the scores permuted among a pool's members (focus without quality), and
`bucket_weights='global_width'` picks buckets as often as the MutualNet-style global-width sampler lands in them.

All state is plain JSON (no pickle, no eval): pools, schedules, progress and the sampler's own RNG.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..costs import FlopsCost, SubnetCost
from ..spaces import RngLike, SearchSpace, Subnet, SubnetBatch

__all__ = ['exponential_schedule', 'SubnetPool', 'Proposal', 'PrioritizedSubnetSampler', 'GlobalWidthSampler',
           'USNetSampler', 'MultiCostSampler', 'UniformSubnetSampler', 'bucket_targets', 'SAMPLERS', 'create_sampler',
           'PRIORITIES', 'BUCKET_WEIGHTS', 'average_ranks', 'priority_values', 'draw_probabilities',
           'global_width_subnets', 'global_width_bucket_weights']

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


PRIORITIES = ('raw', 'zscore', 'rank')
BUCKET_WEIGHTS = ('uniform', 'global_width')


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` (1: the smallest), ties sharing the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind='stable')
    sorted_values = values[order]
    # runs of equal values: each gets the mean of the positions it spans
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def priority_values(scores: np.ndarray, priority: str = 'raw') -> np.ndarray:
    """What the softmax sees: the raw scores, their z-scores within the pool (all 0 when the scores are equal),
    or their average ranks scaled to [0, 1] (worst 0, best 1). z-scores and ranks do not change when the scores
    shift or scale, so a temperature means the same at any loss level."""
    scores = np.asarray(scores, dtype=np.float64)
    if priority == 'raw':
        return scores
    if priority == 'zscore':
        std = scores.std()
        return np.zeros_like(scores) if std == 0 else (scores - scores.mean()) / std
    if priority == 'rank':
        return np.zeros_like(scores) if len(scores) < 2 else (average_ranks(scores) - 1) / (len(scores) - 1)
    raise ValueError(f'unknown priority {priority!r}; choose one of {", ".join(PRIORITIES)}')


def draw_probabilities(scores: np.ndarray, temperature: float, priority: str = 'raw',
                       permutation: Optional[np.ndarray] = None) -> np.ndarray:
    """Each member's draw probability: softmax(priority_values(scores) / temperature); with `permutation`, the
    members get the values of the members it names (scores shuffled among members)."""
    values = priority_values(scores, priority)
    return softmax_probabilities(values if permutation is None else values[permutation], temperature)


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

    def members(self) -> List[Subnet]:
        """The pooled subnets, oldest first (the order of `scores()`)."""
        return list(self._scores)

    def scores(self) -> np.ndarray:
        """The members' scores, in `members()` order."""
        return np.fromiter(self._scores.values(), float, len(self._scores))

    def replace_scores(self, scores: Sequence[float]) -> None:
        """Overwrite every member's score (in `members()` order), e.g. with fresh measurements; nothing blends."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(self._scores),):
            raise ValueError(f'need one score per pool member ({len(self._scores)}), got shape {scores.shape}')
        if not np.isfinite(scores).all():
            raise ValueError(f'pool scores must be finite, got {scores.tolist()}')
        self._scores = dict(zip(self._scores, scores.tolist()))

    def draw_probabilities(self, temperature: float, priority: str = 'raw',
                           permutation: Optional[np.ndarray] = None) -> np.ndarray:
        """Each member's probability of being drawn (see `draw_probabilities`), in `members()` order."""
        if not self._scores:
            raise ValueError('an empty pool has no draw probabilities')
        return draw_probabilities(self.scores(), temperature, priority, permutation)

    def draw(self, rng: np.random.Generator, temperature: float, priority: str = 'raw',
             shuffle_scores: bool = False) -> Subnet:
        """A pooled subnet with probability softmax(priority(score) / temperature); with `shuffle_scores` the
        scores are first permuted among the members with `rng` (a control: as focused, but blind to quality)."""
        if not self._scores:
            raise ValueError('cannot draw from an empty pool')
        subnets = list(self._scores)
        permutation = rng.permutation(len(subnets)) if shuffle_scores else None
        probs = self.draw_probabilities(temperature, priority, permutation)
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


def global_width_subnets(space: SearchSpace, levels: np.ndarray, resolutions: np.ndarray) -> SubnetBatch:
    """Subnets with one global width level each: every group at the width choice nearest to
    min + level * (max - min) of its choices (ties: the narrower), at the given resolutions. Vectorised."""
    levels = np.asarray(levels, dtype=np.float64)
    widths = np.empty((len(levels), space.num_groups), dtype=np.int64)
    for g, choices in enumerate(space.width_choices):
        c = np.asarray(choices, dtype=np.int64)
        wanted = c[0] + levels * (c[-1] - c[0])
        upper = np.clip(np.searchsorted(c, wanted), 1, len(c) - 1) if len(c) > 1 else np.zeros(len(levels), int)
        lower = np.maximum(upper - 1, 0)
        take_lower = (wanted - c[lower]) <= (c[upper] - wanted)  # ties: the narrower
        widths[:, g] = np.where(take_lower, c[lower], c[upper])
    return SubnetBatch(np.asarray(resolutions, dtype=np.int64), widths)


def global_width_bucket_weights(space: SearchSpace, targets: Sequence[float], step: float,
                                cost: Optional[SubnetCost] = None, num_samples: int = 200_000,
                                seed: int = 0) -> np.ndarray:
    """How often the MutualNet-style global-width sampler (uniform level, uniform resolution) lands in each
    bucket [t - step/2, t + step/2): a histogram of `num_samples` such subnets' costs, normalised over the
    buckets (subnets outside every bucket are dropped). Deterministic given `seed`."""
    cost = cost or FlopsCost(space)
    rng = np.random.default_rng(seed)
    levels = rng.random(num_samples)
    resolutions = np.asarray(space.resolutions)[rng.integers(len(space.resolutions), size=num_samples)]
    values = cost.many(global_width_subnets(space, levels, resolutions))
    buckets = np.floor((values - (targets[0] - step / 2)) / step).astype(np.int64)
    counts = np.bincount(buckets[(buckets >= 0) & (buckets < len(targets))], minlength=len(targets))
    if counts.sum() == 0:
        raise ValueError('no global-width subnet falls in any bucket; bucket weights are undefined')
    return counts / counts.sum()


@dataclass
class _Config:
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
        self.config = _Config([float(t) for t in targets], step, int(pool_size), float(momentum),
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
        if self.bucket_probs is not None:
            return self.bucket_probs
        probs = np.zeros(len(self.pools))
        probs[self.live_buckets] = 1.0 / len(self.live_buckets)
        return probs

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
        self._apply_state(self._parse_state(state))

    def _apply_state(self, parsed: tuple) -> None:
        bucket_probs = parsed[-1]
        self.pools, self.rng, self.progress, self.config.p_random, self.config.temperature = parsed[:-1]
        if bucket_probs is not None:
            self.bucket_probs = bucket_probs

    def _parse_state(self, state: dict) -> tuple:
        """(pools, rng, progress, p_random, temperature, bucket_probs) from a `state_dict()`, checked; changes
        nothing."""
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
        return pools, rng, min(max(progress, 0.0), 1.0), p_random, temperature, bucket_probs

    def _check_in_bucket(self, bucket: int, subnet: Subnet) -> None:
        lo, hi = self.bucket_range(bucket)
        value = self.cost.of(subnet)
        slack = 1e-9 * self.config.step  # float rounding of the bucket edges, not a wider bucket
        if not lo - slack <= value < hi + slack:
            raise ValueError(f'subnet {subnet} has {self.cost.format(value)} {self.cost.metric}, outside its bucket '
                             f'[{self.cost.format(lo)}, {self.cost.format(hi)})')


class GlobalWidthSampler(PrioritizedSubnetSampler):
    """MutualNet-style middle subnets for baselines: one global width level for every group, random resolution.

    Each proposal draws a level u ~ U[0, 1] (every group at its min width + u * (max - min), rounded to its nearest
    width choice, see `global_width_subnets`) and a uniform resolution, anywhere in the space. Training never draws
    from the pools; they only record the scores of the global subnets seen in each bucket, so finalisation works
    as for PSS. The pool ablations (priority, shuffle_scores, bucket_weights) do not apply.
    """
    kind = 'global_width'

    def __init__(self, space: SearchSpace, **kwargs):
        defaults = dict(priority='raw', shuffle_scores=False, bucket_weights='uniform')
        ablations = {k: kwargs[k] for k in defaults if k in kwargs and kwargs[k] != defaults[k]}
        if ablations:
            raise ValueError(f'the {self.kind} sampler draws no buckets and nothing from its pools, so {ablations} '
                             f'cannot apply; use them with the prioritized or uniform sampler')
        super().__init__(space, **kwargs)

    def propose(self) -> Proposal:
        space = self.space
        level = self.rng.random()
        resolution = space.resolutions[int(self.rng.integers(len(space.resolutions)))]
        subnet = global_width_subnets(space, [level], [resolution]).subnet(0)
        return Proposal(self.bucket_of(self.cost.of(subnet)), subnet, False)

    def bucket_of(self, value: float) -> int:
        """The bucket holding cost `value`, or -1 when it lies outside every bucket."""
        first = self.config.targets[0] - self.config.step / 2
        bucket = int(math.floor((value - first) / self.config.step))
        return bucket if 0 <= bucket < len(self.pools) else -1

    def update(self, bucket: int, subnet: Subnet, score: float) -> None:
        if bucket >= 0:
            super().update(bucket, subnet, score)


class USNetSampler(GlobalWidthSampler):
    """US-Net baseline: one global width level for every group at the fixed max resolution (US-Net trains width
    only); the sandwich's smallest subnet is the min widths at that resolution too. Pools record scores as for
    `GlobalWidthSampler`."""
    kind = 'usnet'

    def propose(self) -> Proposal:
        subnet = global_width_subnets(self.space, [self.rng.random()], [max(self.space.resolutions)]).subnet(0)
        return Proposal(self.bucket_of(self.cost.of(subnet)), subnet, False)

    def min_subnet(self) -> Subnet:
        return Subnet(max(self.space.resolutions), self.space.min_subnet().widths)


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
    def bucket_probs(self) -> Optional[np.ndarray]:
        """None (uniform over all buckets) unless a metric's sampler weighs its buckets; then each metric's buckets
        share 1 / (number of metrics) by that metric's weights (uniform for a sampler without)."""
        if all(s.bucket_probs is None for s in self.samplers):
            return None
        return np.concatenate([s.bucket_distribution() for s in self.samplers]) / len(self.samplers)

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
        bucket_probs = self.bucket_probs
        if bucket_probs is None:
            bucket = self._live[int(self.rng.integers(len(self._live)))]
        else:
            bucket = int(self.rng.choice(len(self._owner), p=bucket_probs))
        i, b = self._owner[bucket]
        proposal = self.samplers[i].propose_in(b)
        return Proposal(bucket, proposal.subnet, proposal.from_pool)

    def bucket_distribution(self) -> np.ndarray:
        """The probability of each bucket (over all metrics) being drawn by `propose` (empty buckets: 0)."""
        if self.bucket_probs is not None:
            return self.bucket_probs
        probs = np.zeros(len(self._owner))
        probs[self._live] = 1.0 / len(self._live)
        return probs

    def draw_probabilities(self, bucket: int) -> np.ndarray:
        i, b = self._owner[bucket]
        return self.samplers[i].draw_probabilities(b)

    def min_subnet(self) -> Subnet:
        return self.space.min_subnet()

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

    def min_subnet(self) -> Subnet:
        return self.space.min_subnet()

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


SAMPLERS = ('prioritized', 'uniform', 'global_width', 'usnet')


def create_sampler(kind: str, space: SearchSpace, **kwargs) -> PrioritizedSubnetSampler:
    """A pool-keeping sampler by name, for training and ablations (same buckets, pools and finalisation).

    'prioritized': PSS. 'uniform': the paper's ablation, a random in-bucket subnet every step (p_random fixed
    at 1; pools only record scores). 'global_width': MutualNet style, one global width level and a random
    resolution (see GlobalWidthSampler). 'usnet': US-Net, one global width level at the max resolution.
    """
    if kind == 'prioritized':
        return PrioritizedSubnetSampler(space, **kwargs)
    if kind == 'uniform':
        return PrioritizedSubnetSampler(space, **{**kwargs, 'p_random': (1.0, 1.0)})
    if kind == 'global_width':
        return GlobalWidthSampler(space, **kwargs)
    if kind == 'usnet':
        return USNetSampler(space, **kwargs)
    raise ValueError(f'unknown sampler {kind!r}; choose one of {", ".join(SAMPLERS)}')
