"""Prioritized Subnet Sampling: pools and schedules, the training step, and finalisation into a budget table."""
from .finalize import evaluate_accuracy, evaluate_subnet, finalize_budget_table
from .pools import (
    SAMPLERS, GlobalWidthSampler, MultiCostSampler, PrioritizedSubnetSampler, Proposal, SubnetPool, UniformSubnetSampler,
    bucket_targets, create_sampler, exponential_schedule,
)
from .task import PSSTask, hard_labels, inplace_distillation_loss

__all__ = [
    'SAMPLERS', 'bucket_targets', 'create_sampler', 'evaluate_accuracy', 'evaluate_subnet', 'exponential_schedule', 'finalize_budget_table',
    'GlobalWidthSampler', 'hard_labels', 'MultiCostSampler', 'inplace_distillation_loss', 'PrioritizedSubnetSampler', 'Proposal', 'PSSTask', 'SubnetPool',
    'UniformSubnetSampler',
]
