"""Budget tables: the best known subnet per FLOPs budget, with BN statistics calibrated for each entry.

The table lives in the state dict so that every load path restores it: the entries (flops, subnet, metrics) as
UTF-8 JSON in the uint8 buffer `pss_budget_table` of the supernet, and per-entry BN statistics in each slimmable
BN layer's `budget_running_mean` / `budget_running_var` buffers (entries x channels). Without a table these
buffers are None and absent from the state dict, so an untrained supernet's state dict is exactly its dense
timm twin's.
"""
from __future__ import annotations

import json
import math
import numbers
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .slimmable import SlimBatchNormBase
from .spaces import SearchSpace, Subnet

__all__ = ['BudgetChoice', 'BudgetEntry', 'BudgetTable', 'budget_label', 'format_flops', 'parse_flops', 'parse_latency',
           'LATENCY_METRIC',
           'TABLE_BUFFER', 'read_table_buffer', 'write_budget_table', 'resize_budget_buffers_on_load',
           'set_table_metrics']

TABLE_BUFFER = 'pss_budget_table'
TABLE_FORMAT = 'timm_pss.budget_table/1'
_BN_BUFFERS = ('budget_running_mean', 'budget_running_var')
_UNITS = {'': 1.0, 'K': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12}
_BUDGET_RE = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*'
                        r'(?:FLOPs?|MACs?|flops?|macs?)?\s*$')

FlopsLike = Union[int, float, str]
LATENCY_METRIC = 'latency_ms'  # the budget-table metric that set_budget(latency_ms=...) selects by
SELECTION_METRIC = 'heldout_top1'  # set_budget's choice among the entries that fit a budget
_LATENCY_RE = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?:ms)?\s*$')


def parse_flops(value: FlopsLike) -> float:
    """A FLOPs (MACs) budget as a number: `3e8`, `300_000_000`, `'300M'`, `'1.2G'`, `'300 MFLOPs'`, `'1.5 GMACs'`.

    Numbers are taken as they are; strings are a number with an optional K/M/G/T suffix (any case; `m` is mega)
    and an optional FLOPs/MACs word. Non-numbers, NaN, infinities, zero and negatives raise ValueError.
    """
    if isinstance(value, str):
        match = _BUDGET_RE.match(value)
        if match is None:
            raise ValueError(f'cannot read {value!r} as a FLOPs budget; write a number of MACs or a string like '
                             f'"300M", "1.2G", "300 MFLOPs" (suffixes K, M, G, T)')
        number = float(match.group(1)) * _UNITS[match.group(2).upper()]
        if math.isfinite(number):
            number = float(round(number))  # whole MACs
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = _as_float(value)
    else:
        raise ValueError(f'a FLOPs budget is a number or a string like "300M", got {type(value).__name__} {value!r}')
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f'a FLOPs budget must be a positive finite number (at most {sys.float_info.max:.4g} MACs), '
                         f'got {_short(value)}')
    return number


