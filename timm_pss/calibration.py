"""BatchNorm calibration: exact running statistics for a subnet, and filling the budget table with them.

Subnets share BN layers, so the running statistics gathered in training fit none of them. Calibration re-estimates
them for one subnet as the cumulative average over a few batches (momentum=None), with every other layer in eval
mode; `fill_budget_table` does that per entry and stores the results in the model's budget table.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .budget_table import BudgetEntry, BudgetTable
from .slimmable import SlimBatchNormBase
from .spaces import Subnet
from .supernet import SubnetSwitch, find_supernet, quiet_forwards

__all__ = ['calibrate_bn', 'fill_budget_table']


def _inputs(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate_bn(model: nn.Module, loader: Iterable, num_batches: int = 8) -> SubnetSwitch:
    """Recompute BN running statistics of the active subnet as the exact average over `num_batches` batches.

    `loader` yields input tensors or (input, target) pairs; inputs of any size are resized by the model. The
    shared running statistics then belong to the active subnet (any active budget entry is released, and
    `shared_stats_subnet` says so: eval-mode forwards of this subnet then give no statistics warning).
    Validated before applied: a loader that gives no batch, or statistics that come out non-finite (e.g. images
    holding inf or NaN), raise ValueError and leave every statistic as it was. Returns the supernet.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f'num_batches must be a positive integer, got {num_batches!r}')
    supernet = find_supernet(model)
    bns = [m for m in supernet.modules() if isinstance(m, _BatchNorm)]
    saved = [(m, m.momentum, m.training) for m in bns]
    before = [{k: b.clone() for k, b in m._buffers.items() if b is not None and not k.startswith('budget_')}
              for m in bns]
    was_training, shared_subnet, index = supernet.training, supernet.shared_stats_subnet, supernet.active_budget_index
    device = next(supernet.parameters()).device
    supernet.activate(supernet.active_subnet)
    supernet.eval()
    done = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        seen = 0
        with quiet_forwards(supernet):
            for batch in loader:
                supernet(_inputs(batch).to(device, non_blocking=True))
                seen += 1
                if seen >= num_batches:
                    break
        if seen == 0:
            raise ValueError('the calibration loader gave no batches')
        bad = next((name for name, m in supernet.named_modules() if isinstance(m, _BatchNorm)
                    and m.running_mean is not None and not (torch.isfinite(m.running_mean).all()
                                                            and torch.isfinite(m.running_var).all())), None)
        if bad is not None:
            raise ValueError(f'calibration gave non-finite BN statistics (first in {bad!r}): the calibration images '
                             f'hold inf or NaN values, or the model\'s weights do; the statistics are left as they were')
        supernet.shared_stats_subnet = supernet.active_subnet
        done = True
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        if not done:  # validate, then apply: a failed calibration leaves everything as it was
            for m, buffers in zip(bns, before):
                for k, b in buffers.items():
                    m._buffers[k].copy_(b)
            supernet.shared_stats_subnet = shared_subnet
            supernet.activate(supernet.active_subnet, index)
        supernet.train(was_training)
    return supernet


@torch.no_grad()
def fill_budget_table(
        model: nn.Module,
        subnets: Sequence[Subnet],
        loader: Iterable,
        num_batches: int = 8,
        metrics: Optional[Sequence[Optional[Mapping[str, float]]]] = None,
) -> BudgetTable:
    """Calibrate BN for each subnet and make them the model's budget table (replacing the old one).

    `metrics` (one mapping per subnet, e.g. {'top1': 71.3, 'score': -0.9}) are recorded with the entries. A
    subnet given twice is stored once, with its first metrics. The previously active subnet and the shared BN
    running statistics are restored afterwards. Returns the new table.
    """
    supernet = find_supernet(model)
    space = supernet.space
    subnets = [space.validate(s) for s in subnets]
    if metrics is not None and len(metrics) != len(subnets):
        raise ValueError(f'{len(metrics)} metrics for {len(subnets)} subnets')
    if not subnets:
        raise ValueError('fill_budget_table needs at least one subnet')
    unique = {}
    for i, s in enumerate(subnets):
        unique.setdefault(s, dict(metrics[i] or {}) if metrics is not None else {})
    order = sorted(unique, key=space.flops)
    table = BudgetTable(space.group_names, [BudgetEntry(space.flops(s), s, unique[s]) for s in order])  # checked
    layers = [(n, m) for n, m in supernet.named_modules() if isinstance(m, SlimBatchNormBase)]
    stats = {n: (torch.zeros(len(order), m.num_features), torch.ones(len(order), m.num_features)) for n, m in layers}
    shared = {n: {k: v.clone() for k, v in m._buffers.items() if v is not None and not k.startswith('budget_')}
              for n, m in layers}
    shared_subnet = supernet.shared_stats_subnet
    # also on failure: the shared statistics and the active subnet as they were (on the shared statistics once
    # the new table replaced the old one's entries)
    with supernet.keep_active():
        try:
            for row, subnet in enumerate(order):
                supernet.set_subnet(subnet)
                calibrate_bn(supernet, loader, num_batches=num_batches)
                for name, layer in layers:
                    c = layer.active_out
                    stats[name][0][row, :c] = layer.running_mean[:c].float().cpu()
                    stats[name][1][row, :c] = layer.running_var[:c].float().cpu()
            supernet.store_budget_table(table, stats)
        finally:
            for name, layer in layers:
                for key, value in shared[name].items():
                    layer._buffers[key].copy_(value)
            supernet.shared_stats_subnet = shared_subnet
    return table
