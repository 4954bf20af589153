"""The supernet mixin: a timm model whose slimmable layers run any subnet of its search space.

A `pss_*` model is its dense timm class (EfficientNet, ResNet) with `SupernetMixin` in front: the dense class
keeps the whole timm contract (forward_features/forward_head, feature_info, group_matcher, grad checkpointing),
the mixin adds the space, the active subnet, the budget table and the input resize, and keeps the timm
attributes that describe widths (`num_features`, `head_hidden_size`, `feature_info`,
`pretrained_cfg['input_size']`) true for the active subnet. `SupernetFeatures` is the same for
`features_only=True` models.
"""
import contextlib
import math
import numbers
import threading
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function
from timm.models import FeatureListNet, build_model_with_cfg, resolve_pretrained_cfg

from .budget_table import (
    LATENCY_METRIC, TABLE_BUFFER, BudgetEntry, BudgetTable, FlopsLike, read_table_buffer, resize_budget_buffers_on_load,
)
from .channel_plan import ChannelPlan
from .hub import check_local_dir_weights, hub_unreachable_reason, missing_weights_error
from .slimmable import SlimBatchNormBase, apply_widths, convert_to_slimmable, slimmable_layers
from .spaces import Channels, Subnet

__all__ = ['SubnetSwitch', 'SupernetMixin', 'SupernetFeatures', 'build_supernet', 'find_supernet',
           'set_input_size_cfg', 'set_budget', 'budget']


def set_input_size_cfg(cfg: Optional[Dict[str, Any]], resolution: int, reduction: int = 32) -> None:
    """Point a timm pretrained_cfg at `resolution` so `resolve_data_config(model=...)` feeds that size."""
    if cfg is None:
        return
    in_chans = cfg.get('input_size', (3,))[0]
    cfg['input_size'] = (in_chans, resolution, resolution)
    if 'pool_size' in cfg:
        side = math.ceil(resolution / reduction)
        cfg['pool_size'] = (side, side)


_SWITCH_LOCK_GUARD = threading.Lock()  # makes the lazy creation of each model's switch lock race-free


