"""Prioritized Subnet Sampling: pools and schedules, the training step, and finalisation into a budget table."""
from .finalize import evaluate_accuracy, evaluate_subnet, finalize_budget_table
from .pools import (
    PrioritizedSubnetSampler, Proposal, SubnetPool, UniformSubnetSampler, bucket_targets, exponential_schedule,
)
from .task import PSSTask, hard_labels, inplace_distillation_loss

__all__ = [
    'bucket_targets', 'evaluate_accuracy', 'evaluate_subnet', 'exponential_schedule', 'finalize_budget_table',
    'hard_labels', 'inplace_distillation_loss', 'PrioritizedSubnetSampler', 'Proposal', 'PSSTask', 'SubnetPool',
    'UniformSubnetSampler',
]
