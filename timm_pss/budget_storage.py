"""How a supernet keeps its budget table in the state dict, so that every load path restores it.

The entries are UTF-8 JSON in the uint8 buffer `pss_budget_table`; the per-entry BN statistics are each slimmable
BN layer's `budget_running_mean` / `budget_running_var` buffers (entries x channels). Without a table these
buffers are None and absent from the state dict, so an untrained supernet's state dict is exactly its dense timm
twin's. `BudgetTableStorage` is the part of the supernet class that owns them: nothing else writes them.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import torch

from .budget_table import BudgetEntry, BudgetTable
from .load_checks import check_state_dict
from .slimmable import SlimBatchNormBase

__all__ = ['TABLE_BUFFER', 'BudgetTableStorage', 'read_table_buffer']

TABLE_BUFFER = 'pss_budget_table'
_BN_BUFFERS = ('budget_running_mean', 'budget_running_var')


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


def _table_tensor(table: BudgetTable, device=None) -> torch.Tensor:
    return torch.frombuffer(bytearray(table.to_json().encode('utf-8')), dtype=torch.uint8).to(device)


class BudgetTableStorage:
    """Mixin of the supernet classes (`SubnetSwitch`): the budget table and per-entry BN statistics as buffers.

    The host sets `space` and calls `_init_budget_storage()`; it keeps `_active_budget_index` (the entry whose BN
    statistics are in use), which every change of the table resets to None.
    """

    def _init_budget_storage(self) -> None:
        self.register_buffer(TABLE_BUFFER, None)
        self._register_load_state_dict_pre_hook(_resize_budget_buffers_on_load, with_module=True)
        # (buffer tensor, its version, decoded table): holds the tensor itself, so a new buffer that reuses a freed
        # one's id (CPython recycles addresses) can never be mistaken for it
        self._table_cache: Tuple[Optional[torch.Tensor], int, Optional[BudgetTable]] = (None, -1, None)

    @property
    def budget_table(self) -> BudgetTable:
        """The budget table (entries by ascending FLOPs); empty until trained or filled."""
        tensor = self._buffers.get(TABLE_BUFFER)
        version = -1 if tensor is None else tensor._version
        cached, cached_version, table = self._table_cache
        if table is None or cached is not tensor or cached_version != version:
            table = read_table_buffer(tensor, self.space.group_names)
            self._table_cache = (tensor, version, table)
        return table

    def share_budget_storage(self, other: 'BudgetTableStorage') -> None:
        """Use the budget table of `other`, a supernet whose BN layers this module shares (features_only)."""
        self._buffers[TABLE_BUFFER] = getattr(other, TABLE_BUFFER)

    @torch.no_grad()
    def store_budget_table(self, table: BudgetTable,
                           bn_stats: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store `table` and per-entry BN stats (layer name -> (mean, var), each entries x channels)."""
        layers = self._budget_layers()
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
        device = next(self.parameters()).device
        self._buffers[TABLE_BUFFER] = _table_tensor(table, device) if len(table) else None
        self._forget_active_entry()

    def set_table_metrics(self, metrics: Sequence[Mapping[str, float]],
                          info: Optional[Mapping[str, str]] = None) -> BudgetTable:
        """Merge `metrics[i]` (e.g. {'top1': 71.2, 'top5': 90.1}) into entry i of the budget table, and `info` into
        the table's info.

        Only the recorded metrics change; subnets and per-entry BN statistics stay. Returns the new table.
        """
        table = self.budget_table
        if len(metrics) != len(table):
            raise ValueError(f'{len(metrics)} metric sets for a budget table of {len(table)} entries')
        merged = BudgetTable(table.group_names, [
            BudgetEntry(e.flops, e.subnet, {**e.metrics, **{str(k): float(v) for k, v in m.items()}})
            for e, m in zip(table, metrics)], {**table.info, **(info or {})})
        self._buffers[TABLE_BUFFER] = _table_tensor(merged, next(self.parameters()).device)
        return merged

    def _apply(self, fn, recurse=True):
        """`.to()` / `.half()` / `.cuda()`, refused before anything changes when the conversion would turn finite
        per-entry BN statistics into inf or NaN (float16 holds at most 65504): a budget entry would then run on
        broken statistics without a word."""
        for _, norm in self._budget_layers():
            for name in _BN_BUFFERS:
                stats = norm._buffers.get(name)
                if stats is None or not stats.is_floating_point():
                    continue
                converted = fn(stats)
                if converted.is_floating_point() and not torch.isfinite(converted).all():
                    raise ValueError(f'converting to {converted.dtype} would make the per-entry BN statistics of '
                                     f'{type(norm).__name__} layers infinite (largest |value| '
                                     f'{stats.abs().max().item():.4g}); keep the model in float32, or use '
                                     f'bfloat16 or torch.autocast')
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's `load_state_dict`, checked whole first: a missing or unexpected key (under `strict`), a tensor
        of the wrong shape or a bad budget table raises before anything changes (torch alone would have copied the
        modules before the one that fails). The budget table is checked first: its errors say most (a table made
        for another model)."""
        self._check_budget_state(state_dict, '')
        check_state_dict(self, state_dict, '', strict, self._budget_keys(''))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _budget_keys(self, prefix: str) -> set:
        """The state-dict keys the budget storage checks itself: the table and each BN layer's per-entry buffers."""
        return {prefix + TABLE_BUFFER} | {prefix + f'{n}.{b}' for n, _ in self._budget_layers() for b in _BN_BUFFERS}

    def _budget_layers(self) -> List[Tuple[str, SlimBatchNormBase]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SlimBatchNormBase)]

    def _forget_active_entry(self) -> None:
        """After the table changed, no entry's statistics are in use: the active subnet runs on the shared ones."""
        if '_active_budget_index' in self.__dict__:
            self._active_budget_index = None

    def _resize_for_load(self, state_dict, prefix: str, checked: Optional[Tuple[BudgetTable, BudgetTable]]) -> None:
        """Size the budget buffers to the incoming table `checked` by `_check_budget_state` (None: no table).

        After a load the model runs its active subnet on the shared BN statistics (`active_budget_index` is None).
        """
        key = prefix + TABLE_BUFFER
        if checked is None:
            self.store_budget_table(BudgetTable(self.space.group_names), {})
            return
        table, stored = checked
        if table != stored:
            state_dict[key] = _table_tensor(table)
        for name, layer in self._budget_layers():  # placeholders of the incoming shapes, which the load then fills
            layer.set_budget_stats(*(torch.empty(state_dict[prefix + f'{name}.{buf}'].shape, dtype=torch.float32,
                                                 device=layer.weight.device) for buf in _BN_BUFFERS))
        self._buffers[TABLE_BUFFER] = torch.empty_like(state_dict[key], device=next(self.parameters()).device)
        self._forget_active_entry()

    def _check_budget_state(self, state_dict, prefix: str) -> Optional[Tuple[BudgetTable, BudgetTable]]:
        """(table conformed to this space, table as stored), or None without a table; changes nothing.

        A malformed table, a table for another space, per-entry BN statistics of the wrong shape, or non-finite
        statistics (a negative running_var included) raise ValueError naming the offending key.
        """
        key = prefix + TABLE_BUFFER
        layers = self._budget_layers()
        if key not in state_dict:
            stray = [prefix + f'{n}.{b}' for n, _ in layers for b in _BN_BUFFERS if prefix + f'{n}.{b}' in state_dict]
            if stray:
                raise ValueError(f'{stray[0]}: per-entry BN statistics without a budget table ({key} is missing)')
            return None
        stored = read_table_buffer(state_dict[key], self.space.group_names, where=key)
        table = stored.conform(self.space, where=key)
        for name, layer in layers:
            for buf in _BN_BUFFERS:
                k = prefix + f'{name}.{buf}'
                if k not in state_dict:
                    raise ValueError(f'{k}: missing; the budget table {key} has {len(table)} entries and every BN '
                                     f'layer needs its per-entry statistics')
                _check_entry_stats(k, state_dict[k], (len(table), layer.num_features), len(table), buf)
        return table, stored


def _resize_budget_buffers_on_load(module: BudgetTableStorage, state_dict, prefix, local_metadata, strict,
                                   missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: every tensor's shape checked (`check_state_dict`; torch hands hooks strict=True
    whatever the caller asked, so keys are checked by `BudgetTableStorage.load_state_dict`) after the budget
    table's own checks, then `BudgetTableStorage._resize_for_load`."""
    checked = module._check_budget_state(state_dict, prefix)
    check_state_dict(module, state_dict, prefix, False, module._budget_keys(prefix))
    module._resize_for_load(state_dict, prefix, checked)


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
