"""What a subnet costs, by cost kind: FLOPs (counted exactly by the space) or latency (predicted by a lookup table).

PSS keeps one pool per budget bucket of a cost kind, so everything that buckets subnets (pool targets, in-bucket
sampling, "is this pool full") goes through a `SubnetCost`: `FlopsCost` for MACs, `LatencyCost` for the
milliseconds a `timm_pss.latency.LatencyTable` predicts on its device. Both evaluate many subnets at once.
"""
from __future__ import annotations

from typing import Optional, Protocol, Tuple

import numpy as np

from .units import format_flops
from .range_sampler import RangeSampler, ordered_range
from .spaces import RngLike, SearchSpace, Subnet, SubnetBatch

__all__ = ['SubnetCost', 'FlopsCost', 'LatencyCost', 'COST_KINDS']

COST_KINDS = ('flops', 'latency')  # what a pool's bucket can be measured in


class LatencyPredictor(Protocol):
    """What `LatencyCost` needs of a latency table (`timm_pss.latency.LatencyTable`)."""

    def predict_many(self, resolutions, widths=None) -> np.ndarray: ...


class SubnetCost:
    """A cost over a space's subnets; `kind` is 'flops' or 'latency' (a measured accuracy is a metric, not a cost)."""
    kind: str

    def __init__(self, space: SearchSpace):
        self.space = space

    def many(self, batch: SubnetBatch) -> np.ndarray:
        raise NotImplementedError

    def of(self, subnet: Subnet) -> float:
        return float(self.many(SubnetBatch.from_subnets([self.space.validate(subnet)]))[0])

    @property
    def span(self) -> Tuple[float, float]:
        """(lowest, highest) cost of any subnet of the space."""
        raise NotImplementedError

    def sample_many(self, n: int, rng: RngLike = None, value_range: Optional[Tuple[float, float]] = None
                    ) -> SubnetBatch:
        raise NotImplementedError

    def sample(self, rng: RngLike = None, value_range: Optional[Tuple[float, float]] = None) -> Subnet:
        """One random subnet whose cost lies in [lo, hi) (`value_range`), or anywhere."""
        return self.sample_many(1, rng, value_range).subnet(0)

    def num_candidates(self, value_range: Tuple[float, float]) -> int:
        raise NotImplementedError

    def format(self, value: float) -> str:
        raise NotImplementedError


class FlopsCost(SubnetCost):
    """MACs of the conv, linear and global-pool layers (the space's exact count)."""
    kind = 'flops'

    def many(self, batch: SubnetBatch) -> np.ndarray:
        return self.space.flops_many(batch).astype(np.float64)

    @property
    def span(self) -> Tuple[float, float]:
        lo, hi = self.space.flops_span
        return float(lo), float(hi)

    def sample_many(self, n, rng=None, value_range=None):
        return self.space.sample_many(n, rng=rng, flops_range=value_range)

    def num_candidates(self, value_range):
        return self.space.num_candidates(value_range)

    def format(self, value: float) -> str:
        return format_flops(value)


class LatencyCost(SubnetCost):
    """Predicted latency in ms on the table's device; in-bucket draws come from the space's candidate bank
    ordered by predicted latency (built once), or a random walk where the bank has no member in range.

    The table must be this space's (`LatencyTable.check_model`); it is not checked here.
    """
    kind = 'latency'

    def __init__(self, space: SearchSpace, table: LatencyPredictor):
        super().__init__(space)
        self.table = table
        self._ranked_cache: Optional[RangeSampler] = None

    def many(self, batch: SubnetBatch) -> np.ndarray:
        return np.asarray(self.table.predict_many(batch), dtype=np.float64)

    @property
    def _ranked(self) -> RangeSampler:
        """The space's candidate bank ranked by predicted latency (predicted once)."""
        if self._ranked_cache is None:
            self._ranked_cache = self.space.ranked_candidates(self.many)
        return self._ranked_cache

    @property
    def span(self) -> Tuple[float, float]:
        return self._ranked.span

    def sample_many(self, n, rng=None, value_range=None):
        rng = np.random.default_rng(rng)
        if value_range is None:
            return self.space.sample_many(n, rng=rng)
        lo, hi = (float(v) for v in value_range)
        span = self.span
        if not lo < hi or hi <= span[0] or lo > span[1]:
            raise ValueError(f'latency range [{lo:.4g}, {hi:.4g}) ms holds no subnet: predicted latencies of this '
                             f'space span {span[0]:.4g} .. {span[1]:.4g} ms')
        return self.space.sample_in_range(n, rng, (lo, hi), cost=self.many, ranked=self._ranked, unit='predicted ms')

    def num_candidates(self, value_range):
        return self._ranked.count(*ordered_range(value_range, 'value_range'))

    def format(self, value: float) -> str:
        return f'{value:.3g}ms'
