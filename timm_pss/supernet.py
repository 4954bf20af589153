"""The supernet mixin: a timm model whose slimmable layers run any subnet of its search space.

A `pss_*` model is its dense timm class (EfficientNet, ResNet) with `SupernetMixin` in front: the dense class
keeps the whole timm contract (forward_features/forward_head, feature_info, group_matcher, grad checkpointing),
the mixin adds the space, the active subnet, the budget table and the input resize, and keeps the timm
attributes that describe widths (`num_features`, `head_hidden_size`, `feature_info`,
`pretrained_cfg['input_size']`) true for the active subnet. `SupernetFeatures` is the same for
`features_only=True` models.
"""
import contextlib
import copy
import numbers
import threading
import warnings
from typing import Iterator, Optional, Tuple, Union

import torch
from torch import nn
from timm.models import FeatureListNet

from .budget_storage import BudgetTableStorage
from .budget_table import LATENCY_METRIC, BudgetEntry, BudgetTable
from .channel_plan import ChannelPlan
from .conversion import apply_widths, convert_to_slimmable, slimmable_layers
from .resolution import checked_export_input, resize_to_resolution, set_input_size_cfg
from .slimmable import SlimBatchNormBase, is_fx_symbolic_tracing
from .spaces import Channels, Subnet
from .units import FlopsLike

__all__ = ['SubnetSwitch', 'SupernetMixin', 'SupernetFeatures', 'find_supernet', 'set_budget', 'budget',
           'quiet_forwards']


_LOUD = {'resize': 0, 'statistics': 0}  # a model outside any quiet_forwards block
_SWITCH_LOCK_GUARD = threading.Lock()  # makes the lazy creation of each model's switch lock race-free


class SubnetSwitch(BudgetTableStorage):
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
    __jit_unused_properties__ = ['active_subnet', 'active_budget_index', 'budget_table', 'switch_lock', 'is_static']

    def _init_switch(self) -> None:
        self._index_layers()
        self._init_budget_storage()
        self.register_load_state_dict_post_hook(serve_default_entry_after_load)
        self._active_budget_index: Optional[int] = None
        # the subnet the shared BN running statistics belong to (None: none, e.g. after training steps of several
        # subnets); a new model's are those of the dense model, i.e. the max subnet
        self.shared_stats_subnet: Optional[Subnet] = self.space.max_subnet()
        self._warned: set = set()  # eval-time warnings already given by this model (each is given once)

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
        named = slimmable_layers(self)
        self._switch_layers = tuple(layer for _, layer in named)
        self._first_switch_layer = named[0]
        self._switch_norms = tuple(m for m in self._switch_layers if isinstance(m, SlimBatchNormBase))

    @property
    def is_static(self) -> bool:
        """Whether timm's `reparameterize_model` (`--reparam`) replaced the slimmable layers by plain ones: the model
        is then its active subnet as a static model, which runs any input size as it comes and cannot switch."""
        name, layer = self._first_switch_layer
        try:
            return self.get_submodule(name) is not layer
        except AttributeError:
            return True

    def _activate(self, subnet: Subnet, budget_index: Optional[int]) -> None:
        """`activate` without its checks, for a subnet and index already known to fit (the hot path)."""
        if self.is_static:
            raise RuntimeError(f'this model was re-parameterized into the static subnet {self._active_subnet} '
                               f'(timm reparameterize_model / --reparam) and cannot switch; switch the supernet '
                               f'before re-parameterizing it')
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

    def set_top_budget(self) -> BudgetEntry:
        """Switch to the entry `set_budget` picks with no limit: the most accurate on held-out data (normally the
        max-FLOPs entry). A model comes up on it whenever weights with a budget table load into it."""
        with self.switch_lock:
            table = self.budget_table
            index, entry, _ = table.choose(max(e.flops for e in table))
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


def serve_default_entry_after_load(module: SubnetSwitch, incompatible_keys) -> None:
    """load_state_dict post-hook: weights that carry a budget table serve its top entry (`set_top_budget`), never
    the shared BN statistics, which fit no subnet of a trained supernet; weights without a table run the active
    subnet on the loaded shared statistics, taken as the max subnet's (those of a dense timm checkpoint)."""
    if len(module.budget_table):
        module.shared_stats_subnet = None
        module.set_top_budget()
    else:
        module.shared_stats_subnet = module.space.max_subnet()


@contextlib.contextmanager
def quiet_forwards(model: nn.Module, statistics: bool = True) -> Iterator[None]:
    """`with quiet_forwards(model):` the forwards inside are the library's own, which resize inputs (training at
    sampled resolutions, evaluation) and, unless `statistics=False`, run subnets on uncalibrated BN statistics on
    purpose (calibration, timing): the model's once-per-model warnings about them stay silent. Nests."""
    supernet = find_supernet(model)
    kinds = ('resize', 'statistics') if statistics else ('resize',)
    with supernet.switch_lock:
        quiet = supernet.__dict__.setdefault('_quiet', {'resize': 0, 'statistics': 0})
        for kind in kinds:
            quiet[kind] += 1
    try:
        yield
    finally:
        with supernet.switch_lock:
            for kind in kinds:
                quiet[kind] -= 1


