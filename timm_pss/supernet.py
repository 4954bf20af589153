"""The supernet mixin: a timm model whose slimmable layers run any subnet of its search space.

A `pss_*` model is its dense timm class (EfficientNet, ResNet) with this mixin in front: the dense class keeps
the whole timm contract (forward_features/forward_head, feature_info, group_matcher, grad checkpointing), the
mixin adds the space, the active subnet and the input resize, and keeps the timm attributes that describe
widths (`num_features`, `head_hidden_size`, `feature_info`, `pretrained_cfg['input_size']`) true for the
active subnet.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import FeatureListNet, build_model_with_cfg

from .channel_plan import ChannelPlan
from .slimmable import apply_widths, convert_to_slimmable
from .spaces import Channels, SearchSpace, Subnet

__all__ = ['SupernetMixin', 'SupernetFeatures', 'build_supernet', 'find_supernet', 'set_input_size_cfg']


def set_input_size_cfg(cfg: Optional[Dict[str, Any]], resolution: int, reduction: int = 32) -> None:
    """Point a timm pretrained_cfg at `resolution` so `resolve_data_config(model=...)` feeds that size."""
    if cfg is None:
        return
    in_chans = cfg.get('input_size', (3,))[0]
    cfg['input_size'] = (in_chans, resolution, resolution)
    if 'pool_size' in cfg:
        side = math.ceil(resolution / reduction)
        cfg['pool_size'] = (side, side)


class SupernetMixin:
    """Adds `space`, `set_subnet`, `active_subnet` and input resizing to a timm model built from slimmable layers.

    Subclasses build their dense timm model, then call `_init_supernet(...)`, and implement `_walk_channels`.
    """
    space: SearchSpace
    dense_architecture: str = ''  # the timm model an exported subnet is an instance of

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
        self.set_subnet(self.space.max_subnet())

    def _walk_channels(self) -> ChannelPlan:
        """Walk this architecture in forward order and record its channel plan."""
        raise NotImplementedError

    def _rebuild_plan(self) -> None:
        plan = self._walk_channels()
        plan.attach(self)
        self.space = plan.build_space(**self._space_args)
        self._features_channels: Channels = plan.features
        self._feature_info_channels: List[Channels] = [plan.taps[fi['module']] for fi in self.feature_info]

    @property
    def active_subnet(self) -> Subnet:
        return self._active_subnet

    def set_subnet(self, subnet: Subnet) -> Subnet:
        """Run `subnet` from now on (validated against `space`); returns it."""
        subnet = self.space.validate(subnet)
        widths = subnet.widths
        apply_widths(self, widths)
        self._active_subnet = subnet
        self.num_features = self._features_channels.resolve(widths)
        self.head_hidden_size = self.num_features
        for fi, channels in zip(self.feature_info, self._feature_info_channels):
            fi['num_chs'] = channels.resolve(widths)
        set_input_size_cfg(getattr(self, 'pretrained_cfg', None), subnet.resolution)
        return subnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dense forward at the active resolution: other input sizes are resized (bilinear, antialiased)."""
        r = self._active_subnet.resolution
        if x.shape[-2] != r or x.shape[-1] != r:
            x = F.interpolate(x, size=(r, r), mode='bilinear', align_corners=False, antialias=True)
        return super().forward(x)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """timm's reset_classifier; the new classifier is slimmable and sized for the widest subnet."""
        active = self._active_subnet
        self.num_features = self._full_num_features
        self.head_hidden_size = self._full_head_hidden_size
        super().reset_classifier(num_classes, global_pool)
        convert_to_slimmable(self)
        self._rebuild_plan()
        self.set_subnet(active)

    def extra_repr(self) -> str:
        return f'space={self.space!r}, active_subnet={self._active_subnet}'


class SupernetFeatures(FeatureListNet):
    """timm's FeatureListNet over a supernet (`features_only=True`), still switchable with `set_subnet`."""

    def __init__(self, model: nn.Module, out_indices=(0, 1, 2, 3, 4), **kwargs):
        super().__init__(model, out_indices=out_indices, **kwargs)
        self.space = model.space
        self._feature_info_channels = [model._feature_info_channels[i] for i in self.feature_info.out_indices]
        self._active_subnet = model.active_subnet

    @property
    def active_subnet(self) -> Subnet:
        return self._active_subnet

    def set_subnet(self, subnet: Subnet) -> Subnet:
        subnet = self.space.validate(subnet)
        apply_widths(self, subnet.widths)
        self._active_subnet = subnet
        for i, channels in zip(self.feature_info.out_indices, self._feature_info_channels):
            self.feature_info.info[i]['num_chs'] = channels.resolve(subnet.widths)
        set_input_size_cfg(getattr(self, 'pretrained_cfg', None), subnet.resolution)
        return subnet


def find_supernet(model: nn.Module) -> nn.Module:
    """The module that owns `set_subnet` inside DDP / DataParallel / ModelEma / torch.compile wrappers."""
    seen = model
    for _ in range(8):
        if isinstance(seen, (SupernetMixin, SupernetFeatures)):
            return seen
        inner = getattr(seen, '_orig_mod', None) or getattr(seen, 'module', None)
        if not isinstance(inner, nn.Module):
            break
        seen = inner
    raise TypeError(f'{type(model).__name__} is not a timm_pss supernet and wraps none '
                    f'(looked through .module and ._orig_mod)')


def build_supernet(model_cls, variant: str, pretrained: bool = False, feature_cfg: Optional[dict] = None, **kwargs):
    """timm's `build_model_with_cfg` for supernets: `features_only=True` gives a switchable `SupernetFeatures`,
    and the pretrained_cfg follows the active subnet from the start."""
    feature_cfg = dict(feature_cfg or {}, feature_cls=SupernetFeatures)
    model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    if hasattr(model, 'set_subnet'):
        model.set_subnet(model.active_subnet)
    return model
