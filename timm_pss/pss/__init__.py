"""Prioritized Subnet Sampling: pools and schedules, the training step, diagnostics, and finalisation into a budget table."""
from .diagnostics import PoolMonitor, effective_members, fixed_batch, fresh_scores, pool_diagnostics, spearman
from .finalize import evaluate_accuracy, evaluate_subnet, finalize_budget_table
from .pools import (
    BUCKET_WEIGHTS, PRIORITIES, SAMPLERS, GlobalWidthSampler, MultiCostSampler, PrioritizedSubnetSampler, Proposal,
    SubnetPool, UniformSubnetSampler, USNetSampler, bucket_targets, create_sampler, draw_probabilities,
    exponential_schedule, global_width_bucket_weights, priority_values,
)
from .task import PSSTask, hard_labels, inplace_distillation_loss

__all__ = [
    'BUCKET_WEIGHTS', 'PRIORITIES', 'SAMPLERS', 'bucket_targets', 'create_sampler', 'draw_probabilities',
    'effective_members', 'evaluate_accuracy', 'evaluate_subnet', 'exponential_schedule', 'finalize_budget_table',
    'fixed_batch', 'fresh_scores', 'global_width_bucket_weights', 'GlobalWidthSampler', 'hard_labels',
    'MultiCostSampler', 'inplace_distillation_loss', 'pool_diagnostics', 'PoolMonitor', 'PrioritizedSubnetSampler',
    'priority_values', 'Proposal', 'PSSTask', 'spearman', 'SubnetPool', 'UniformSubnetSampler', 'USNetSampler',
]
