"""From trained pools to the budget table: per pool, the best of its top-k subnets on held-out training data.

Choosing subnets by their validation accuracy would be selection on the test set; the candidates are compared on
a held-out slice of the training data instead, each with BN statistics calibrated on training batches first.
The max and min subnets are always added. Runs on a model and a sampler restored from any checkpoint.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn
from timm.utils import accuracy

from ..budget_table import BudgetTable
from ..calibration import calibrate_bn, fill_budget_table
from ..spaces import Subnet
from ..supernet import find_supernet, quiet_forwards
from .samplers import PrioritizedSubnetSampler

__all__ = ['evaluate_accuracy', 'evaluate_subnet', 'finalize_budget_table']

_logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable, num_batches: Optional[int] = None) -> Tuple[float, float]:
    """(top-1, top-5) in percent of `model` in eval mode over `loader` of (input, target) batches."""
    supernet = find_supernet(model)
    was_training = supernet.training
    supernet.eval()
    device = next(supernet.parameters()).device
    correct1 = correct5 = total = 0.0
    try:
        for i, (images, target) in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            with quiet_forwards(supernet, statistics=False):  # images of the loader's size, resized by the model
                output = supernet(images.to(device))
            target = target.to(device)
            k = min(5, output.shape[-1])
            top1, top5 = accuracy(output, target, topk=(1, k))
            correct1 += top1.item() * target.shape[0]
            correct5 += top5.item() * target.shape[0]
            total += target.shape[0]
    finally:
        supernet.train(was_training)
    if total == 0:
        raise ValueError('the evaluation loader gave no samples')
    return correct1 / total, correct5 / total


def evaluate_subnet(model: nn.Module, subnet: Subnet, calib_loader: Iterable, eval_loader: Iterable,
                    calib_batches: int = 8, eval_batches: Optional[int] = None) -> Tuple[float, float]:
    """(top-1, top-5) of `subnet`, made active with BN calibrated on `calib_loader` first."""
    supernet = find_supernet(model)
    supernet.set_subnet(subnet)
    calibrate_bn(supernet, calib_loader, num_batches=calib_batches)
    return evaluate_accuracy(supernet, eval_loader, eval_batches)


def finalize_budget_table(
        model: nn.Module,
        sampler: PrioritizedSubnetSampler,
        calib_loader: Iterable,
        heldout_loader: Iterable,
        top_k: int = 3,
        calib_batches: int = 8,
        heldout_batches: Optional[int] = None,
) -> BudgetTable:
    """Make the model's budget table from `sampler`'s pools.

    Per non-empty pool, its `top_k` subnets by score are calibrated on `calib_loader` and compared by top-1 on
    `heldout_loader` (ties: the higher score); the winner, plus the max and min subnets, are calibrated and stored
    with metrics `score` (pool score), `heldout_top1` and `heldout_top5`. Returns the table.
    """
    if top_k < 1:
        raise ValueError(f'top_k must be at least 1, got {top_k}')
    supernet = find_supernet(model)
    space = supernet.space
    chosen: List[Subnet] = []
    metrics: List[dict] = []

    def measure(subnet: Subnet) -> Tuple[float, float]:
        return evaluate_subnet(supernet, subnet, calib_loader, heldout_loader, calib_batches, heldout_batches)

    start = time.time()
    for bucket, pool in enumerate(sampler.pools):
        candidates = pool.best(top_k)
        if not candidates:
            continue
        results = [(measure(subnet), score, subnet) for subnet, score in candidates]
        (top1, top5), score, subnet = max(results, key=lambda r: (r[0][0], r[1]))
        if subnet in chosen:  # pools of several costs can pick the same subnet: one entry serves both
            continue
        chosen.append(subnet)
        metrics.append({'score': score, 'heldout_top1': top1, 'heldout_top5': top5})
        _logger.info(f'pool {bucket + 1}/{len(sampler.pools)} ({sampler.describe_bucket(bucket)}): chose {subnet} '
                     f'of {len(results)}, held-out top-1 {top1:.2f}  [{time.time() - start:.0f}s so far]')
    for subnet in (space.max_subnet(), space.min_subnet()):
        if subnet in chosen:
            continue
        top1, top5 = measure(subnet)
        chosen.append(subnet)
        metrics.append({'heldout_top1': top1, 'heldout_top5': top5})
    return fill_budget_table(supernet, chosen, calib_loader, num_batches=calib_batches, metrics=metrics)
