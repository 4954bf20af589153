"""Converting a dense timm model into a slimmable one in place, finding its slimmable layers, and setting widths.

Conversion swaps the class of every conv / BN / linear to its slimmable class (`timm_pss.slimmable`), so the
parameter names, shapes and objects stay exactly the dense model's; a layer with weights and no slimmable form is
refused.
"""
from typing import Optional, Sequence

from timm.layers import BatchNormAct2d
from torch import nn

from .slimmable import (
    SlimBatchNorm2d, SlimBatchNormAct2d, SlimBatchNormBase, SlimConv2d, SlimLinear, SlimmableLayer,
)

__all__ = ['convert_to_slimmable', 'slimmable_layers', 'apply_widths']

_SLIM_CLASSES = {
    nn.Conv2d: SlimConv2d,
    nn.BatchNorm2d: SlimBatchNorm2d,
    BatchNormAct2d: SlimBatchNormAct2d,
    nn.Linear: SlimLinear,
}


def convert_to_slimmable(model: nn.Module) -> nn.Module:
    """Turn every conv / BN / linear of `model` into its slimmable class, in place; returns `model`.

    Only exact torch/timm classes are converted; any other layer with weights is refused, so a supernet never
    silently contains a layer that ignores the active subnet.
    """
    for name, module in model.named_modules():
        cls = type(module)
        if cls in _SLIM_CLASSES:
            if cls is nn.Conv2d:
                _check_conv(name, module)
            module.__class__ = _SLIM_CLASSES[cls]
            full_in, full_out = module.full_channels()
            module.active_in, module.active_out = full_in, full_out
            if isinstance(module, SlimBatchNormBase):
                module.register_buffer('budget_running_mean', None)
                module.register_buffer('budget_running_var', None)
        elif not isinstance(module, SlimmableLayer) and next(module.parameters(recurse=False), None) is not None:
            raise TypeError(f'layer {name!r} ({cls.__name__}) has no slimmable form; supported: '
                            f'{", ".join(c.__name__ for c in _SLIM_CLASSES)}')
    return model


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if conv.groups != 1 and not depthwise:
        raise TypeError(f'conv {name!r} is grouped (groups={conv.groups}) but not depthwise; not slimmable')
    if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
        raise TypeError(f'conv {name!r} uses padding {conv.padding!r}/{conv.padding_mode!r}; '
                        f'only explicit zero padding is slimmable')


def slimmable_layers(model: nn.Module):
    """(name, layer) for every slimmable layer in `model`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SlimmableLayer)]


def apply_widths(model: nn.Module, widths: Sequence[int], layers: Optional[Sequence[SlimmableLayer]] = None) -> None:
    """Set every slimmable layer of `model` (or the given `layers`) to the channels its rules give for `widths`."""
    for module in layers if layers is not None else model.modules():
        if isinstance(module, SlimmableLayer):
            module.activate(widths)
