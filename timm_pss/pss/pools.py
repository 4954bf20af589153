"""Subnet pools and their buckets: one pool of well-scored subnets per budget bucket.

A pool keeps at most `capacity` subnets with scores (minus a subnet's cross-entropy on a training batch): a known
subnet's score becomes an exponential moving average, and a pool over capacity evicts its lowest score. A draw
takes softmax(priority(score) / T) over the members, where the priority is the raw score (the reference rule),
its z-score or its rank within the pool. Buckets are evenly spaced cost ranges (`bucket_targets`); the
MutualNet-style global-width subnets and how often they land in each bucket are here too, since the
`global_width` bucket weights and sampler both use them. The samplers that decide what to train are in
`timm_pss.pss.samplers`.

All state is plain JSON (no pickle, no eval).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..costs import FlopsCost, SubnetCost
from ..spaces import SearchSpace, Subnet, SubnetBatch

__all__ = ['exponential_schedule', 'softmax_probabilities', 'SubnetPool', 'Proposal', 'bucket_targets', 'PRIORITIES',
           'BUCKET_WEIGHTS', 'average_ranks', 'priority_values', 'draw_probabilities', 'global_width_subnets',
           'global_width_bucket_weights', 'bucket_distribution']


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



def bucket_distribution(num_buckets: int, live_buckets: Sequence[int],
                        bucket_probs: Optional[np.ndarray] = None) -> np.ndarray:
    """Each bucket's probability of being drawn: `bucket_probs` when given, else uniform over `live_buckets` (the
    others, empty buckets, 0)."""
    if bucket_probs is not None:
        return bucket_probs
    probs = np.zeros(num_buckets)
    probs[list(live_buckets)] = 1.0 / len(live_buckets)
    return probs

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
        self.apply_state(self.parse_state(entries))

    def apply_state(self, scores: Dict[Subnet, float]) -> None:
        """Take the {subnet: score} members `parse_state` checked, in place of the current ones."""
        self._scores = dict(scores)

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
                             f'spans {cost.format(f_min)} .. {cost.format(f_max)} ({cost.kind})')
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