def _as_float(value: numbers.Real) -> float:
    """float(value), with integers too large for a float (e.g. 10**400) as infinity instead of OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _short(value) -> str:
    """repr(value), shortened (at most about 60 characters), for error messages about possibly huge inputs."""
    if isinstance(value, int) and value.bit_length() > 200:
        digits = len(str(abs(value))) if value.bit_length() < 14000 else 'over 4000'
        return f'{"a negative" if value < 0 else "an"} integer of {digits} digits'
    text = repr(value)
    return text if len(text) <= 60 else f'{text[:40]}...({len(text)} characters)'


def parse_latency(value: Union[int, float, str]) -> float:
    """A latency budget in milliseconds: `5`, `2.5`, `'5ms'`, `'5 ms'`; must be positive and finite."""
    if isinstance(value, str):
        match = _LATENCY_RE.match(value)
        if match is None:
            raise ValueError(f'cannot read {value!r} as a latency budget; write milliseconds as a number or a '
                             f'string like "5ms"')
        number = float(match.group(1))
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = _as_float(value)
    else:
        raise ValueError(f'a latency budget is a number of milliseconds, got {type(value).__name__} {value!r}')
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f'a latency budget must be a positive finite number of milliseconds, got {_short(value)}')
    return number


def format_flops(flops: float) -> str:
    return f'{flops / 1e9:.3g}G' if flops >= 1e9 else f'{flops / 1e6:.2f}M'


def budget_label(flops: float) -> str:
    """A budget string that `flops` MACs fit in: MMACs rounded up to 2 decimals (e.g. 10,203,656 -> '10.21M')."""
    return f'{math.ceil(flops / 1e4) / 100:.2f}M'


def _listed(values: Sequence, limit: int = 5) -> str:
    """`values` for an error message: at most `limit` of them, then how many more."""
    shown = ', '.join(str(v) for v in values[:limit])
    return f'[{shown}, ... ({len(values) - limit} more)]' if len(values) > limit else f'[{shown}]'


@dataclass(frozen=True)
class BudgetEntry:
    """One budget-table entry: a subnet, its FLOPs, and what was measured for it (e.g. top1, score)."""
    flops: int
    subnet: Subnet
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self):
        # a NaN would win or lose every comparison in set_budget's choice, and a table holding one could be saved
        # but not loaded again: refuse it where entries are made
        bad = [k for k, v in self.metrics.items()
               if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)]
        if bad:
            raise ValueError(f'metric {bad[0]!r} is {self.metrics[bad[0]]!r}; metrics must be finite numbers')

    def to_dict(self) -> dict:
        return {'flops': self.flops, 'subnet': self.subnet.to_dict(), 'metrics': dict(self.metrics)}


class BudgetChoice(NamedTuple):
    """What `BudgetTable.choose` picked for a budget: the entry, its row, and whether the budget was below every
    entry (only possible with strict=False: the smallest entry stands in, and the caller warns)."""
    index: int
    entry: BudgetEntry
    below_smallest: bool


class BudgetTable(Sequence[BudgetEntry]):
    """Budget-table entries for a space with the given channel group names.

    The order is the storage order (row i of every per-entry BN buffer belongs to entry i) and is never changed;
    `fill_budget_table` stores entries by ascending FLOPs. `info` holds table-wide facts as strings, e.g. the device
    the entries' `latency_ms` were predicted for.
    """

    def __init__(self, group_names: Sequence[str], entries: Sequence[BudgetEntry] = (),
                 info: Optional[Mapping[str, str]] = None):
        self.group_names = tuple(group_names)
        self.entries: Tuple[BudgetEntry, ...] = tuple(entries)
        self.info: Dict[str, str] = {str(k): str(v) for k, v in (info or {}).items()}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        return self.entries[i]

    def __iter__(self) -> Iterator[BudgetEntry]:
        return iter(self.entries)

    def __eq__(self, other) -> bool:
        return isinstance(other, BudgetTable) and ((self.group_names, self.entries, self.info)
                                                   == (other.group_names, other.entries, other.info))

    def select(self, budget: Optional[FlopsLike] = None, strict: bool = True, *,
               latency_ms: Union[None, float, str] = None) -> Tuple[int, BudgetEntry]:
        """(index, entry): the best entry with FLOPs <= `budget`, or with recorded `latency_ms` <= `latency_ms`
        (exactly one of the two). Best: the highest `heldout_top1` (accuracy on held-out training data, recorded by
        finalisation), so an entry beaten by a cheaper one is never picked; then the highest FLOPs (latency), then
        the higher top1, then the earlier entry. Without held-out accuracies: the highest FLOPs (latency).

        A budget below the smallest entry raises ValueError, or with `strict=False` gives the smallest entry.
        """
        index, entry, _ = self.choose(budget, strict, latency_ms=latency_ms)
        return index, entry

    def choose(self, budget: Optional[FlopsLike] = None, strict: bool = True, *,
               latency_ms: Union[None, float, str] = None) -> BudgetChoice:
        """`select`, also telling whether the budget was below every entry; the budget is parsed once, here."""
        if (budget is None) == (latency_ms is None):
            raise ValueError('give exactly one budget: flops (MACs, or a string like "300M") or latency_ms '
                             '(milliseconds on the device the table\'s latencies were predicted for)')
        if not self.entries:
            raise RuntimeError('this model has no budget table: load trained weights that carry one '
                               '(pretrained=True or a checkpoint saved by timm_pss), or build one with '
                               'timm_pss.fill_budget_table(model, subnets, loader)')
        if latency_ms is None:
            limit, what = parse_flops(budget), 'budget {} FLOPs'
            unit, exact = format_flops, (lambda v: f'{format_flops(v)} ({int(v)} MACs)')
            values = [float(e.flops) for e in self.entries]
        else:
            limit, what = parse_latency(latency_ms), 'latency budget {}'
            unit = exact = (lambda v: f'{v:.4g} ms')
            values = [e.metrics.get(LATENCY_METRIC) for e in self.entries]
            if any(v is None for v in values):
                raise ValueError(f'this budget table records no predicted latency for entries '
                                 f'{_listed([i for i, v in enumerate(values) if v is None])}: record it with '
                                 f'timm_pss.latency.record_latency(model, table) for a LatencyTable of your device')
        fitting = [i for i, v in enumerate(values) if v <= limit]
        if not fitting:
            smallest = min(range(len(values)), key=lambda i: (values[i], i))
            if strict:
                raise ValueError(f'{what.format(unit(limit))} is below the smallest budget-table entry, '
                                 f'{exact(values[smallest])}; pass a budget of at least that, or strict=False to get '
                                 f'the smallest entry')
            return BudgetChoice(smallest, self.entries[smallest], True)
        best = max(fitting, key=lambda i: (self.entries[i].metrics.get(SELECTION_METRIC, -math.inf), values[i],
                                           self.entries[i].metrics.get('top1', -math.inf), -i))
        return BudgetChoice(best, self.entries[best], False)

    def serving_budgets(self) -> List[Optional[str]]:
        """Per entry, a budget string for which `set_budget` serves exactly that entry (its MMACs rounded up, or
        its exact MACs where rounding up would reach a better entry), or None for an entry that no budget serves
        (a cheaper entry scores at least as well on held-out data)."""
        labels: List[Optional[str]] = []
        for i, e in enumerate(self.entries):
            if self.choose(e.flops).index != i:
                labels.append(None)
                continue
            label = budget_label(e.flops)
            labels.append(label if self.choose(label).index == i else str(e.flops))
        return labels

    def to_json(self) -> str:
        doc = {'format': TABLE_FORMAT, 'group_names': list(self.group_names),
               'entries': [e.to_dict() for e in self.entries]}
        if self.info:
            doc['info'] = dict(self.info)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = 'budget table') -> 'BudgetTable':
        """Parse and check a table; every problem is a ValueError naming `where` and what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ValueError(f'{where}: not valid JSON ({e})') from None
        except RecursionError:
            raise ValueError(f'{where}: JSON nested too deeply (a budget table is an object of entry lists, '
                             f'a few levels deep)') from None
        if not isinstance(doc, dict) or doc.get('format') != TABLE_FORMAT:
            raise ValueError(f'{where}: expected a JSON object with "format": "{TABLE_FORMAT}"')
        names, raw = doc.get('group_names'), doc.get('entries')
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(raw, list):
            raise ValueError(f'{where}: "group_names" must be a list of strings and "entries" a list')
        entries = []
        for i, e in enumerate(raw):
            try:
                metrics = e.get('metrics', {})
                if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in metrics.values()):
                    raise ValueError('metrics must map names to numbers (true / false are not numbers)')
                flops = e['flops']
                if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not 0 <= flops < 2 ** 63:
                    raise ValueError(f'"flops" must be a finite number of MACs in [0, 2**63), got {_short(flops)}')
                entry = BudgetEntry(int(flops), Subnet.from_dict(e['subnet']),
                                    {str(k): float(v) for k, v in metrics.items()})
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
                raise ValueError(f'{where}: entry {i} is malformed ({err})') from None
            entries.append(entry)
        info = doc.get('info', {})
        if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
            raise ValueError(f'{where}: "info" must map names to strings')
        return cls(names, entries, info)

    def conform(self, space: SearchSpace, where: str = 'budget table') -> 'BudgetTable':
        """This table for a model of `space`: same groups and subnets required (else ValueError), FLOPs recounted.

        FLOPs depend on the head (e.g. `num_classes`), so a table loaded into a model with another head gets that
        model's counts; the recorded metrics stay as measured.
        """
        if self.group_names != tuple(space.group_names):
            raise ValueError(f'{where}: made for channel groups {list(self.group_names)}, this model has '
                             f'{list(space.group_names)}')
        entries = []
        for i, e in enumerate(self.entries):
            try:
                space.validate(e.subnet)
            except ValueError as err:
                raise ValueError(f'{where}: entry {i} is not in this model\'s space: {err}') from None
            entries.append(BudgetEntry(space.flops(e.subnet), e.subnet, e.metrics))
        return BudgetTable(self.group_names, entries, self.info)

    def __str__(self) -> str:
        metric_names = sorted({k for e in self.entries for k in e.metrics})
        head = ['#', 'FLOPs', 'res'] + metric_names + ['widths']
        rows = [[str(i), format_flops(e.flops), str(e.subnet.resolution)]
                + [f'{e.metrics[m]:#.4g}' if m in e.metrics else '-' for m in metric_names]
                + [' '.join(str(w) for w in e.subnet.widths)] for i, e in enumerate(self.entries)]
        if not rows:
            return 'BudgetTable (empty)'
        sizes = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
        lines = ['  '.join(v.rjust(s) if c < len(head) - 1 else v for c, (v, s) in enumerate(zip(r, sizes)))
                 for r in [head] + rows]
        return '\n'.join([f'BudgetTable ({len(rows)} entries)'] + lines)

    def __repr__(self) -> str:
        return f'BudgetTable({len(self)} entries, groups={len(self.group_names)})'