class SubnetSwitch:
    """Mixin for an nn.Module of slimmable layers: `space`, `set_subnet`/`active_subnet`, budget table, `set_budget`.

    Subclasses set `space` (a SearchSpace) and call `_init_switch()` before the first `set_subnet`.

    Switching has one door: `activate(subnet, budget_index)` (what `set_subnet`, `set_budget` and
    `set_budget_entry` do after choosing), and `keep_active()` for code that switches and must leave the model as
    it found it (subnet and budget entry).

    Threads: `switch_lock` is a per-model re-entrant lock; `activate`, `set_subnet`, `set_budget` and
    `set_budget_entry` take it, and `keep_active()` and `timm_pss.budget(model, ...)` hold it for their whole `with`
    block (switch, forwards, restore), so threads that each use `with budget(...)` on one shared model are
    serialised and every forward runs the budget its thread asked for. Bare `set_budget(...)` followed by `model(x)` from several threads is NOT safe: another
    thread may switch between the two calls (use `with budget(...)`, or one model per thread).
    """
    # no class-level annotations on the mixins: TorchScript reads the first annotated class of the MRO and cannot
    # parse postponed (string) annotations, so the model's own torch annotations must be the ones it finds
    _feature_info_channels = ()  # tuple of Optional[Channels], one per feature_info entry
    # Python-side switching state, not part of a scripted forward
    __jit_unused_properties__ = ['active_subnet', 'active_budget_index', 'budget_table', 'switch_lock']

    def _init_switch(self) -> None:
        self._index_layers()
        self.register_buffer(TABLE_BUFFER, None)
        self._register_load_state_dict_pre_hook(resize_budget_buffers_on_load, with_module=True)
        self._active_budget_index: Optional[int] = None
        # (buffer tensor, its version, decoded table): holds the tensor itself, so a new buffer that reuses a freed
        # one's id (CPython recycles addresses) can never be mistaken for it
        self._table_cache: Tuple[Optional[torch.Tensor], int, Optional[BudgetTable]] = (None, -1, None)

    @property
    def switch_lock(self) -> threading.RLock:
        """This model's re-entrant switching lock (created on first use; not part of the state dict or pickles)."""
        lock = self.__dict__.get('_switch_lock')
        if lock is None:
            with _SWITCH_LOCK_GUARD:
                lock = self.__dict__.setdefault('_switch_lock', threading.RLock())
        return lock

    def __getstate__(self):
        state = super().__getstate__()
        state.pop('_switch_lock', None)  # locks cannot be copied; a copy (deepcopy, ModelEma) makes its own
        return state

    @property
    def active_subnet(self) -> Subnet:
        return self._active_subnet

    @property
    def active_budget_index(self) -> Optional[int]:
        """Index of the budget-table entry whose BN statistics are in use, or None (shared statistics)."""
        return self._active_budget_index

    def set_subnet(self, subnet: Subnet) -> Subnet:
        """Run `subnet` from now on (validated against `space`) with the shared BN statistics; returns it."""
        return self.activate(subnet)

    def activate(self, subnet: Subnet, budget_index: Optional[int] = None) -> Subnet:
        """Run `subnet` from now on with the BN statistics of budget-table entry `budget_index` (None: the shared
        running statistics); returns the validated subnet.

        An entry's statistics were calibrated for its own subnet, so `budget_index` must name an entry whose
        subnet is `subnet` (else ValueError); a negative index counts from the end. Nothing changes on bad input.
        """
        subnet = self.space.validate(subnet)
        with self.switch_lock:
            if budget_index is not None:
                table = self.budget_table
                budget_index = self._entry_index(table, budget_index)
                if table[budget_index].subnet != subnet:
                    raise ValueError(f'budget-table entry {budget_index} holds BN statistics for '
                                     f'{table[budget_index].subnet}, not for {subnet}; pass budget_index=None to run '
                                     f'this subnet on the shared statistics')
            self._activate(subnet, budget_index)
        return subnet

    @contextlib.contextmanager
    def keep_active(self) -> Iterator[Subnet]:
        """`with model.keep_active():` switch freely inside; on exit, also on error, the subnet and budget entry
        active before are active again. Yields that subnet.

        Holds `switch_lock` for the block, so no other thread switches in between. If the block replaces the
        budget table (a load, `fill_budget_table`), the old entry index means nothing any more: the subnet comes
        back on the shared BN statistics.
        """
        with self.switch_lock:
            subnet, index, table = self._active_subnet, self._active_budget_index, self.budget_table
            try:
                yield subnet
            finally:
                self._activate(subnet, index if self._same_table(table) else None)

    def _same_table(self, table: BudgetTable) -> bool:
        """Whether the budget table is still `table` (a table that no longer decodes is not)."""
        try:
            return self.budget_table is table
        except ValueError:
            return False

    def _index_layers(self) -> None:
        """Remember the slimmable layers (switching then needs no module traversal); redone when layers change."""
        self._switch_layers = tuple(layer for _, layer in slimmable_layers(self))
        self._switch_norms = tuple(m for m in self._switch_layers if isinstance(m, SlimBatchNormBase))

    def _activate(self, subnet: Subnet, budget_index: Optional[int]) -> None:
        """`activate` without its checks, for a subnet and index already known to fit (the hot path)."""
        apply_widths(self, subnet.widths, self._switch_layers)
        for norm in self._switch_norms:
            norm.select_budget_entry(budget_index)
        self._active_subnet = subnet
        self.__dict__['_active_resolution'] = subnet.resolution
        self._active_budget_index = budget_index
        fi = getattr(self.feature_info, 'info', self.feature_info)
        for i, channels in enumerate(self._feature_info_channels):
            if channels is not None:
                fi[i]['num_chs'] = channels.resolve(subnet.widths)
        set_input_size_cfg(getattr(self, 'pretrained_cfg', None), subnet.resolution)

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

    def set_budget(self, flops: Optional[FlopsLike] = None, strict: bool = True, *,
                   latency_ms: Union[None, float, str] = None) -> BudgetEntry:
        """Switch to the best budget-table entry with FLOPs <= `flops`, or predicted latency <= `latency_ms` (give
        exactly one), with its calibrated BN statistics. Best: highest held-out accuracy, then highest FLOPs
        (latency); see `BudgetTable.select`.

        `flops` is a number of MACs or a string like "300M", "1.2G", "300 MFLOPs"; `latency_ms` is milliseconds on
        the device the table's latencies were predicted for (`timm_pss.latency.record_latency`). No data or
        forward pass is needed. Below the smallest entry: ValueError, or with `strict=False` the smallest entry
        and a warning. Returns the chosen entry.
        """
        with self.switch_lock:
            table = self.budget_table
            if latency_ms is not None and flops is None:
                self._check_latency_device(table)
            index, entry, below_smallest = table.choose(flops, strict=strict, latency_ms=latency_ms)
            if below_smallest and flops is not None:
                warnings.warn(f'budget {flops!r} is below the smallest budget-table entry; using that entry '
                              f'({entry.flops} FLOPs)', stacklevel=2)
            if below_smallest and latency_ms is not None:
                warnings.warn(f'latency budget {latency_ms!r} ms is below the smallest budget-table entry; using '
                              f'that entry ({entry.metrics[LATENCY_METRIC]:.4g} ms)', stacklevel=2)
            self._activate(entry.subnet, index)
        return entry

    def set_budget_entry(self, index: int) -> BudgetEntry:
        """Switch to budget-table entry `index` itself (an int; negative counts from the end), with its BN
        statistics (e.g. to measure every entry)."""
        with self.switch_lock:
            table = self.budget_table
            index = self._entry_index(table, index)
            self._activate(table[index].subnet, index)
        return table[index]

    @staticmethod
    def _entry_index(table: BudgetTable, index: int) -> int:
        """`index` as a row of `table` (negative counts from the end); TypeError / IndexError saying what is allowed."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f'a budget-table entry index is an int, got {type(index).__name__} {index!r}')
        index = int(index)
        if not -len(table) <= index < len(table):
            raise IndexError(f'budget-table entry {index} does not exist; the table has {len(table)} entries')
        return index % len(table)

    def _check_latency_device(self, table: BudgetTable) -> None:
        """The table's latencies hold for one device type; refuse a model that now lives on another."""
        recorded = table.info.get('latency_device')
        here = next(iter(self.parameters()), torch.empty(0)).device.type
        if recorded is not None and recorded.split(':')[0] != here:
            raise ValueError(f'this budget table\'s latencies were predicted for {recorded} '
                             f'({table.info.get("latency_device_name", "unknown")}); the model is on {here}: record '
                             f'latencies for this device with timm_pss.latency.record_latency(model, table) and a '
                             f'table from timm_pss.latency.build_lut(model, device={here!r})')