class SupernetMixin(SubnetSwitch):
    """Adds the supernet behaviour to a timm model class (put it first in the bases).

    Subclasses build their dense timm model, then call `_init_supernet(...)`, and implement `channel_plan`; they
    set `dense_class` (the dense timm class they extend) and keep their dense constructor's kwargs in `_dense_init`.
    """
    dense_architecture = ''  # the timm model an exported subnet is an instance of
    dense_class = None  # the dense timm model class (EfficientNet, ResNet) the subclass extends

    def dense_model(self, **kwargs) -> nn.Module:
        """A dense `dense_class` model built like this supernet (same head); `kwargs` override (e.g. device)."""
        init = {k: v for k, v in self._dense_init.items() if k not in ('device', 'dtype')}
        init.update(num_classes=self.num_classes, global_pool=self.global_pool.pool_type)
        return self.dense_class(**copy.deepcopy(init), **kwargs)

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

    def channel_plan(self) -> ChannelPlan:
        """Walk this architecture in forward order and record its channel plan."""
        raise NotImplementedError

    def _rebuild_plan(self) -> None:
        plan = self.channel_plan()
        plan.attach(self)
        self.space = plan.build_space(**self._space_args)
        self._features_channels: Channels = plan.features
        self._feature_info_channels = [plan.taps[fi['module']] for fi in self.feature_info]

    def _activate(self, subnet: Subnet, budget_index: Optional[int]) -> None:
        super()._activate(subnet, budget_index)
        self.num_features = self._features_channels.resolve(subnet.widths)
        self.head_hidden_size = self.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dense forward at the active resolution: other input sizes are resized (bilinear, antialiased), with a
        warning the first time. A re-parameterized (static) model runs its input as it comes."""
        if torch.jit.is_scripting():
            x = resize_to_resolution(x, self._active_resolution)
        else:
            x = self._input_at_resolution(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def _input_at_resolution(self, x: torch.Tensor) -> torch.Tensor:
        """`x` as the active subnet takes it; in eager mode also the once-per-model warnings about BN statistics
        and input sizes. Exports (ONNX, torch.export) hold no resize: they need an input at the active resolution."""
        if self.is_static:
            return x
        resolution = self._active_resolution
        if is_fx_symbolic_tracing():
            return resize_to_resolution(x, resolution)
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return checked_export_input(x, resolution)
        if torch.compiler.is_compiling():
            return resize_to_resolution(x, resolution)
        quiet = self.__dict__.get('_quiet', _LOUD)
        if self.training:  # a training step moves the shared statistics towards this subnet's: another's mix
            if self.shared_stats_subnet != self._active_subnet:
                self.__dict__['shared_stats_subnet'] = None
        elif (not quiet['statistics'] and self._active_budget_index is None
              and self.shared_stats_subnet != self._active_subnet):
            self._warn_uncalibrated()
        size = (x.shape[-2], x.shape[-1])
        if size != (resolution, resolution):
            if not quiet['resize'] and 'resize' not in self._warned:
                self._warned.add('resize')
                warnings.warn(f'{self._model_name()}: input {size[0]}x{size[1]} is resized to the active subnet\'s '
                              f'{resolution}x{resolution} (every forward; this warning is given once). For a subnet '
                              f'at {size[0]} px create the model with resolution={size[0]} (timm scripts: '
                              f'--model-kwargs resolution={size[0]}), or feed the size '
                              f'timm.data.resolve_data_config(model=model) gives', stacklevel=5)
            x = resize_to_resolution(x, resolution)
        return x

    def _model_name(self) -> str:
        return (getattr(self, 'pretrained_cfg', None) or {}).get('architecture') or type(self).__name__

    def _warn_uncalibrated(self) -> None:
        """Once per model: an eval-mode forward on shared BN statistics that were not calibrated for this subnet."""
        entries = len(self.budget_table)
        kind = 'shared' if entries else 'uncalibrated'
        if kind in self._warned:
            return
        self._warned.add(kind)
        if entries:
            message = (f'{self._model_name()}: eval-mode forward on the shared BN statistics, which fit no subnet of '
                       f'this trained supernet; serve a budget-table entry ({entries}) with model.set_budget(flops) '
                       f'or model.set_budget_entry(i) (timm scripts: --model-kwargs budget=...), or calibrate this '
                       f'subnet first with timm_pss.calibrate_bn(model, loader)')
        else:
            message = (f'{self._model_name()}: eval-mode forward at {self._active_subnet}, whose BN statistics were '
                       f'never calibrated (the shared ones belong to '
                       f'{self.shared_stats_subnet or "no subnet since the last training step"}); call '
                       f'timm_pss.calibrate_bn(model, loader) first')
        warnings.warn(message, stacklevel=6)

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
        super().__init__(model, out_indices=out_indices, **kwargs)
        self.space = model.space
        self._feature_info_channels = [
            channels if i in self.feature_info.out_indices else None
            for i, channels in enumerate(model._feature_info_channels)]
        self._init_switch()
        self.share_budget_storage(model)
        self._activate(model.active_subnet, model.active_budget_index)


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
