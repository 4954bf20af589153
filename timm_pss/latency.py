"""Per-device latency lookup tables: a subnet's end-to-end supernet latency predicted from measured blocks.

A supernet's forward is cut into segments: the stem, each top-level block (EfficientNet `blocks.S.B`, ResNet
`layerN.B`) and the head (what follows the last block, then `forward_head`). From the model's channel plan, a
segment's latency depends only on the input resolution and the widths of the channel groups its layers read or
write. So each segment is measured on a grid of (resolution, widths of its groups), at every width of the space
where that grid is small and at evenly spaced widths (ends included) where it is not, timed in place within full
forwards (so with a real forward's cache and allocator state), and a subnet's latency is the sum of its segments'
multilinearly interpolated times (exact at grid points) plus one constant, `overhead_ms`, fitted on a few
end-to-end measurements. `predict_many` is a few numpy gathers per segment for any number of subnets, so a
latency budget can be searched like a FLOPs budget.

What a table predicts: the median wall time (ms) of `model(x)` in eval mode under `torch.inference_mode`, for the
supernet set to that subnet, `x` a batch of `batch_size` images already at the subnet's resolution, on the device,
dtype and torch thread count it was built with, in steady state (not the first call after switching, which may
compile kernels for new shapes). Tables are JSON (`save` / `load`), never pickles.

On CPU the memory allocator matters as much as the grid: with glibc's default settings, activations of a few MB are
returned to the OS after each forward and page-faulted back in the next, depending on the heap's history (measured
here: pss_mobilenetv2 at 224px 30 ms instead of 18 ms, from some resolution on that varies between runs). Build
and deploy under the same allocator, preferably a stable one (`MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824`, or jemalloc/tcmalloc via LD_PRELOAD); a table records these settings in
`build['allocator']`.
"""
from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .channel_plan import ChannelPlan
from .files import check_new_file, write_text_atomic
from .spaces import SearchSpace, Subnet, SubnetBatch
from .supernet import SupernetMixin, find_supernet

__all__ = ['LatencyBlock', 'LatencyTable', 'build_lut', 'predict_latency', 'record_latency', 'cpu_name', 'FORMAT',
           'AUTO_MAX_GRID', 'fit_overhead_ms']

FORMAT = 'timm_pss.latency_table/1'
AUTO_MAX_GRID = 81  # width combinations per segment (per resolution) measured in full when width_points=None

_REQUIRED_KEYS = ('format', 'model', 'space', 'num_classes', 'device', 'device_name', 'torch', 'threads', 'dtype',
                  'batch_size', 'overhead_ms', 'block_names', 'blocks')
_BLOCK_KEYS = ('name', 'groups', 'resolutions', 'widths', 'ms')


# ---------------------------------------------------------------------------------------------- one segment's grid