@register_notrace_function
def resize_to_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """`x` resized (bilinear, antialiased) to `resolution` x `resolution` unless it has that size already."""
    if x.shape[-2] != resolution or x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode='bilinear', align_corners=False, antialias=True)
    return x


class SupernetMixin(SubnetSwitch):
    """Adds the supernet behaviour to a timm model class (put it first in the bases).

    Subclasses build their dense timm model, then call `_init_supernet(...)`, and implement `_walk_channels`.
    """
    dense_architecture = ''  # the timm model an exported subnet is an instance of

    def _init_supernet(
            self,
            width_range: Tuple[float, float],
            resolution_range: Tuple[int, int, int],
            fixed_groups: Tuple[str, ...] = (),
    ) -> None:
        self._space_args = dict(width_range=tuple(width_range), resolution_range=tuple(resolution_range),
                                fixed_groups=tuple(fixed_groups))
        self._full_num_features = self.num_features
        self._full_head_hidden_size = self.head_hidden_size
        convert_to_slimmable(self)
        self._rebuild_plan()
        self._init_switch()
        self.set_subnet(self.space.max_subnet())

    def _walk_channels(self) -> ChannelPlan:
        """Walk this architecture in forward order and record its channel plan."""
        raise NotImplementedError

    def _rebuild_plan(self) -> None:
        plan = self._walk_channels()
        plan.attach(self)
        self.space = plan.build_space(**self._space_args)
        self._features_channels: Channels = plan.features
        self._feature_info_channels = [plan.taps[fi['module']] for fi in self.feature_info]

    def _activate(self, subnet: Subnet, budget_index: Optional[int]) -> None:
        super()._activate(subnet, budget_index)
        self.num_features = self._features_channels.resolve(subnet.widths)
        self.head_hidden_size = self.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dense forward at the active resolution: other input sizes are resized (bilinear, antialiased)."""
        x = resize_to_resolution(x, self._active_resolution)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """timm's reset_classifier; the new classifier is slimmable and sized for the widest subnet."""
        with self.keep_active():
            self.num_features = self._full_num_features
            self.head_hidden_size = self._full_head_hidden_size
            super().reset_classifier(num_classes, global_pool)
            convert_to_slimmable(self)
            self._rebuild_plan()
            self._index_layers()

    def extra_repr(self) -> str:
        return f'space={self.space!r}, active_subnet={self._active_subnet}, budget_table={self.budget_table!r}'


