"""The latency lookup table (`LatencyTable`): prediction, applicability checks, JSON load/save, and recording
predicted latencies in a model's budget table."""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..budget_table import LATENCY_METRIC
from ..files import write_text_atomic
from ..spaces import SearchSpace, Subnet, SubnetBatch
from ..supernet import find_supernet
from .device import describe_device, normalize_device
from .grid import LatencyBlock, describe_axis
from .segments import architecture_name, full_supernet, forward_segments

__all__ = ['LatencyTable', 'FORMAT', 'predict_latency', 'record_latency']

FORMAT = 'timm_pss.latency_table/1'

_REQUIRED_KEYS = ('format', 'model', 'space', 'num_classes', 'device', 'device_name', 'torch', 'threads', 'dtype',
                  'batch_size', 'overhead_ms', 'block_names', 'blocks')
_BLOCK_KEYS = ('name', 'groups', 'resolutions', 'widths', 'ms')


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
        supernet = full_supernet(model)
        name = architecture_name(supernet)
        problems = []
        if name != self.model:
            problems.append(f'architecture {self.model} vs {name}')
        if supernet.num_classes != self.num_classes:
            problems.append(f'num_classes {self.num_classes} vs {supernet.num_classes}')
        problems += _space_differences(self.space, supernet.space)
        if not problems:
            segments = forward_segments(supernet, supernet.channel_plan())
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
            dev = normalize_device(self.device if device is None else device)
            name = describe_device(dev)
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
        except RecursionError:
            raise ValueError('latency table: JSON nested too deeply (a table is an object a few levels deep)') from None
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
    problems = [f'group {n!r} widths {describe_axis(a)} vs {describe_axis(b)}'
                for n, a, b in zip(ours.group_names, ours.width_choices, theirs.width_choices) if a != b]
    if ours.resolutions != theirs.resolutions:
        problems.append(f'resolutions {describe_axis(ours.resolutions)} vs {describe_axis(theirs.resolutions)}')
    return problems


def _describe_space(space: SearchSpace) -> str:
    return f'{space.num_groups} groups, resolutions {describe_axis(space.resolutions)}'


def record_latency(model: nn.Module, table: LatencyTable):
    """Record `table`'s predicted latency of every budget-table entry of `model` as its `latency_ms` metric, and the
    device it holds for in the table's info, so that `model.set_budget(latency_ms=...)` works. Returns the table."""
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
    return supernet.set_table_metrics([{LATENCY_METRIC: float(v)} for v in ms], info=info)