class LatencyBlock:
    """The measured latency of one segment: `ms[r, i1, .., ik]` (median ms) at `resolutions[r]` and
    `widths[j][ij]` for its channel groups `groups[j]` (indices into the space's groups).

    `lookup` interpolates multilinearly between grid points (exact at them); `coverage_error` says which
    subnets the grid does not cover.
    """

    def __init__(self, name: str, groups: Sequence[int], resolutions: Sequence[int], widths: Sequence[Sequence[int]],
                 ms: np.ndarray):
        self.name = str(name)
        self.groups: Tuple[int, ...] = tuple(int(g) for g in groups)
        self.resolutions: Tuple[int, ...] = tuple(int(r) for r in resolutions)
        self.widths: Tuple[Tuple[int, ...], ...] = tuple(tuple(int(w) for w in ws) for ws in widths)
        self.ms = np.asarray(ms, dtype=np.float64)
        if len(self.widths) != len(self.groups):
            raise ValueError(f'block {self.name!r}: {len(self.groups)} groups but {len(self.widths)} width axes')
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f'block {self.name!r}: a group appears twice in {list(self.groups)}')
        for label, axis in [('resolutions', self.resolutions)] + [(f'widths[{i}]', w) for i, w in
                                                                    enumerate(self.widths)]:
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])) or axis[0] <= 0:
                raise ValueError(f'block {self.name!r}: {label} must be positive and strictly ascending, got '
                                 f'{list(axis)}')
        shape = (len(self.resolutions),) + tuple(len(w) for w in self.widths)
        if self.ms.shape != shape:
            raise ValueError(f'block {self.name!r}: ms has shape {self.ms.shape}, its grid '
                             f'(resolutions x widths per group) is {shape}')
        if not np.isfinite(self.ms).all() or (self.ms < 0).any():
            raise ValueError(f'block {self.name!r}: ms must be finite and non-negative')
        self._axes = (np.asarray(self.resolutions, np.float64),) + tuple(np.asarray(w, np.float64)
                                                                         for w in self.widths)
        self._dense = [_interp_table(a) for a in self._axes]

    @property
    def grid_size(self) -> int:
        return int(self.ms.size)

    def __repr__(self) -> str:
        return (f'LatencyBlock({self.name!r}, groups={list(self.groups)}, grid={"x".join(map(str, self.ms.shape))}, '
                f'{self.ms.min():.3f}..{self.ms.max():.3f} ms)')

    def _coords(self, resolutions: np.ndarray, widths: np.ndarray) -> List[np.ndarray]:
        return [resolutions] + [widths[:, g] for g in self.groups]

    def coverage_error(self, resolutions: np.ndarray, widths: np.ndarray, group_names: Sequence[str]) -> Optional[str]:
        """None if the grid covers every subnet, else a message naming the first one it does not."""
        for k, (axis, x) in enumerate(zip(self._axes, self._coords(resolutions, widths))):
            bad = (x != axis[0]) if axis.size == 1 else ((x < axis[0]) | (x > axis[-1]))
            if bad.any():
                i = int(np.argmax(bad))
                what = 'resolution' if k == 0 else f'group {group_names[self.groups[k - 1]]!r} width'
                axis_ints = self.resolutions if k == 0 else self.widths[k - 1]
                which = f' (subnet {i})' if x.size > 1 else ''
                return (f'block {self.name!r} has no entry for {what} {int(x[i])}{which}; the table covers '
                        f'{_describe(axis_ints)}')
        return None

    def lookup(self, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Interpolated ms for each subnet (resolutions (N,), widths (N, G); integers, or floats), inside the grid."""
        n = resolutions.shape[0]
        flat = self.ms.ravel()
        strides = [st // self.ms.itemsize for st in self.ms.strides]
        base = np.zeros(n, np.intp)
        varying = []  # (stride, fraction) of each axis with more than one point
        for axis, dense, x, stride in zip(self._axes, self._dense, self._coords(resolutions, widths), strides):
            if axis.size == 1:
                continue
            if np.issubdtype(x.dtype, np.integer):  # widths and resolutions: a table per integer value
                at = np.clip(x - int(axis[0]), 0, dense[0].size - 1)
                lo, frac = dense[0].take(at), dense[1].take(at)
            else:
                lo = np.clip(np.searchsorted(axis, x, side='right') - 1, 0, axis.size - 2)
                frac = (x - axis[lo]) / (axis[lo + 1] - axis[lo])
            base += lo * stride
            varying.append((stride, frac))
        out = np.zeros(n, np.float64)
        for corner in itertools.product((0, 1), repeat=len(varying)):
            offset, weight = 0, np.ones(n, np.float64)
            for (stride, frac), upper in zip(varying, corner):
                offset += stride * upper
                weight *= frac if upper else 1.0 - frac
            out += weight * flat.take(base + offset)
        return out

    def to_dict(self, group_names: Sequence[str]) -> dict:
        return {'name': self.name, 'groups': [group_names[g] for g in self.groups],
                'resolutions': list(self.resolutions), 'widths': [list(w) for w in self.widths],
                'ms': self.ms.tolist()}


def _interp_table(axis: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(lower grid index, fraction towards the next point) for every integer from axis[0] to axis[-1]."""
    if axis.size == 1:
        return np.zeros(1, np.intp), np.zeros(1)
    values = np.arange(int(axis[0]), int(axis[-1]) + 1, dtype=np.float64)
    lo = np.clip(np.searchsorted(axis, values, side='right') - 1, 0, axis.size - 2)
    return lo.astype(np.intp), (values - axis[lo]) / (axis[lo + 1] - axis[lo])


# ---------------------------------------------------------------------------------------------- the table

class LatencyTable:
    """A per-device latency lookup table of one supernet architecture and search space.

    Build one with `build_lut(model)`, or `LatencyTable.load(path)`. `predict(subnet)` / `predict_many(batch)` give
    ms per forward of `batch_size` images; `check_model(model)` and `check_device()` say whether the table applies.
    """

    def __init__(
            self,
            *,
            model: str,
            space: dict,
            num_classes: int,
            device: str,
            device_name: str,
            torch_version: str,
            threads: int,
            dtype: str,
            batch_size: int,
            blocks: Sequence[LatencyBlock],
            overhead_ms: float,
            block_names: Optional[Sequence[str]] = None,
            build: Optional[dict] = None,
    ):
        for key, value in (('model', model), ('device', device), ('device_name', device_name),
                           ('torch', torch_version), ('dtype', dtype)):
            if not isinstance(value, str) or not value:
                raise ValueError(f'latency table: {key!r} must be a non-empty string, got {value!r}')
        for key, value, low in (('num_classes', num_classes, 0), ('threads', threads, 1),
                                ('batch_size', batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f'latency table: {key!r} must be an integer >= {low}, got {value!r}')
        if (isinstance(overhead_ms, bool) or not isinstance(overhead_ms, numbers.Real) or not math.isfinite(overhead_ms)
                or overhead_ms < 0):
            raise ValueError(f'latency table: "overhead_ms" must be a finite number >= 0 (a negative overhead '
                             f'would predict negative latencies), got {overhead_ms!r}')
        self.model, self.device, self.device_name, self.torch_version, self.dtype = (
            model, device, device_name, torch_version, dtype)
        self.num_classes, self.threads, self.batch_size = int(num_classes), int(threads), int(batch_size)
        self.overhead_ms = float(overhead_ms)
        self.space = _space_from_dict(space)
        self.blocks: Tuple[LatencyBlock, ...] = tuple(blocks)
        self.block_names: Tuple[str, ...] = tuple(block_names) if block_names is not None else tuple(
            b.name for b in self.blocks)
        self.build = dict(build or {})
        self._check_blocks()

    def _check_blocks(self) -> None:
        names = [b.name for b in self.blocks]
        for label, seq in (('block_names', self.block_names), ('blocks', names)):
            dupes = sorted({n for n in seq if seq.count(n) > 1})
            if dupes:
                raise ValueError(f'latency table: {label} lists {dupes} more than once')
        missing = [n for n in self.block_names if n not in names]
        if missing:
            raise ValueError(f'latency table lacks the entries of block(s) {missing}; the model has '
                             f'{len(self.block_names)} blocks: {list(self.block_names)}')
        extra = [n for n in names if n not in self.block_names]
        if extra:
            raise ValueError(f'latency table has entries for block(s) {extra} that block_names does not list')
        g = self.space.num_groups
        for block in self.blocks:
            if any(not 0 <= i < g for i in block.groups):
                raise ValueError(f'block {block.name!r}: group indices {list(block.groups)} outside the space\'s '
                                 f'{g} groups')
        covered = {i for b in self.blocks for i in b.groups}
        unread = [self.space.group_names[i] for i in range(g) if i not in covered]
        if unread:
            raise ValueError(f'latency table: no block depends on group(s) {unread}; the table lacks their blocks')

    # ------------------------------------------------------------------ describing

    @property
    def group_names(self) -> Tuple[str, ...]:
        return self.space.group_names

    @property
    def grid_size(self) -> int:
        """Grid points measured over all blocks."""
        return sum(b.grid_size for b in self.blocks)

    def __repr__(self) -> str:
        return (f'LatencyTable({self.model} on {self.device} ({self.device_name}), {self.threads} thread'
                f'{"s" if self.threads != 1 else ""}, {self.dtype}, batch {self.batch_size}: {len(self.blocks)} '
                f'blocks, {self.grid_size} grid points, overhead {self.overhead_ms:.3f} ms)')

    # ------------------------------------------------------------------ predicting

    def predict(self, subnet: Subnet) -> float:
        """Predicted ms of one forward of `batch_size` images at `subnet` (validated against the table's space)."""
        self.space.validate(subnet)
        batch = SubnetBatch.from_subnets([subnet])
        return float(self.predict_many(batch)[0])

    def predict_many(self, resolutions, widths=None) -> np.ndarray:
        """Predicted ms of many subnets: `predict_many(batch)` or `predict_many(resolutions (N,), widths (N, G))`.

        Like `SearchSpace.flops_many`, inputs are trusted to be subnets of the space; a subnet outside a block's
        measured grid raises ValueError naming the block, the group and the width.
        """
        if widths is None:
            resolutions, widths = resolutions
        res, w = np.asarray(resolutions).reshape(-1), np.asarray(widths)
        if not (np.issubdtype(res.dtype, np.integer) and np.issubdtype(w.dtype, np.integer)):
            res, w = res.astype(np.float64), w.astype(np.float64)
        if w.ndim != 2 or w.shape != (res.shape[0], self.space.num_groups):
            raise ValueError(f'widths must have shape (N, {self.space.num_groups}) for N={res.shape[0]} '
                             f'resolutions, got {w.shape}')
        for block in self.blocks:
            message = block.coverage_error(res, w, self.group_names)
            if message:
                raise ValueError(message)
        total = np.zeros(res.shape[0], np.float64)
        for block in self.blocks:
            total += block.lookup(res, w)
        return total + self.overhead_ms

    # ------------------------------------------------------------------ applicability

    def check_model(self, model: nn.Module) -> None:
        """ValueError naming both sides when this table was built for another model, head or search space."""
        supernet = _full_supernet(model)
        name = _architecture(supernet)
        problems = []
        if name != self.model:
            problems.append(f'architecture {self.model} vs {name}')
        if supernet.num_classes != self.num_classes:
            problems.append(f'num_classes {self.num_classes} vs {supernet.num_classes}')
        problems += _space_differences(self.space, supernet.space)
        if not problems:
            segments = _segments(supernet, supernet._walk_channels())
            theirs = {s.name: s.groups for s in segments}
            missing = [n for n in theirs if n not in self.block_names]
            extra = [n for n in self.block_names if n not in theirs]
            if missing or extra:
                problems.append(f'blocks: the table lacks {missing[:5]} and has unknown {extra[:5]}')
            else:
                for block in self.blocks:
                    if block.groups != theirs[block.name]:
                        problems.append(f'block {block.name!r} depends on groups {list(block.groups)} in the table, '
                                        f'{list(theirs[block.name])} in the model')
                        break
        if problems:
            raise ValueError(f'latency table built for {self.model} ({_describe_space(self.space)}) does not fit '
                             f'the model {name} ({_describe_space(supernet.space)}): ' + '; '.join(problems))

    def check_device(self, device: Union[None, str, torch.device] = None, threads: Optional[int] = None) -> None:
        """ValueError naming both sides when `device` (default: the table's) is another device or device model
        than the table was built on, or, for a CPU table, `threads` (default: `torch.get_num_threads()`) differs."""
        try:
            dev = _normalize_device(self.device if device is None else device)
            name = _device_name(dev)
        except (RuntimeError, AssertionError) as e:
            raise ValueError(f'latency table was built on {self.device} ({self.device_name}); device '
                             f'{device or self.device} is not available here: {e}') from e
        if str(dev) != self.device or name != self.device_name:
            raise ValueError(f'latency table was built on {self.device} ({self.device_name}), not on {dev} ({name}); '
                             f'build one there with timm_pss.latency.build_lut(model, device={str(dev)!r})')
        if dev.type == 'cpu':
            threads = torch.get_num_threads() if threads is None else threads
            if threads != self.threads:
                raise ValueError(f'latency table was built with {self.threads} torch thread(s), this run uses '
                                 f'{threads}; set torch.set_num_threads({self.threads}) or build a table with '
                                 f'threads={threads}')

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return {
            'format': FORMAT, 'model': self.model, 'space': self.space.to_dict(), 'num_classes': self.num_classes,
            'device': self.device, 'device_name': self.device_name, 'torch': self.torch_version,
            'threads': self.threads, 'dtype': self.dtype, 'batch_size': self.batch_size,
            'overhead_ms': self.overhead_ms, 'build': self.build, 'block_names': list(self.block_names),
            'blocks': [b.to_dict(self.group_names) for b in self.blocks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> 'LatencyTable':
        if not isinstance(d, dict) or d.get('format') != FORMAT:
            got = d.get('format') if isinstance(d, dict) else type(d).__name__
            raise ValueError(f'not a timm_pss latency table: expected "format": "{FORMAT}", got {got!r}')
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise ValueError(f'latency table is missing the key(s) {missing}')
        space = _space_from_dict(d['space'])
        index = {n: i for i, n in enumerate(space.group_names)}
        if not isinstance(d['blocks'], list) or not isinstance(d['block_names'], list):
            raise ValueError('latency table: "blocks" and "block_names" must be lists')
        blocks = []
        for i, b in enumerate(d['blocks']):
            if not isinstance(b, dict) or any(k not in b for k in _BLOCK_KEYS):
                raise ValueError(f'latency table: blocks[{i}] must be an object with the keys {list(_BLOCK_KEYS)}, '
                                 f'got {sorted(b) if isinstance(b, dict) else type(b).__name__}')
            if not isinstance(b['groups'], list) or not isinstance(b['widths'], list):
                raise ValueError(f'latency table: block {b["name"]!r}: "groups" and "widths" must be lists')
            unknown = [g for g in b['groups'] if g not in index]
            if unknown:
                raise ValueError(f'latency table: block {b["name"]!r} depends on {unknown}, which are not groups of '
                                 f'its space ({list(space.group_names)})')
            try:
                ms = np.asarray(b['ms'], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f'latency table: block {b["name"]!r}: "ms" is not a numeric grid ({e})') from e
            blocks.append(LatencyBlock(b['name'], [index[g] for g in b['groups']],
                                       _int_list(b['resolutions'], f'block {b["name"]!r} resolutions'),
                                       [_int_list(w, f'block {b["name"]!r} widths') for w in b['widths']], ms))
        build = d.get('build', {})
        if not isinstance(build, dict):
            raise ValueError(f'latency table: "build" must be an object, got {type(build).__name__}')
        return cls(model=d['model'], space=d['space'], num_classes=d['num_classes'], device=d['device'],
                   device_name=d['device_name'], torch_version=d['torch'], threads=d['threads'], dtype=d['dtype'],
                   batch_size=d['batch_size'], blocks=blocks, overhead_ms=d['overhead_ms'],
                   block_names=[str(n) for n in d['block_names']], build=build)

    @classmethod
    def from_json(cls, text: str) -> 'LatencyTable':
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f'latency table is not valid JSON: {e}') from e
        return cls.from_dict(d)

    def save(self, path: Union[str, os.PathLike]) -> None:
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> 'LatencyTable':
        with open(path, encoding='utf-8') as f:
            text = f.read()
        try:
            return cls.from_json(text)
        except ValueError as e:  # name the file: a truncated or foreign JSON is otherwise hard to place
            raise ValueError(f'{path}: {e}') from e


def predict_latency(table: LatencyTable, subnets: Union[Subnet, SubnetBatch, Sequence[Subnet]]
                    ) -> Union[float, np.ndarray]:
    """`table.predict(subnet)` for a Subnet (a float), `table.predict_many` for a SubnetBatch or a list of
    Subnets (each validated; an array of ms)."""
    if isinstance(subnets, Subnet):
        return table.predict(subnets)
    if isinstance(subnets, SubnetBatch):
        return table.predict_many(subnets)
    if isinstance(subnets, (list, tuple)) and all(isinstance(s, Subnet) for s in subnets):
        for s in subnets:
            table.space.validate(s)
        return table.predict_many(SubnetBatch.from_subnets(subnets))
    raise ValueError(f'subnets must be a Subnet, a SubnetBatch or a list of Subnets, got {type(subnets).__name__}')


# ---------------------------------------------------------------------------------------------- segments

class _Segment(NamedTuple):
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


def _segments(model: SupernetMixin, plan: ChannelPlan) -> List[_Segment]:
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
        segments.append(_Segment(name, paths, run, tuple(sorted(g for g in groups if g is not None))))
        outs = [r[1] for _, r in mine if r[1] is not None]
        if outs:
            current = outs[-1]
    unassigned = [n for n, _ in rules if n not in assigned]
    if unassigned:
        raise ValueError(f'layers {unassigned[:5]} belong to no segment of the forward; cannot build a latency table')
    return segments


# ---------------------------------------------------------------------------------------------- building

def _grid_indices(n: int, k: int) -> List[int]:
    """At most k evenly spaced indices of n choices, first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def _grid_axes(space: SearchSpace, segments: Sequence['_Segment'], width_points: Optional[int]
               ) -> List[List[Tuple[int, ...]]]:
    """The widths each segment is measured at, per group it depends on.

    Per segment, k widths per group: `width_points`, or (None) the largest k whose grid has at most
    `AUTO_MAX_GRID` width combinations. A one-group segment (stem, head, residual blocks) whose group also feeds
    segments of several groups takes the largest k of those, and a group's widths in a segment that needs fewer
    are an evenly spaced subset of those in the segment that needs most: the grids then nest, so a few forwards
    visit every point (see `_probe_widths`).
    """
    def auto_k(groups):
        sizes = [len(space.width_choices[g]) for g in groups]
        k = width_points if width_points is not None else max(sizes, default=1)
        while width_points is None and k > 2 and math.prod(min(n, k) for n in sizes) > AUTO_MAX_GRID:
            k -= 1
        return k

    ks = [auto_k(seg.groups) for seg in segments]
    shared: dict = {}
    for seg, k in zip(segments, ks):
        if len(seg.groups) > 1:
            for g in seg.groups:
                shared[g] = max(shared.get(g, 0), k)
    ks = [shared.get(seg.groups[0], k) if len(seg.groups) == 1 else k for seg, k in zip(segments, ks)]
    finest: dict = {}
    for seg, k in zip(segments, ks):
        for g in seg.groups:
            finest[g] = max(finest.get(g, 0), k)
    fine = {g: [space.width_choices[g][i] for i in _grid_indices(len(space.width_choices[g]), k)]
            for g, k in finest.items()}
    return [[tuple(fine[g][i] for i in _grid_indices(len(fine[g]), k)) for g in seg.groups]
            for seg, k in zip(segments, ks)]


def _grid_point(value_index: Sequence[dict], groups: Sequence[int], widths: Sequence[int]) -> Optional[tuple]:
    """A segment's grid indices for `widths`, or None where a width is not on its grid."""
    idx = tuple(index.get(widths[g]) for index, g in zip(value_index, groups))
    return None if None in idx else idx


def _probe_widths(space: SearchSpace, segments: Sequence['_Segment'], axes: Sequence[Sequence[tuple]]
                  ) -> List[Tuple[int, ...]]:
    """Width vectors whose forwards together visit every grid point of every segment.

    Greedy cover in forward order: each vector takes, segment by segment, an unvisited grid point that agrees with
    the widths chosen so far (other groups at full width). The first segment with points left always gets one, so
    it ends; on the models here it needs as many vectors as the lower bound (MobileNetV1/V2: the largest segment
    grid, 81 / 66; ResNet-50: 113, set by the 3-group first blocks sharing a stage group with the 2-group ones).
    """
    value_index = [[{w: i for i, w in enumerate(a)} for a in ax] for ax in axes]
    left = [set(itertools.product(*(range(len(a)) for a in ax))) for ax in axes]
    probes = []
    while any(left):
        widths: List[Optional[int]] = [None] * space.num_groups
        for s, seg in enumerate(segments):
            for combo in sorted(left[s]):
                values = [axes[s][k][i] for k, i in enumerate(combo)]
                if all(widths[g] is None or widths[g] == v for g, v in zip(seg.groups, values)):
                    for g, v in zip(seg.groups, values):
                        widths[g] = v
                    break
        probe = tuple(space.max_widths[g] if w is None else w for g, w in enumerate(widths))
        for s, seg in enumerate(segments):
            left[s].discard(_grid_point(value_index[s], seg.groups, probe))
        probes.append(probe)
    return probes


def _normalize_device(device: Union[str, torch.device]) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f'device {device!r} is not a torch device: {e}') from e
    if dev.type == 'cuda' and dev.index is None:
        dev = torch.device('cuda', torch.cuda.current_device())
    return dev


def cpu_name() -> str:
    """The CPU's model name (what a CPU latency table is tied to): platform.processor(), else /proc/cpuinfo."""
    name = platform.processor()
    if name and name != platform.machine():
        return name
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine() or 'unknown'


def _device_name(dev: torch.device) -> str:
    if dev.type == 'cpu':
        return cpu_name()
    if dev.type == 'cuda':
        return torch.cuda.get_device_name(dev)
    return dev.type


def _synchronizer(dev: torch.device) -> Callable[[], None]:
    if dev.type == 'cuda':
        return lambda: torch.cuda.synchronize(dev)
    if dev.type == 'mps':
        return torch.mps.synchronize
    return lambda: None


class _Timer:
    """Wall time of a call, and whether it ran undisturbed.

    With `retake` (one-thread CPU timing, where the work runs in this thread), a sample during which the thread
    lost the CPU (wall time above its CPU time by more than 2% + 50 us) counts as spoiled, to be retaken.
    """

    def __init__(self, sync: Callable[[], None], retake: bool):
        self.sync, self.retake = sync, retake

    def __call__(self, fn: Callable, *args):
        self.sync()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        out = fn(*args)
        self.sync()
        wall = time.perf_counter() - t0
        clean = not self.retake or wall - (time.thread_time() - c0) <= 0.02 * wall + 5e-5
        return out, 1e3 * wall, clean


def _median_of(clean: List[float], spoiled: List[float]) -> float:
    return statistics.median(clean if clean else spoiled)


def _time_segments(supernet: SupernetMixin, segments: Sequence['_Segment'], subnets: Sequence[Subnet],
                   visits: Sequence[Sequence[int]], sizes: Sequence[int], whole: Sequence[Subnet],
                   inputs: Dict[int, torch.Tensor], warmup: int, repeats: int, timer: _Timer,
                   rng: np.random.Generator, progress: Optional[str] = None
                   ) -> Tuple[List[np.ndarray], List[float], int]:
    """Median ms of each segment at each of its grid points, timed in place within full forwards, and, for each of
    the `whole` subnets, the median of its end-to-end forward `model(x)` minus its segments timed in place right
    after (the per-forward overhead, free of the load at the time).

    Every round runs each subnet twice, back to back, all in a fresh random order (so load that drifts during the
    build spreads over all points and the end-to-end timings alike): an untimed forward, then one timing each
    segment between its neighbours. So every sample sees a steady state, as when a subnet serves many inputs:
    caches, allocator and the per-shape kernel caches warm (oneDNN keeps ~1024 compiled convolutions; the
    thousands of shapes of a whole grid would otherwise evict the rarer ones and time their recompilation).
    `visits[p][s]` is the flat grid index segment s has in subnet p's forward (-1: not on its grid). Rounds repeat
    until every point and every whole subnet has `repeats` undisturbed samples (at most 3 x `repeats` rounds with
    `timer.retake`). Returns the medians per segment, the overheads of the whole subnets, and the number of
    spoiled samples.
    """
    clean = [[[] for _ in range(n)] for n in sizes]
    spoiled = [[[] for _ in range(n)] for n in sizes]
    # per whole subnet and round: end-to-end ms minus the sum of its segments timed in place right after
    whole_clean: List[List[float]] = [[] for _ in whole]
    whole_spoiled: List[List[float]] = [[] for _ in whole]

    def in_place(x: torch.Tensor) -> List[Tuple[float, bool]]:
        samples = []
        for seg in segments:
            x, ms, ok = timer(seg.run, x)
            samples.append((ms, ok))
        return samples

    def run(task: int, record: bool) -> None:
        subnet = subnets[task] if task < len(subnets) else whole[task - len(subnets)]
        x = inputs[subnet.resolution]
        supernet.set_subnet(subnet)
        supernet(x)  # untimed: the timed forwards below then find their kernels, caches and buffers warm
        if not record:
            return
        if task >= len(subnets):
            _, ms, ok = timer(supernet, x)
            samples = in_place(x)
            ok = ok and all(seg_ok for _, seg_ok in samples)
            (whole_clean if ok else whole_spoiled)[task - len(subnets)].append(ms - sum(t for t, _ in samples))
            return
        for s, (ms, ok) in enumerate(in_place(x)):
            if visits[task][s] >= 0:
                (clean if ok else spoiled)[s][visits[task][s]].append(ms)

    def short(task: int) -> bool:
        if task >= len(subnets):
            return len(whole_clean[task - len(subnets)]) < repeats
        return any(v >= 0 and len(clean[s][v]) < repeats for s, v in enumerate(visits[task]))

    pending = list(range(len(subnets) + len(whole)))
    for round_ in range(warmup + (3 * repeats if timer.retake else repeats)):
        t0 = time.perf_counter()
        for task in rng.permutation(pending):
            run(int(task), round_ >= warmup)
        if round_ >= warmup:
            pending = [task for task in pending if short(task)]
        if progress:
            print(f'{progress}: round {round_ + 1} ({"warm-up" if round_ < warmup else "timed"}) in '
                  f'{time.perf_counter() - t0:.1f} s; {len(pending)} forwards still short of samples',
                  file=sys.stderr, flush=True)
        if not pending:
            break
    medians = [np.array([_median_of(c, d) for c, d in zip(cs, ds)]) for cs, ds in zip(clean, spoiled)]
    overheads = [_median_of(c, d) for c, d in zip(whole_clean, whole_spoiled)]
    n_spoiled = sum(len(d) for ds in spoiled for d in ds) + sum(len(d) for d in whole_spoiled)
    return medians, overheads, n_spoiled


def _allocator_settings() -> dict:
    """The environment that decides how this process allocates memory (LD_PRELOAD, glibc's MALLOC_*_ tunables)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k == 'LD_PRELOAD' or k == 'GLIBC_TUNABLES' or (k.startswith('MALLOC_') and k.endswith('_'))}


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _full_supernet(model: nn.Module) -> SupernetMixin:
    supernet = find_supernet(model)
    if not isinstance(supernet, SupernetMixin):
        raise ValueError(f'latency tables describe a full supernet (a timm_pss model), not a '
                         f'{type(supernet).__name__} (features_only) wrapper')
    return supernet


def _positive(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
    return int(value)


def _spread_subnets(space: SearchSpace, n: int, seed: int) -> List[Subnet]:
    """n distinct subnets spread over the FLOPs span: the max, the min, then for evenly spaced FLOPs between them
    the nearest of 4,096 uniform random subnets."""
    pool = space.sample_many(4096, rng=seed)
    ends = SubnetBatch.from_subnets([space.max_subnet(), space.min_subnet()])
    pool = SubnetBatch(np.concatenate([ends.resolutions, pool.resolutions]), np.concatenate([ends.widths, pool.widths]))
    flops = space.flops_many(pool).astype(np.float64)
    chosen = [0, 1][:n]
    for target in np.linspace(flops[1], flops[0], n)[1:-1] if n > 2 else ():
        distance = np.abs(flops - target)
        distance[chosen] = np.inf
        chosen.append(int(np.argmin(distance)))
    return [pool.subnet(i) for i in chosen]


def build_lut(
        model: nn.Module,
        device: Union[str, torch.device] = 'cpu',
        batch_size: int = 1,
        threads: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        resolutions: Optional[Sequence[int]] = None,
        width_points: Optional[int] = None,
        warmup: int = 0,
        repeats: int = 5,
        progress: bool = False,
        overhead_subnets: int = 5,
        seed: int = 0,
) -> LatencyTable:
    """Measure a latency lookup table of `model` (a timm_pss supernet, already on `device` in `dtype`).

    Grid: each resolution of `resolutions` (default: all of the space's) x, per segment (stem, top-level blocks,
    head), the widths of the groups it depends on: every choice where a segment has at most `AUTO_MAX_GRID` width
    combinations, else the largest k evenly spaced choices per group (ends included) that fit (`width_points=None`);
    or at most `width_points` per group for every segment.

    Timing: the forwards of a few "probe" subnets per resolution that together visit every grid point of every
    segment, each segment timed in place between its neighbours, so it sees the caches and allocator state of a
    real forward. Each round runs every probe at every resolution, in a fresh random order (load that drifts
    during the build then spreads over all points), each as an untimed forward then a timed one (steady state, as
    when a subnet serves many inputs): `warmup` untimed rounds, then rounds until every point has `repeats`
    samples, whose median it keeps. On one CPU thread, samples during which the process lost the CPU
    (wall > CPU time) are retaken, so a table built on a busy machine predicts the latency the model has when it
    runs undisturbed (`build['retaken_samples']` counts them). `overhead_ms` is what a whole forward `model(x)`
    takes beyond its segments: per round, the end-to-end time of each of `overhead_subnets` subnets spread over
    the FLOPs span minus its segments timed in place right after; the median over subnets of their medians.

    Runs with `threads` torch threads (default: the current number), in eval mode under `torch.inference_mode`;
    the thread count, the model's train/eval modes and its active subnet are restored after.
    """
    supernet = _full_supernet(model)
    space = supernet.space
    dev = _normalize_device(device)
    batch_size = _positive(batch_size, 'batch_size')
    warmup = _positive(warmup, 'warmup', 0)
    repeats = _positive(repeats, 'repeats')
    overhead_subnets = _positive(overhead_subnets, 'overhead_subnets', 0)
    if width_points is not None:
        width_points = _positive(width_points, 'width_points', 2)
    threads = torch.get_num_threads() if threads is None else _positive(threads, 'threads')
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f'dtype must be a torch.dtype, got {dtype!r}')
    if resolutions is None:
        resolutions = space.resolutions
    else:
        resolutions = sorted({_positive(r, 'resolution') for r in resolutions})
        outside = [r for r in resolutions if r not in space.resolutions]
        if outside or not resolutions:
            raise ValueError(f'resolutions {outside or "[]"} are not resolutions of the space; allowed: '
                             f'{_describe(space.resolutions)}')
    param = next(supernet.parameters())
    if param.device != dev or param.dtype != dtype:
        raise ValueError(f'the model is on {param.device} in {param.dtype}; build_lut measures it where it is: '
                         f'move it first with model.to({str(dev)!r}, {dtype})')

    segments = _segments(supernet, supernet._walk_channels())
    axes = _grid_axes(space, segments, width_points)
    shapes = [tuple(len(a) for a in ax) for ax in axes]
    probes = _probe_widths(space, segments, axes)
    value_index = [[{w: i for i, w in enumerate(a)} for a in ax] for ax in axes]
    subnets, visits = [], []  # every probe at every resolution; grid index over (resolution, widths) per segment
    for r_idx, r in enumerate(resolutions):
        for p in probes:
            subnets.append(Subnet(r, p))
            points = [_grid_point(vi, seg.groups, p) for vi, seg in zip(value_index, segments)]
            visits.append([-1 if point is None else int(np.ravel_multi_index((r_idx,) + point,
                                                                             (len(resolutions),) + shape))
                           for point, shape in zip(points, shapes)])
    timer = _Timer(_synchronizer(dev), retake=dev.type == 'cpu' and threads == 1)
    modes = [(m, m.training) for m in supernet.modules()]
    previous_threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(seed)
    whole = _spread_subnets(space, overhead_subnets, seed)
    t_start = time.perf_counter()
    try:
        torch.set_num_threads(threads)
        supernet.eval()
        with torch.inference_mode(), supernet.keep_active():
            inputs = {r: torch.randn(batch_size, supernet.in_chans, r, r, generator=generator).to(dev, dtype)
                      for r in sorted(set(resolutions) | {s.resolution for s in whole})}
            _check_chain(supernet, segments, Subnet(resolutions[0], space.max_widths), inputs[resolutions[0]])
            medians, overheads, retaken = _time_segments(
                supernet, segments, subnets, visits, [len(resolutions) * math.prod(s) for s in shapes], whole,
                inputs, warmup, repeats, timer, np.random.default_rng(seed),
                progress=f'build_lut {_architecture(supernet)} ({len(subnets)} + {len(whole)} subnets)'
                if progress else None)
    finally:
        torch.set_num_threads(previous_threads)
        for m, training in modes:
            m.training = training
    blocks = [LatencyBlock(s.name, s.groups, resolutions, ax, np.round(m.reshape((len(resolutions),) + shape), 4))
              for s, ax, m, shape in zip(segments, axes, medians, shapes)]
    table = LatencyTable(
        model=_architecture(supernet), space=space.to_dict(), num_classes=int(supernet.num_classes),
        device=str(dev), device_name=_device_name(dev), torch_version=torch.__version__, threads=threads,
        dtype=str(dtype).replace('torch.', ''), batch_size=batch_size, blocks=blocks, overhead_ms=0.0)
    fit = []
    if whole:
        blocks_ms = table.predict_many(SubnetBatch.from_subnets(whole))  # overhead 0: the blocks' sum
        fit = [{'subnet': s.to_dict(), 'overhead_ms': round(o, 4), 'blocks_ms': round(float(b), 4)}
               for s, o, b in zip(whole, overheads, blocks_ms)]
        table.overhead_ms = fit_overhead_ms(overheads)
    table.build = {'seconds': round(time.perf_counter() - t_start, 2), 'warmup': warmup, 'repeats': repeats,
                   'width_points': width_points, 'auto_max_grid': AUTO_MAX_GRID, 'probe_subnets': len(probes),
                   'retaken_samples': retaken, 'allocator': _allocator_settings(), 'overhead_fit': fit}
    if progress:
        print(f'build_lut: {table!r} in {table.build["seconds"]:.1f} s', file=sys.stderr, flush=True)
    return table


def fit_overhead_ms(overheads: Sequence[float]) -> float:
    """The per-forward overhead from each whole subnet's (end-to-end minus segments) time: their median, rounded
    to 0.1 us and clamped at 0. Timing noise can make the median negative when the true overhead is near zero,
    and a negative constant would predict negative latencies for the fastest subnets."""
    if not len(overheads):
        raise ValueError('fit_overhead_ms needs at least one measured overhead')
    return max(0.0, round(float(np.median(overheads)), 4))


def _check_chain(supernet: SupernetMixin, segments: Sequence['_Segment'], subnet: Subnet, x: torch.Tensor) -> None:
    """The segments run in order must give model(x), or the table would time another forward."""
    supernet.set_subnet(subnet)
    y = x
    for seg in segments:
        y = seg.run(y)
    expected = supernet(x)
    if y.shape != expected.shape or not torch.allclose(y, expected, rtol=1e-3, atol=1e-3):
        raise ValueError(f'{type(supernet).__name__}: running its segments {[s.name for s in segments][:4]}... in '
                         f'order does not reproduce model(x); cannot build a latency table for this forward')


# ---------------------------------------------------------------------------------------------- helpers

def _int_list(value, what: str) -> List[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f'latency table: {what} must be a list of integers, got {value!r}')
    return value


def _space_from_dict(d) -> SearchSpace:
    """A SearchSpace (for validation only: it counts no FLOPs) from `SearchSpace.to_dict()`."""
    try:
        names = [g['name'] for g in d['groups']]
        choices = [_int_list(g['widths'], f'space group {g["name"]!r} widths') for g in d['groups']]
        resolutions = _int_list(d['resolutions'], 'space resolutions')
    except (KeyError, TypeError) as e:
        raise ValueError(f'latency table: "space" must be {{"groups": [{{"name", "widths"}}, ...], "resolutions": '
                         f'[...]}} as SearchSpace.to_dict() writes it; got {str(d)[:200]}') from e
    if not names or not resolutions or any(not c for c in choices):
        raise ValueError('latency table: "space" needs at least one group, one width per group and one resolution')
    return SearchSpace(names, choices, resolutions, ())


def _space_differences(ours: SearchSpace, theirs: SearchSpace) -> List[str]:
    if ours.group_names != theirs.group_names:
        return [f'channel groups {list(ours.group_names)} vs {list(theirs.group_names)}']
    problems = [f'group {n!r} widths {_describe(a)} vs {_describe(b)}'
                for n, a, b in zip(ours.group_names, ours.width_choices, theirs.width_choices) if a != b]
    if ours.resolutions != theirs.resolutions:
        problems.append(f'resolutions {_describe(ours.resolutions)} vs {_describe(theirs.resolutions)}')
    return problems


def _describe_space(space: SearchSpace) -> str:
    return f'{space.num_groups} groups, resolutions {_describe(space.resolutions)}'


def _describe(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 2:
        steps = {b - a for a, b in zip(values, values[1:])}
        if len(steps) == 1:
            return f'{values[0]}..{values[-1]} in steps of {steps.pop()}'
        return f'{values[0]}..{values[-1]} (measured at {", ".join(map(str, values))})'
    return ', '.join(str(v) for v in values)


# ---------------------------------------------------------------------------------------------- budget tables

def record_latency(model: nn.Module, table: LatencyTable):
    """Record `table`'s predicted latency of every budget-table entry of `model` as its `latency_ms` metric, and the
    device it holds for in the table's info, so that `model.set_budget(latency_ms=...)` works. Returns the table."""
    from .budget_table import LATENCY_METRIC, set_table_metrics
    supernet = find_supernet(model)
    table.check_model(supernet)
    entries = supernet.budget_table
    if not len(entries):
        raise RuntimeError('this model has no budget table to record latencies in; train one (train_pss.py) or '
                           'build one with timm_pss.fill_budget_table(model, subnets, loader)')
    ms = table.predict_many(SubnetBatch.from_subnets([e.subnet for e in entries]))
    info = {'latency_device': table.device, 'latency_device_name': table.device_name,
            'latency_threads': str(table.threads), 'latency_batch_size': str(table.batch_size),
            'latency_dtype': table.dtype, 'latency_torch': table.torch_version}
    return set_table_metrics(supernet, [{LATENCY_METRIC: float(v)} for v in ms], info=info)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m timm_pss.latency --model pss_mobilenetv2 --output lut.json`: build and save a table."""
    import argparse
    import timm
    parser = argparse.ArgumentParser(description='Build a latency lookup table for a timm_pss supernet.')
    parser.add_argument('--model', required=True, help='a pss_* model name (with its --model-kwargs space)')
    parser.add_argument('--output', required=True, help='JSON file to write (a new file; see --force)')
    parser.add_argument('--force', action='store_true', help='replace --output if it exists')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (CPU); default: torch\'s')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--width-range', nargs=2, type=float, default=None, metavar=('LO', 'HI'))
    parser.add_argument('--resolutions', nargs=3, type=int, default=None, metavar=('MIN', 'MAX', 'STEP'))
    args = parser.parse_args(argv)
    if args.model not in timm.list_models('pss_*'):
        parser.error(f'--model {args.model} is not a timm_pss supernet; use one of {timm.list_models("pss_*")}')
    try:  # before minutes of measuring, not after
        check_new_file(args.output, force=args.force)
    except ValueError as e:
        parser.exit(2, f'{parser.prog}: error: --output {e}\n')
    kwargs = {k: v for k, v in (('num_classes', args.num_classes), ('width_range', args.width_range),
                                ('resolution_range', args.resolutions)) if v is not None}
    model = timm.create_model(args.model, **kwargs).to(args.device).eval()
    table = build_lut(model, device=args.device, batch_size=args.batch_size, threads=args.threads, progress=True)
    table.save(args.output)
    print(f'{table}\nwrote {args.output}')


if __name__ == '__main__':
    main()
