"""Slimmable layers: conv / BatchNorm / linear that run on the first k channels of their full-size weights.

The layers are the timm/torch classes themselves with a slicing `forward`; converting a dense timm model
(`timm_pss.conversion`) swaps the class of each layer in place, so parameter names, shapes and objects stay exactly
those of the dense model (a dense state dict loads strictly) and no per-width copy of any weight is stored.

Inference cache: in eval mode with gradients off (`torch.no_grad()` / `torch.inference_mode()`) each layer keeps
the arguments of its functional call (weight, bias, BN statistics) for the active subnet, made on the first forward
and reused: the per-call slicing goes (a few microseconds of Python and dispatch per tensor), and a conv / linear
slice that cuts input channels, which is not contiguous and which torch's conv would copy on every call (about
14 % of a batch-1 MobileNetV1 forward at 25 % FLOPs), is copied once. Everything else the cache holds is a view.
It is keyed on the active widths and budget entry, the identity of the layer's parameters and buffers and the
weight's in-place version (an optimizer step or `load_state_dict` bumps it), and dropped on `train()` / `eval()`
and `.to()`. Each layer keeps up to `INFERENCE_CACHE_SUBNETS` (4) width settings, so switching among a few budgets
does not rebuild it; its memory is at most that many subnets' conv / linear weights (each at most the subnet's).
A forward runs this lookup once per layer, so it must be cheap: the entry served last is checked first, field by
field, by identity (measured in a batch-1 MobileNetV2 forward of 10-15 ms: building and looking up a dict key of ~10
items per layer cost 0.7-0.9 ms, the field check 0.4 ms). Tensors swapped into the layer's dicts
(`torch.func.functional_call`, parametrizations) are seen too.
FX tracing, TorchScript and `torch.compile` run the plain slicing forward (views: gradients flow to the full
weights). Writes through `weight.data` bypass the version counter: call `model.eval()` after them to drop the cache.

Training (grad-enabled eager calls on NCHW activations) cuts conv weights with `cut_weight`: the same values and
gradients as the slicing views, but the backward writes each full-size gradient once (the subnet's part, zeros
elsewhere) where two chained slice backwards zero-fill and copy it twice (`benchmarks/speed.py --sections train`
times both against a dense model).
"""
import copy
from operator import is_
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.fx._symbolic_trace as _fx_trace
import torch.nn.functional as F
from torch import nn
from timm.layers import BatchNormAct2d

from .spaces import Channels

__all__ = [
    'SlimmableLayer', 'SlimConv2d', 'SlimBatchNormBase', 'SlimBatchNorm2d', 'SlimBatchNormAct2d', 'SlimLinear',
    'inference_cache_bytes', 'INFERENCE_CACHE_SUBNETS', 'cut_weight', 'is_fx_symbolic_tracing', 'plain_eager',
]

# torch >= 2.6 tells fx.symbolic_trace apart from torch.export (whose tracing is_compiling covers)
is_fx_symbolic_tracing = getattr(_fx_trace, 'is_fx_symbolic_tracing', _fx_trace.is_fx_tracing)
_CACHE_ATTR = '_inference_weight_cache'
_LAST_HIT_ATTR = '_inference_last_hit'  # the cache entry served last, checked first
_CACHE_ATTRS = (_CACHE_ATTR, _LAST_HIT_ATTR)
INFERENCE_CACHE_SUBNETS = 4  # width settings each layer's inference cache keeps (a few budgets switched often)
_NO_CACHE: dict = {}  # read-only stand-in for a layer without an inference cache


def plain_eager() -> bool:
    """Not being traced (FX, TorchScript's tracer, as the ONNX exporter does) or compiled: a module's Python runs as
    written."""
    return not (is_fx_symbolic_tracing() or torch.jit.is_tracing() or torch.compiler.is_compiling())