class SupernetFeatures(SubnetSwitch, FeatureListNet):
    """timm's FeatureListNet over a supernet (`features_only=True`), still switchable with `set_subnet`/`set_budget`."""

    def __init__(self, model: nn.Module, out_indices=(0, 1, 2, 3, 4), **kwargs):
        table = model._buffers.get(TABLE_BUFFER)
        super().__init__(model, out_indices=out_indices, **kwargs)
        self.space = model.space
        self._feature_info_channels = [
            channels if i in self.feature_info.out_indices else None
            for i, channels in enumerate(model._feature_info_channels)]
        self._init_switch()
        self._buffers[TABLE_BUFFER] = table
        self._activate(model.active_subnet, model.active_budget_index)


def build_supernet(model_cls, variant: str, pretrained: bool = False, feature_cfg: Optional[dict] = None, **kwargs):
    """timm's `build_model_with_cfg` for supernets: `features_only=True` gives a switchable `SupernetFeatures`,
    and the pretrained_cfg follows the active subnet from the start."""
    feature_cfg = dict(feature_cfg or {}, feature_cls=SupernetFeatures)
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
        check_local_dir_weights(cfg)
        unreachable = hub_unreachable_reason(cfg, kwargs.get('cache_dir'))
        if unreachable:  # fail now rather than after huggingface_hub's retries
            raise missing_weights_error(variant, cfg, ConnectionError(unreachable))
    try:
        model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    except OSError as e:  # huggingface_hub / download failures: offline, no such repo or file
        if not pretrained:
            raise
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
        raise missing_weights_error(variant, cfg, e) from e
    if isinstance(model, SubnetSwitch):
        model.set_subnet(model.active_subnet)
    return model


def find_supernet(model: nn.Module) -> SubnetSwitch:
    """The module that owns `set_subnet` inside DDP / DataParallel / ModelEma / torch.compile wrappers."""
    seen = model
    for _ in range(8):
        if isinstance(seen, SubnetSwitch):
            return seen
        inner = getattr(seen, '_orig_mod', None) or getattr(seen, 'module', None)
        if not isinstance(inner, nn.Module):
            break
        seen = inner
    raise TypeError(f'{type(model).__name__} is not a timm_pss supernet and wraps none '
                    f'(looked through .module and ._orig_mod)')


def set_budget(model: nn.Module, flops: Optional[FlopsLike] = None, strict: bool = True, *,
               latency_ms: Union[None, float, str] = None) -> BudgetEntry:
    """`model.set_budget(flops)` / `model.set_budget(latency_ms=...)` for a supernet or anything wrapping one
    (DDP, ModelEma, torch.compile, features_only). Returns the chosen budget-table entry."""
    return find_supernet(model).set_budget(flops, strict=strict, latency_ms=latency_ms)


@contextlib.contextmanager
def budget(model: nn.Module, flops: Optional[FlopsLike] = None, strict: bool = True, *,
           latency_ms: Union[None, float, str] = None) -> Iterator[BudgetEntry]:
    """`with timm_pss.budget(model, '300M') as entry:` (or `latency_ms=5`) runs that budget, then restores the
    previous subnet.

    Thread-safe per model: the block holds the model's re-entrant `switch_lock` from the switch to the restore,
    so threads sharing one model each run their own budget, one block at a time (the forwards of different
    threads do not overlap). Bare `model.set_budget(...)` + `model(x)` from several threads is not made safe.
    """
    supernet = find_supernet(model)
    with supernet.keep_active():
        yield supernet.set_budget(flops, strict=strict, latency_ms=latency_ms)
