"""A supernet's forward cut into timed segments (stem, each top-level block, head) and the channel groups each
depends on; which model a table describes (its architecture name, the full supernet)."""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from ..channel_plan import ChannelPlan
from ..spaces import Subnet
from ..supernet import SupernetMixin, find_supernet

__all__ = ['Segment', 'forward_segments', 'check_segment_chain', 'architecture_name', 'full_supernet']


class Segment(NamedTuple):
    name: str
    paths: Tuple[str, ...]                   # module paths whose layers belong to it (for the channel rules)
    run: Callable[[torch.Tensor], torch.Tensor]
    groups: Tuple[int, ...]                  # the groups its latency depends on (its input's included)


def _block_list(path: str, seq: nn.Sequential) -> List[Tuple[str, nn.Module]]:
    """The blocks of a Sequential: its children, or, for a Sequential of Sequentials (stages), theirs."""
    kids = list(seq.named_children())
    if kids and all(isinstance(k, nn.Sequential) for _, k in kids):
        return [b for n, k in kids for b in _block_list(f'{path}.{n}', k)]
    return [(f'{path}.{n}', k) for n, k in kids]


def _run_modules(modules: Sequence[nn.Module], then: Optional[Callable] = None):
    def run(x):
        for m in modules:
            x = m(x)
        return x if then is None else then(x)
    return run


def forward_segments(model: SupernetMixin, plan: ChannelPlan) -> List[Segment]:
    """The model's forward as segments (stem, each block of its Sequential containers, head), with the channel
    groups each depends on. The top-level children run in registration order, the head ends with `forward_head`;
    `build_lut` checks that the chain reproduces `model(x)`."""
    head_only = {id(model.global_pool), id(model.get_classifier())}
    parts: List[Tuple[str, List[Tuple[str, nn.Module]]]] = [('stem', [])]
    seen_blocks = False
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            parts += [(path, [(path, block)]) for path, block in _block_list(name, child)]
            seen_blocks = True
            parts.append(('head', []))
        else:
            parts[-1][1].append((name, child))
    if not seen_blocks:
        raise ValueError(f'{type(model).__name__} has no nn.Sequential of blocks to split its forward at')
    # modules between two block containers become segments of their own; the last 'head' is the head
    merged, head_index = [], max(i for i, (n, _) in enumerate(parts) if n == 'head')
    for i, (name, mods) in enumerate(parts):
        if name == 'head' and i != head_index:
            merged += [(path, [(path, m)]) for path, m in mods]
        elif name != 'stem' or mods:
            merged.append((name, mods))
    rules = list(plan.rules.items())
    segments, current, assigned = [], plan.input(model.in_chans).channels, set()  # current: the input's channels
    for name, mods in merged:
        paths = tuple(p for p, _ in mods)
        if name == 'head':
            runnable = [m for _, m in mods if id(m) not in head_only]
            run = _run_modules(runnable, model.forward_head)
            paths += tuple(n for n, m in model.named_children() if id(m) in head_only and n not in paths)
        else:
            run = _run_modules([m for _, m in mods])
        mine = [(rule_name, r) for rule_name, r in rules
                if any(rule_name == p or rule_name.startswith(p + '.') for p in paths)]
        assigned.update(rule_name for rule_name, _ in mine)
        groups = {c.group for _, r in mine for c in r if c is not None} | {current.group}
        segments.append(Segment(name, paths, run, tuple(sorted(g for g in groups if g is not None))))
        outs = [r[1] for _, r in mine if r[1] is not None]
        if outs:
            current = outs[-1]
    unassigned = [n for n, _ in rules if n not in assigned]
    if unassigned:
        raise ValueError(f'layers {unassigned[:5]} belong to no segment of the forward; cannot build a latency table')
    return segments


def check_segment_chain(supernet: SupernetMixin, segments: Sequence['Segment'], subnet: Subnet,
                        x: torch.Tensor) -> None:
    """The segments run in order must give model(x), or the table would time another forward."""
    supernet.set_subnet(subnet)
    y = x
    for seg in segments:
        y = seg.run(y)
    expected = supernet(x)
    if y.shape != expected.shape or not torch.allclose(y, expected, rtol=1e-3, atol=1e-3):
        raise ValueError(f'{type(supernet).__name__}: running its segments {[s.name for s in segments][:4]}... in '
                         f'order does not reproduce model(x); cannot build a latency table for this forward')


def architecture_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def full_supernet(model: nn.Module) -> SupernetMixin:
    supernet = find_supernet(model)
    if not isinstance(supernet, SupernetMixin):
        raise ValueError(f'latency tables describe a full supernet (a timm_pss model), not a '
                         f'{type(supernet).__name__} (features_only) wrapper')
    return supernet
