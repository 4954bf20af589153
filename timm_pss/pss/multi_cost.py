"""PSS under several costs at once (PSS-Net's multi-constraint variant): one sampler per cost, e.g. FLOPs and
latency buckets, behind one `Sampler`."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..costs import SubnetCost
from ..spaces import RngLike, Subnet
from .options import MULTI_COST_SAMPLERS, check_sampler_settings
from .pools import Proposal, SubnetPool, bucket_distribution
from .samplers import PrioritizedSubnetSampler, SamplerConfig

__all__ = ['MultiCostSampler', 'MULTI_STATE_FORMAT']

MULTI_STATE_FORMAT = 'timm_pss.pss_multi_sampler/1'


class MultiCostSampler:
    """Pools for several costs at once (PSS-Net's multi-constraint variant, e.g. FLOPs and latency buckets).

    Each step picks one bucket uniformly among all costs' buckets and lets that cost's sampler propose; bucket
    indices run over the samplers in order. Same interface as `PrioritizedSubnetSampler`.
    """

    kind = 'multi_cost'

    def __init__(self, samplers: Sequence[PrioritizedSubnetSampler], seed: RngLike = 0):
        if not samplers:
            raise ValueError('MultiCostSampler needs at least one sampler')
        # it draws the buckets itself and lets a sampler propose in one: samplers that draw buckets and pool members
        if not all(isinstance(s, PrioritizedSubnetSampler) and s.kind in MULTI_COST_SAMPLERS for s in samplers):
            raise ValueError('several cost kinds at once work with the prioritized and uniform samplers only')
        check_sampler_settings(samplers[0].kind, [s.cost.kind for s in samplers], has_latency_table=True)
        self.samplers = list(samplers)
        self.space = samplers[0].space
        self.rng = np.random.default_rng(seed)
        self._owner = [(i, b) for i, s in enumerate(self.samplers) for b in range(len(s.pools))]
        self._live = [k for k, (i, b) in enumerate(self._owner) if b not in self.samplers[i].empty_buckets]

    @property
    def bucket_probs(self) -> Optional[np.ndarray]:
        """None (uniform over all buckets) unless a cost's sampler weighs its buckets; then each cost's buckets
        share 1 / (number of costs) by that cost's weights (uniform for a sampler without)."""
        if all(s.bucket_probs is None for s in self.samplers):
            return None
        return np.concatenate([s.bucket_distribution() for s in self.samplers]) / len(self.samplers)

    @property
    def config(self) -> SamplerConfig:
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
        """The probability of each bucket (over all costs) being drawn by `propose` (empty buckets: 0)."""
        return bucket_distribution(len(self._owner), self._live, self.bucket_probs)

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

    def best_subnet(self, budget: float) -> Optional[Subnet]:
        """The FLOPs-keyed sampler's best subnet for `budget` FLOPs (see `PrioritizedSubnetSampler`), or None."""
        for s in self.samplers:
            if s.cost.kind == 'flops':
                return s.best_subnet(budget)
        return None

    def state_dict(self) -> dict:
        return {'format': MULTI_STATE_FORMAT, 'rng': self.rng.bit_generator.state,
                'samplers': [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get('format') != MULTI_STATE_FORMAT:
            raise ValueError(f'not a multi-cost PSS sampler state (expected "format": "{MULTI_STATE_FORMAT}"); '
                             f'was the run trained with one cost kind?')
        theirs = [s.get('cost_kind', 'flops') for s in state['samplers']]
        ours = [s.cost.kind for s in self.samplers]
        if theirs != ours:
            raise ValueError(f'sampler state has pools for cost kinds {theirs}; this run has {ours}')
        parsed = [s.parse_state(sub) for s, sub in zip(self.samplers, state['samplers'])]  # all checked first
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state['rng']
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'multi-cost PSS sampler state refused: bad "rng" ({e})') from None
        for s, p in zip(self.samplers, parsed):
            s.apply_state(p)
        self.rng = rng
