"""Pool diagnostics: how focused each pool's draws are, and whether its scores still rank its members.

Pool scores are moving averages of training-batch −CE taken when each member was trained, so they can go stale
(an old score recorded at a higher loss). Per pool and epoch this measures the draw probability of the most likely
member, the effective number of members (exp of the draw distribution's entropy: 1 = one member takes every
draw, n = uniform over n), and Spearman's rank correlation between the pool scores and fresh −CE of the same
members on one fixed training batch. The same fresh scores can replace the pool scores (`refresh=True`).
"""
from __future__ import annotations

import csv
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..files import atomic_write
from ..spaces import Subnet
from ..supernet import find_supernet, quiet_forwards
from .pools import average_ranks

__all__ = ['effective_members', 'spearman', 'fixed_batch', 'fresh_scores', 'pool_diagnostics', 'PoolMonitor',
           'DIAGNOSTICS_COLUMNS']

DIAGNOSTICS_COLUMNS = ('epoch', 'pool', 'top_member_prob', 'effective_members', 'spearman_score_vs_fresh',
                       'members', 'bucket')


def effective_members(probs: np.ndarray) -> float:
    """exp(entropy) of a draw distribution: how many equally likely members would draw as evenly."""
    p = np.asarray(probs, dtype=np.float64)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of `a` and `b` (average ranks for ties); NaN with fewer than 2 values or when
    either side is constant (no ranking to compare)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f'spearman needs two 1-d arrays of one length, got shapes {a.shape} and {b.shape}')
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return math.nan if denominator == 0 else float((ra * rb).sum() / denominator)


def fixed_batch(dataset, batch_size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images, labels): `batch_size` distinct samples of `dataset` chosen by `seed` alone (the process RNGs are
    not used), so every rank and a resumed run get the same batch."""
    count = min(int(batch_size), len(dataset))
    indices = np.random.default_rng(seed).choice(len(dataset), size=count, replace=False)
    samples = [dataset[int(i)] for i in indices]
    return torch.stack([torch.as_tensor(x) for x, _ in samples]), torch.as_tensor([int(y) for _, y in samples])


@torch.no_grad()
def fresh_scores(model: nn.Module, subnets: Sequence[Subnet], images: torch.Tensor, labels: torch.Tensor,
                 autocast: Callable[[], ContextManager] = nullcontext) -> np.ndarray:
    """−CE of each subnet on (images, labels), seen as the training step sees it: train-mode BN on this batch,
    one forward each, no grad. The model's buffers (BN running statistics), active subnet, mode and the torch RNG
    streams are left exactly as they were."""
    supernet = find_supernet(model)
    device = next(supernet.parameters()).device
    images, labels = images.to(device), labels.to(device)
    buffers = {name: b.detach().clone() for name, b in supernet.named_buffers()}
    was_training, shared_subnet = supernet.training, supernet.shared_stats_subnet
    scores = []
    devices = [device] if device.type == 'cuda' else []
    try:
        with torch.random.fork_rng(devices=devices), supernet.keep_active(), quiet_forwards(supernet):
            supernet.train()
            for subnet in subnets:
                supernet.set_subnet(subnet)
                with autocast():
                    logits = supernet(images)
                scores.append(-F.cross_entropy(logits.float(), labels).item())
    finally:
        for name, b in supernet.named_buffers():
            b.copy_(buffers[name])
        supernet.train(was_training)
        supernet.shared_stats_subnet = shared_subnet
    return np.asarray(scores, dtype=np.float64)


def pool_diagnostics(sampler, fresh: Sequence[np.ndarray]) -> List[Dict[str, object]]:
    """One row per pool (columns of DIAGNOSTICS_COLUMNS but `epoch`) plus a 'mean' row (NaNs skipped); `fresh[b]`
    holds pool b's fresh scores in `members()` order. Empty pools give NaN."""
    rows = []
    for bucket, pool in enumerate(sampler.pools):
        row = dict(pool=bucket, top_member_prob=math.nan, effective_members=math.nan,
                   spearman_score_vs_fresh=math.nan, members=len(pool), bucket=sampler.describe_bucket(bucket))
        if len(pool):
            probs = sampler.draw_probabilities(bucket)
            row.update(top_member_prob=float(probs.max()), effective_members=effective_members(probs),
                       spearman_score_vs_fresh=spearman(pool.scores(), fresh[bucket]))
        rows.append(row)
    mean = dict(pool='mean', members=float(np.mean([r['members'] for r in rows])) if rows else 0.0, bucket='')
    for key in ('top_member_prob', 'effective_members', 'spearman_score_vs_fresh'):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        mean[key] = float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else math.nan
    rows.append(mean)
    return rows


def _write_csv_atomic(path: Path, rows: List[Dict[str, object]]) -> None:
    """Write `rows` atomically (`timm_pss.files`: a temporary in the same folder, fsynced, renamed)."""
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=DIAGNOSTICS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


class PoolMonitor:
    """What happens to the pools at each epoch end: fresh −CE of every member on one fixed batch, then the
    diagnostics (written to `csv_path`, if given) and/or those fresh scores replacing the pool scores (`refresh`).

    Under DDP call `end_epoch` on every rank: the fresh scores are averaged over ranks, so refreshed pools stay
    identical; give `csv_path` on one rank only.
    """

    def __init__(self, model: nn.Module, sampler, images: torch.Tensor, labels: torch.Tensor,
                 csv_path: Optional[Path] = None, diagnostics: bool = True, refresh: bool = False,
                 autocast: Callable[[], ContextManager] = nullcontext, start_epoch: int = 0):
        self.model, self.sampler, self.images, self.labels = model, sampler, images, labels
        self.csv_path = None if csv_path is None else Path(csv_path)
        self.diagnostics, self.refresh, self.autocast = diagnostics, refresh, autocast
        self.rows: List[Dict[str, object]] = []
        if self.csv_path is not None and self.csv_path.exists():  # a resumed run: keep the epochs before it
            with open(self.csv_path, newline='') as f:
                self.rows = [r for r in csv.DictReader(f) if int(r['epoch']) < start_epoch]

    def fresh_pool_scores(self) -> List[np.ndarray]:
        """Fresh −CE of every pool's members (in `members()` order), averaged over DDP ranks."""
        pools = self.sampler.pools
        members = [m for pool in pools for m in pool.members()]
        scores = torch.as_tensor(fresh_scores(self.model, members, self.images, self.labels, self.autocast))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            scores = scores.to('cuda' if dist.get_backend() == 'nccl' else 'cpu')
            dist.all_reduce(scores, op=dist.ReduceOp.SUM)
            scores = (scores / dist.get_world_size()).cpu()
        return np.split(scores.numpy(), np.cumsum([len(p) for p in pools])[:-1])

    def end_epoch(self, epoch: int) -> Optional[Dict[str, object]]:
        """Measure (and refresh, if asked) at the end of `epoch`; returns the mean row of the diagnostics."""
        if not (self.diagnostics or self.refresh):
            return None
        fresh = self.fresh_pool_scores()
        mean = None
        if self.diagnostics:
            rows = pool_diagnostics(self.sampler, fresh)
            mean = rows[-1]
            self.rows.extend(dict(epoch=epoch, **r) for r in rows)
            if self.csv_path is not None:
                _write_csv_atomic(self.csv_path, self.rows)
        if self.refresh:
            for pool, scores in zip(self.sampler.pools, fresh):
                pool.replace_scores(scores)
        return mean