class _CutWeight(torch.autograd.Function):
    """`weight[:out, :in]` as a contiguous tensor whose backward fills the full-size gradient in one pass."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
        ctx.full_shape = weight.shape
        ctx.out_channels, ctx.in_channels = out_channels, in_channels
        return weight[:out_channels, :in_channels].contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        cout, cin = ctx.out_channels, ctx.in_channels
        full = grad.new_empty(ctx.full_shape)
        full[:cout, :cin] = grad
        full[cout:].zero_()
        full[:cout, cin:].zero_()
        return full, None, None


def cut_weight(weight: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """The first `out_channels` x `in_channels` of a conv / linear weight, contiguous, for a grad-enabled call.

    Equal in values and gradients to `weight[:out_channels, :in_channels]`; a full-size cut is the weight itself.
    """
    if out_channels == weight.shape[0] and in_channels == weight.shape[1]:
        return weight
    return _CutWeight.apply(weight, out_channels, in_channels)


class SlimmableLayer:
    """Mixin: the layer's active in/out channels follow channel rules evaluated on the subnet's widths."""
    # channel rules are Python objects used only when switching: no annotations, so TorchScript leaves them out
    in_rule = None
    out_rule = None
    __jit_ignored_attributes__ = list(_CACHE_ATTRS)  # the inference cache is eager-only; TorchScript must not type it
    active_in: int
    active_out: int

    def set_rules(self, in_rule: Optional[Channels], out_rule: Optional[Channels]) -> None:
        self.in_rule, self.out_rule = in_rule, out_rule

    def activate(self, widths: Sequence[int]) -> None:
        full_in, full_out = self.full_channels()
        active_in = full_in if self.in_rule is None else self.in_rule.resolve(widths)
        active_out = full_out if self.out_rule is None else self.out_rule.resolve(widths)
        if not (0 < active_in <= full_in and 0 < active_out <= full_out):
            raise ValueError(f'{type(self).__name__} of {full_in}->{full_out} channels cannot run at '
                             f'{active_in}->{active_out}')
        # plain ints on the switching hot path: skip nn.Module.__setattr__'s parameter/module checks
        self.__dict__['active_in'], self.__dict__['active_out'] = active_in, active_out

    def _active_params(self) -> tuple:
        """The tensors this layer's functional call takes at the active channels (views of the full ones)."""
        raise NotImplementedError

    @torch.jit.unused
    def _cached_args(self, x: torch.Tensor) -> Optional[tuple]:
        """The inference cache's arguments for a call on `x`, or None where the cache does not serve it.

        It serves eval-mode calls with gradients off on a plain tensor in eager Python; FX proxies, fake and other
        tensor subclasses, and calls traced by torch.compile take the slicing path. This runs for every layer of
        every forward, where each Python step costs: the last entry served is checked field by field (widths,
        budget entry, the weight's version, the identity of every parameter and buffer) before any key is built.
        """
        if self.training or torch.is_grad_enabled() or type(x) is not torch.Tensor or torch.compiler.is_compiling():
            return None
        last = self.__dict__.get(_LAST_HIT_ATTR)
        if last is not None:
            active_in, active_out, budget_index, weight, version, params, buffers, values = last
            current_params, current_buffers = self._parameters, self._buffers
            if (active_in == self.active_in and active_out == self.active_out
                    and budget_index == self.__dict__.get('budget_index')
                    and (weight is None or weight._version == version)
                    and len(params) == len(current_params) and all(map(is_, params, current_params.values()))
                    and len(buffers) == len(current_buffers) and all(map(is_, buffers, current_buffers.values()))):
                return values
        return self._inference_params()

    @torch.jit.unused
    def _inference_params(self) -> tuple:
        """`_active_params()`, made contiguous, kept and served while the widths and the tensors are unchanged.

        Up to `INFERENCE_CACHE_SUBNETS` width settings are kept per layer (the oldest goes first), so a server that
        alternates a few budgets does not rebuild on every switch. The dict is replaced, never changed in place,
        so a thread reading it never sees it change under it; the entry served last is also kept on its own, for
        `_cached_args`' check.
        """
        params, buffers = self._parameters, self._buffers
        weight = params.get('weight')
        tensors = (None if weight is None else weight._version, *map(id, params.values()),
                   *map(id, buffers.values()))
        key = (self.active_in, self.active_out, self.__dict__.get('budget_index'), *tensors)
        cache = self.__dict__.get(_CACHE_ATTR, _NO_CACHE)
        entry = cache.get(key)
        if entry is None:
            values = tuple(t if t is None or t.is_contiguous() else t.contiguous() for t in self._active_params())
            # entries of other tensors (an update, a load) are never served again; the rest keep the newest ones
            kept = [(k, v) for k, v in cache.items() if k[3:] == tensors]
            kept = kept[max(0, len(kept) - INFERENCE_CACHE_SUBNETS + 1):]
            # each entry holds the keyed tensors too, so no id in its key can be reused by a new tensor while it lives
            entry = (values, tuple(params.values()), tuple(buffers.values()))
            self.__dict__[_CACHE_ATTR] = dict(kept + [(key, entry)])
        self.__dict__[_LAST_HIT_ATTR] = (*key[:3], weight, tensors[0], entry[1], entry[2], entry[0])
        return entry[0]

    def _drop_inference_cache(self) -> None:
        for name in _CACHE_ATTRS:
            self.__dict__.pop(name, None)

    def __getstate__(self):
        # copies (deepcopy, ModelEma, serialised copies) start without the cache instead of duplicating its tensors
        return {k: v for k, v in super().__getstate__().items() if k not in _CACHE_ATTRS}

    def train(self, mode: bool = True):
        self._drop_inference_cache()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self._drop_inference_cache()  # .to() / .half() / .cuda(): the copy would keep the old tensor
        return super()._apply(*args, **kwargs)

    def full_channels(self) -> tuple:
        raise NotImplementedError

    def extra_repr(self) -> str:
        """torch's description with the channel counts as active/full, so `print(model)` shows the subnet."""
        full_in, full_out = self.full_channels()
        dense = super().extra_repr().split(', ', 2)[2]  # torch's text after its "in, out" channel fields
        return f'in={self.active_in}/{full_in}, out={self.active_out}/{full_out}, {dense}'

    def slice_state(self) -> Dict[str, torch.Tensor]:
        """This layer's parameters and buffers cut to the active channels (for export)."""
        raise NotImplementedError

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The plain torch / timm layer of the active channels, holding copies of `slice_state()` (for a BN layer,
        the statistics eval mode uses now: the active budget entry's, or the shared ones).

        timm's `reparameterize_model` (`--reparam` in its scripts) replaces every child that has `fuse()` by its
        result, which turns a supernet into its active subnet as a static model.
        """
        static = self.static_layer()
        state = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in self.slice_state().items()}
        static.load_state_dict(state, strict=True, assign=True)
        return static.train(self.training)

    def static_layer(self) -> nn.Module:
        """An empty (meta-device) plain layer of the active channels, which `fuse` fills."""
        raise NotImplementedError


class SlimConv2d(SlimmableLayer, nn.Conv2d):
    """nn.Conv2d on the first `active_in` input and `active_out` output channels; depthwise follows its input."""

    def full_channels(self):
        return self.in_channels, self.out_channels

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1

    def _active_params_for_call(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not torch.jit.is_scripting():
            # channels_last inputs (and 1x1 maps, contiguous in both layouts) keep the views: their conv kernels
            # then match those of an eager or compiled step on views
            if (torch.is_grad_enabled() and plain_eager() and x.is_contiguous()
                    and not x.is_contiguous(memory_format=torch.channels_last)):
                cout = self.active_out
                weight = cut_weight(self.weight, cout, 1 if self.is_depthwise else self.active_in)
                return weight, None if self.bias is None else self.bias[:cout]
        return self._active_params()

    def _active_params(self):
        cout = self.active_out
        weight = self.weight[:cout] if self.is_depthwise else self.weight[:cout, :self.active_in]
        bias = None if self.bias is None else self.bias[:cout]
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.active_out if self.is_depthwise else 1
        if not torch.jit.is_scripting():
            cached = self._cached_args(x)
            if cached is not None:
                return F.conv2d(x, cached[0], cached[1], self.stride, self.padding, self.dilation, groups)
        weight, bias = self._active_params_for_call(x)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        # a depthwise conv runs one group per active channel
        return text.replace(f'groups={self.groups}', f'groups={self.active_out}/{self.groups}', 1)

    def slice_state(self):
        weight, bias = self._active_params()
        state = {'weight': weight}
        if bias is not None:
            state['bias'] = bias
        return state

    def static_layer(self) -> nn.Conv2d:
        cout = self.active_out
        return nn.Conv2d(cout if self.is_depthwise else self.active_in, cout, self.kernel_size, self.stride,
                         self.padding, self.dilation, groups=cout if self.is_depthwise else 1,
                         bias=self.bias is not None, padding_mode=self.padding_mode, device='meta',
                         dtype=self.weight.dtype)


class SlimBatchNormBase(SlimmableLayer):
    """BatchNorm on the first `active_out` channels, with optional per-budget-entry running statistics.

    `budget_running_mean` / `budget_running_var` (entries x channels, None without a budget table) hold BN
    statistics calibrated for each budget-table entry, the first `entry width` channels of each row used; in
    eval mode with `budget_index` set, those replace the shared running statistics.
    """
    budget_index: Optional[int] = None

    def full_channels(self):
        return self.num_features, self.num_features

    def select_budget_entry(self, index: Optional[int]) -> None:
        """Use row `index` of the per-entry statistics in eval mode from now on (None: the shared running ones)."""
        self.__dict__['budget_index'] = index  # plain attribute on the switching hot path

    def set_budget_stats(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Hold per-entry statistics `mean` / `var` (entries x channels, stored as float32 beside the weight) and
        release any selected entry: the rows now belong to a new table."""
        device = self.weight.device
        self._buffers['budget_running_mean'] = mean.to(device, torch.float32)
        self._buffers['budget_running_var'] = var.to(device, torch.float32)
        self.select_budget_entry(None)

    def clear_budget_stats(self) -> None:
        """Drop the per-entry statistics (no budget table: the buffers leave the state dict) and any selection."""
        self._buffers['budget_running_mean'] = None
        self._buffers['budget_running_var'] = None
        self.select_budget_entry(None)

    def extra_repr(self) -> str:
        """torch's description with the channels as active/full, and the budget entry whose statistics are used."""
        dense = super(SlimmableLayer, self).extra_repr().split(', ', 1)[1]  # the dense BN's text after its channels
        entry = '' if self.budget_index is None else f', budget_entry={self.budget_index}'
        return f'channels={self.active_out}/{self.num_features}{entry}, {dense}'

    def eval_stats(self):
        """The running (mean, var) eval mode uses for the active channels."""
        c = self.active_out
        if self.budget_index is not None and self.budget_running_mean is not None:
            return self.budget_running_mean[self.budget_index, :c], self.budget_running_var[self.budget_index, :c]
        if self.running_mean is None:
            return None, None
        return self.running_mean[:c], self.running_var[:c]

    def _active_params(self):
        """(running mean, running var, weight, bias) of an eval-mode call at the active channels."""
        c = self.active_out
        mean, var = self.eval_stats()
        return (mean, var, self.weight[:c] if self.weight is not None else None,
                self.bias[:c] if self.bias is not None else None)

    def batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        """torch's BatchNorm2d.forward on the first `active_out` channels; running stats update in place."""
        if not torch.jit.is_scripting():
            cached = self._cached_args(x)
            if cached is not None:
                mean, var, weight, bias = cached
                return F.batch_norm(x, mean, var, weight, bias, mean is None, 0.0, self.eps)
        c = self.active_out
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        if self.training:
            use_batch_stats = True
            mean = self.running_mean[:c] if self.track_running_stats and self.running_mean is not None else None
            var = self.running_var[:c] if self.track_running_stats and self.running_var is not None else None
        else:
            mean, var = self.eval_stats()
            use_batch_stats = mean is None
        return F.batch_norm(
            x, mean, var,
            self.weight[:c] if self.weight is not None else None,
            self.bias[:c] if self.bias is not None else None,
            use_batch_stats, momentum, self.eps,
        )

    def slice_state(self):
        c = self.active_out
        state = {}
        for name in ('weight', 'bias'):
            if getattr(self, name) is not None:
                state[name] = getattr(self, name)[:c]
        mean, var = self.eval_stats()
        if mean is not None:
            state['running_mean'], state['running_var'] = mean, var
        if self.num_batches_tracked is not None:
            state['num_batches_tracked'] = self.num_batches_tracked
        return state

    def _norm_args(self) -> dict:
        dtype = self.weight.dtype if self.weight is not None else None
        return dict(num_features=self.active_out, eps=self.eps, momentum=self.momentum, affine=self.affine,
                    track_running_stats=self.running_mean is not None, device='meta', dtype=dtype)


class SlimBatchNorm2d(SlimBatchNormBase, nn.BatchNorm2d):
    """nn.BatchNorm2d on the first `active_out` channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.batch_norm(x)

    def static_layer(self) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(**self._norm_args())


class SlimBatchNormAct2d(SlimBatchNormBase, BatchNormAct2d):
    """timm's BatchNormAct2d (BN + drop + act) on the first `active_out` channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.batch_norm(x)))

    def static_layer(self) -> BatchNormAct2d:
        static = BatchNormAct2d(**self._norm_args())
        static.drop, static.act = copy.deepcopy(self.drop), copy.deepcopy(self.act)
        return static


class SlimLinear(SlimmableLayer, nn.Linear):
    """nn.Linear reading the first `active_in` input features; the output (classes) is fixed."""

    def full_channels(self):
        return self.in_features, self.out_features

    def _active_params(self):
        return self.weight[:, :self.active_in], self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            cached = self._cached_args(x)
            if cached is not None:
                return F.linear(x, cached[0], cached[1])
        return F.linear(x, self.weight[:, :self.active_in], self.bias)

    def slice_state(self):
        state = {'weight': self.weight[:, :self.active_in]}
        if self.bias is not None:
            state['bias'] = self.bias
        return state

    def static_layer(self) -> nn.Linear:
        return nn.Linear(self.active_in, self.out_features, bias=self.bias is not None, device='meta',
                         dtype=self.weight.dtype)


def inference_cache_bytes(model: nn.Module) -> int:
    """Bytes of the copies held by the inference cache of `model`'s slimmable layers (its views hold none)."""
    total = 0
    for m in model.modules():
        for values, params, buffers in (m.__dict__.get(_CACHE_ATTR, {}).values()
                                        if isinstance(m, SlimmableLayer) else ()):
            shared = {t.untyped_storage().data_ptr() for t in params + buffers if t is not None}
            total += sum(t.nbytes for t in values if t is not None and t.untyped_storage().data_ptr() not in shared)
    return total
