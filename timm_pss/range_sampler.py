"""In-range sampling over a fixed set of candidates ranked by a cost (FLOPs, predicted latency, any metric).

A pool's in-bucket draw must be uniform among the candidate subnets whose cost lies in [lo, hi). Sorting the
costs once turns every range into two binary searches and every draw into one random integer per subnet, so
millions of draws cost what one does.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

__all__ = ['RangeSampler', 'ordered_range']


def ordered_range(value_range, what: str) -> Tuple[float, float]:
    """(lo, hi) as floats with lo <= hi (neither NaN), else a ValueError naming `what`."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f'{what} must be two numbers (lo, hi), got {value_range!r} ({e})') from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f'{what} must be two numbers lo <= hi, got {value_range!r}')
    return lo, hi


class RangeSampler:
    """Candidates ranked by cost, for uniform draws among those whose cost lies in [lo, hi).

    `costs` has one value per candidate (any order, at least one); draws return candidate positions, i.e.
    indices into `costs` as given, so the caller keeps the candidates in whatever form it holds them.
    """

    def __init__(self, costs: np.ndarray):
        costs = np.asarray(costs)
        if costs.ndim != 1 or costs.size == 0:
            raise ValueError(f'costs must be a non-empty 1-d array, one per candidate; got shape {costs.shape}')
        if np.issubdtype(costs.dtype, np.floating) and np.isnan(costs).any():
            raise ValueError('costs must not be NaN: a NaN cost has no place in the ranking')
        self.order = np.argsort(costs, kind='stable')
        self.sorted_costs = costs[self.order]

    def __len__(self) -> int:
        return int(self.sorted_costs.size)

    @property
    def span(self) -> Tuple[float, float]:
        """(lowest, highest) cost of any candidate."""
        return float(self.sorted_costs[0]), float(self.sorted_costs[-1])

    def _bounds(self, lo: float, hi: float) -> Tuple[int, int]:
        first, stop = np.searchsorted(self.sorted_costs, [lo, hi], side='left')
        return int(first), int(stop)

    def count(self, lo: float, hi: float) -> int:
        """How many candidates cost at least `lo` and less than `hi` (0 for an empty or reversed range)."""
        first, stop = self._bounds(lo, hi)
        return max(0, stop - first)

    def draw(self, n: int, rng: np.random.Generator, lo: float, hi: float) -> Optional[np.ndarray]:
        """Positions of `n` candidates drawn uniformly, with replacement, among those with cost in [lo, hi);
        None when no candidate lies there."""
        first, stop = self._bounds(lo, hi)
        if stop <= first:
            return None
        return self.order[rng.integers(first, stop, size=n)]
