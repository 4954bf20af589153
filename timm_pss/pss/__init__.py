"""Prioritized Subnet Sampling: pools, samplers and schedules, the training step, diagnostics, and finalisation into a budget table."""
from .diagnostics import PoolMonitor, effective_members, fixed_batch, fresh_scores, pool_diagnostics, spearman
from .finalize import evaluate_accuracy, evaluate_subnet, finalize_budget_table
from .factory import SAMPLERS, build_sampler, create_sampler
from .multi_cost import MultiCostSampler
from .options import add_pss_args, check_pss_args, check_sampler_settings, sampler_kwargs
from .pools import (
    BUCKET_WEIGHTS, PRIORITIES, Proposal, SubnetPool, bucket_targets, draw_probabilities, exponential_schedule,
    global_width_bucket_weights, priority_values,
)
from .baselines import GlobalWidthSampler, SpaceUniformSampler, USNetSampler
from .samplers import InBucketUniformSampler, PrioritizedSubnetSampler, Sampler
from .task import (
    PSSTask, ResumablePSSTask, TrainingDiverged, capture_rng_state, check_pools_identical, hard_labels,
    inplace_distillation_loss,
    restore_rng_state,
)

__all__ = [
    'TrainingDiverged', 'add_pss_args', 'check_pss_args', 'check_sampler_settings',
    'BUCKET_WEIGHTS', 'PRIORITIES', 'SAMPLERS', 'bucket_targets', 'build_sampler', 'create_sampler',
    'draw_probabilities', 'InBucketUniformSampler', 'Sampler', 'sampler_kwargs', 'SpaceUniformSampler',
    'effective_members', 'evaluate_accuracy', 'evaluate_subnet', 'exponential_schedule', 'finalize_budget_table',
    'fixed_batch', 'fresh_scores', 'global_width_bucket_weights', 'GlobalWidthSampler', 'hard_labels',
    'MultiCostSampler', 'inplace_distillation_loss', 'pool_diagnostics', 'PoolMonitor', 'PrioritizedSubnetSampler',
    'priority_values', 'Proposal', 'PSSTask', 'ResumablePSSTask', 'capture_rng_state', 'check_pools_identical',
    'restore_rng_state', 'spearman', 'SubnetPool', 'USNetSampler',
]
