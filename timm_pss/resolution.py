"""Input resolution of a supernet: the resize its forward does, the export check, and the pretrained_cfg size.

A subnet runs at its own resolution, so a supernet's forward resizes any other input size to it (bilinear,
antialiased); exports hold no resize and take the active size only; timm's `pretrained_cfg['input_size']` follows
the active subnet so that `resolve_data_config(model=...)` feeds the right size.
"""
import math
import warnings
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ['set_input_size_cfg', 'resize_to_resolution', 'checked_export_input']


def set_input_size_cfg(cfg: Optional[Dict[str, Any]], resolution: int, reduction: int = 32) -> None:
    """Point a timm pretrained_cfg at `resolution` so `resolve_data_config(model=...)` feeds that size."""
    if cfg is None:
        return
    in_chans = cfg.get('input_size', (3,))[0]
    cfg['input_size'] = (in_chans, resolution, resolution)
    if 'pool_size' in cfg:
        side = math.ceil(resolution / reduction)
        cfg['pool_size'] = (side, side)


@register_notrace_function
def resize_to_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """`x` resized (bilinear, antialiased) to `resolution` x `resolution` unless it has that size already.

    torch's antialiased resize has no float16 / bfloat16 CPU kernel: such inputs are resized in float32 and cast
    back."""
    if x.shape[-2] != resolution or x.shape[-1] != resolution:
        low_cpu = x.device.type == 'cpu' and x.dtype in (torch.float16, torch.bfloat16)
        y = F.interpolate(x.float() if low_cpu else x, size=(resolution, resolution), mode='bilinear',
                          align_corners=False, antialias=True)
        x = y.to(x.dtype) if low_cpu else y
    return x


def checked_export_input(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """The input of an exported supernet forward: fixed at the active resolution, as the graph holds no resize.

    Another size, or a symbolic (dynamic) height or width, is refused: an ONNX graph traced at the active size would
    run other sizes without resizing them, a silently different model. In a TorchScript-exporter ONNX graph a
    reshape to that size makes other input sizes fail at run time instead.
    """
    height, width = x.shape[-2], x.shape[-1]
    if torch.jit.is_tracing():  # the TorchScript exporter traces sizes as tensors of the example's values
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)  # constants on purpose: the reshape below
            height, width = int(height), int(width)
    dynamic = isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt)
    if dynamic or (height, width) != (resolution, resolution):
        shown = 'a dynamic height/width' if dynamic else f'an input of {height}x{width}'
        raise RuntimeError(f'a supernet exports at its active resolution only ({resolution}x{resolution}, the graph '
                           f'holds no resize), got {shown}: export at {resolution} px, or export the static subnet '
                           f'(timm_pss.export_subnet(model), or timm\'s reparameterize_model / --reparam), which takes '
                           f'any size')
    if torch.onnx.is_in_onnx_export():
        x = x.reshape(x.shape[0], x.shape[1], resolution, resolution)
    return x
