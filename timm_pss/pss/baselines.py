"""The samplers of the methods PSS is compared with: MutualNet-style global width (`GlobalWidthSampler`), US-Net
(`USNetSampler`) and uniform over the whole space (`SpaceUniformSampler`).

The first two are `PrioritizedSubnetSampler`s that never draw from their pools: the pools only record the scores
of the subnets the method trained, so finalisation into a budget table works as for PSS.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..spaces import RngLike, SearchSpace, Subnet
from .options import ABLATION_DEFAULTS, check_sampler_settings
from .pools import Proposal, SubnetPool, global_width_subnets
from .samplers import PrioritizedSubnetSampler

__all__ = ['GlobalWidthSampler', 'USNetSampler', 'SpaceUniformSampler']


class GlobalWidthSampler(PrioritizedSubnetSampler):
    """MutualNet-style middle subnets for baselines: one global width level for every group, random resolution.

    Each proposal draws a level u ~ U[0, 1] (every group at its min width + u * (max - min), rounded to its nearest
    width choice, see `global_width_subnets`) and a uniform resolution, anywhere in the space. Training never draws
    from the pools; they only record the scores of the global subnets seen in each bucket, so finalisation works
    as for PSS. The pool ablations (priority, shuffle_scores, bucket_weights) do not apply.
    """
    kind = 'global_width'

    def __init__(self, space: SearchSpace, **kwargs):
        check_sampler_settings(self.kind, **{key: kwargs[key] for key in ABLATION_DEFAULTS if key in kwargs})
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


class SpaceUniformSampler:
    """The plain sandwich rule's sampler (US-Net / BigNAS style): middle subnets uniform over the whole space, no pools.

    A `Sampler` for baselines and ablations (training-step cost); `PSSTask` runs it, finalisation needs pools.
    """
    format = 'timm_pss.uniform_sampler/1'
    kind = 'space_uniform'

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

    def describe_bucket(self, bucket: int) -> str:
        return 'the whole space (no buckets)'

    def best_subnet(self, budget: float) -> Optional[Subnet]:
        """None: uniform sampling keeps no pools."""
        return None

    def state_dict(self) -> dict:
        return {'format': self.format, 'progress': self.progress, 'rng': self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get('format') != self.format:
            raise ValueError(f'not a uniform sampler state (expected "format": "{self.format}")')
        self.rng.bit_generator.state = state['rng']
        self.progress = float(state['progress'])