def _table_tensor(table: BudgetTable, device=None) -> torch.Tensor:
    return torch.frombuffer(bytearray(table.to_json().encode('utf-8')), dtype=torch.uint8).to(device)


def read_table_buffer(tensor: Optional[torch.Tensor], group_names: Sequence[str],
                      where: str = TABLE_BUFFER) -> BudgetTable:
    """Decode the `pss_budget_table` buffer (None: an empty table)."""
    if tensor is None:
        return BudgetTable(group_names)
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(f'{where}: expected a 1-D uint8 tensor of JSON, got {tensor.dtype} of shape '
                         f'{tuple(tensor.shape)}')
    try:
        text = bytes(tensor.cpu().tolist()).decode('utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f'{where}: not UTF-8 ({e})') from None
    return BudgetTable.from_json(text, where=where)


def _budget_layers(module: nn.Module) -> List[Tuple[str, SlimBatchNormBase]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, SlimBatchNormBase)]


@torch.no_grad()
def write_budget_table(module: nn.Module, table: BudgetTable,
                       bn_stats: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Store `table` and per-entry BN stats (layer name -> (mean, var), each entries x channels) in `module`."""
    layers = _budget_layers(module)
    missing = [n for n, _ in layers if n not in bn_stats]
    if len(table) and missing:
        raise ValueError(f'no per-entry BN statistics for layers {missing[:5]}')
    for name, layer in layers if len(table) else ():  # check every layer before changing any
        for buf, stats in zip(_BN_BUFFERS, bn_stats[name]):
            _check_entry_stats(f'{name}.{buf}', stats, (len(table), layer.num_features), len(table), buf)
    for name, layer in layers:
        if len(table):
            layer.set_budget_stats(*bn_stats[name])
        else:
            layer.clear_budget_stats()
    device = next(module.parameters()).device
    module._buffers[TABLE_BUFFER] = _table_tensor(table, device) if len(table) else None
    _forget_active_entry(module)


def resize_budget_buffers_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys,
                                  unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: size the budget buffers to the incoming table (absent keys: no table).

    Everything is checked before anything changes, so a refused load leaves the model exactly as it was: a
    malformed table, a table for another space, per-entry BN statistics of the wrong shape, or non-finite
    statistics (a negative running_var included) raise ValueError naming the offending key. After a load the
    model runs its active subnet on the shared BN statistics (`active_budget_index` is None).
    """
    key = prefix + TABLE_BUFFER
    layers = _budget_layers(module)
    if key not in state_dict:
        stray = [prefix + f'{n}.{b}' for n, _ in layers for b in _BN_BUFFERS if prefix + f'{n}.{b}' in state_dict]
        if stray:
            raise ValueError(f'{stray[0]}: per-entry BN statistics without a budget table ({key} is missing)')
        write_budget_table(module, BudgetTable(module.space.group_names), {})
        return
    stored = read_table_buffer(state_dict[key], module.space.group_names, where=key)
    table = stored.conform(module.space, where=key)
    for name, layer in layers:
        for buf in _BN_BUFFERS:
            k = prefix + f'{name}.{buf}'
            if k not in state_dict:
                raise ValueError(f'{k}: missing; the budget table {key} has {len(table)} entries and every BN '
                                 f'layer needs its per-entry statistics')
            _check_entry_stats(k, state_dict[k], (len(table), layer.num_features), len(table), buf)
    # all checked: apply
    if table != stored:
        state_dict[key] = _table_tensor(table)
    for name, layer in layers:  # placeholders of the incoming shapes, which load_state_dict then fills
        layer.set_budget_stats(*(torch.empty(state_dict[prefix + f'{name}.{buf}'].shape, dtype=torch.float32,
                                             device=layer.weight.device) for buf in _BN_BUFFERS))
    module._buffers[TABLE_BUFFER] = torch.empty_like(state_dict[key], device=next(module.parameters()).device)
    _forget_active_entry(module)


def _check_entry_stats(key: str, stats, shape: Tuple[int, int], entries: int, buf: str) -> None:
    """Per-entry BN statistics must be a floating tensor of `shape`, finite, and variances must be >= 0."""
    if not isinstance(stats, torch.Tensor) or not stats.is_floating_point():
        raise ValueError(f'{key}: expected a floating-point tensor, got '
                         f'{getattr(stats, "dtype", type(stats).__name__)}')
    if tuple(stats.shape) != shape:
        raise ValueError(f'{key}: shape {tuple(stats.shape)} does not match the budget table ({entries} entries) '
                         f'and the layer ({shape[1]} channels)')
    bad = ~torch.isfinite(stats)
    if buf == 'budget_running_var':
        bad |= stats < 0
    if bad.any():
        row, channel = (int(i) for i in bad.nonzero()[0])
        what = 'finite and >= 0' if buf == 'budget_running_var' else 'finite'
        raise ValueError(f'{key}: entry {row}, channel {channel} is {stats[row, channel].item()}; per-entry BN '
                         f'statistics must be {what}')


def _forget_active_entry(module: nn.Module) -> None:
    """After the table changed, no entry's statistics are in use: the active subnet runs on the shared ones."""
    if '_active_budget_index' in module.__dict__:
        module._active_budget_index = None


def set_table_metrics(module: nn.Module, metrics: Sequence[Mapping[str, float]],
                      info: Optional[Mapping[str, str]] = None) -> BudgetTable:
    """Merge `metrics[i]` (e.g. {'top1': 71.2, 'top5': 90.1}) into entry i of `module`'s budget table, and `info`
    into the table's info.

    Only the recorded metrics change; subnets and per-entry BN statistics stay. Returns the new table.
    """
    table = module.budget_table
    if len(metrics) != len(table):
        raise ValueError(f'{len(metrics)} metric sets for a budget table of {len(table)} entries')
    merged = BudgetTable(table.group_names, [
        BudgetEntry(e.flops, e.subnet, {**e.metrics, **{str(k): float(v) for k, v in m.items()}})
        for e, m in zip(table, metrics)], {**table.info, **(info or {})})
    module._buffers[TABLE_BUFFER] = _table_tensor(merged, next(module.parameters()).device)
    return merged
