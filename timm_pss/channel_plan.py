"""Channel plans: which channel group each layer of a supernet follows, recorded by walking the architecture once.

A plan is written per architecture family as a short walk over its modules (see `models/`), in forward order.
From that single walk come both the per-layer channel rules the slimmable layers run with and the MAC terms
the search space counts FLOPs with, so the FLOPs model cannot drift from the network it describes.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from torch import nn

from .conversion import slimmable_layers
from .spaces import Channels, MacTerm, SearchSpace, SpatialOp, resolution_choices, width_choices

__all__ = ['Activation', 'ChannelPlan']


class Activation(NamedTuple):
    """A tensor flowing through the walk: its channels and the spatial ops applied since the input."""
    channels: Channels
    spatial: Tuple[SpatialOp, ...]


def _spatial_op(module: nn.Module, name: str) -> SpatialOp:
    def square(v, what):
        v = (v, v) if isinstance(v, int) else tuple(v)
        if v[0] != v[1]:
            raise ValueError(f'{name}: non-square {what} {v} is not supported by the FLOPs model')
        return v[0]
    if getattr(module, 'ceil_mode', False):
        raise ValueError(f'{name}: ceil_mode pooling is not supported by the FLOPs model')
    return SpatialOp(square(module.kernel_size, 'kernel'), square(module.stride, 'stride'),
                     square(module.padding, 'padding'), square(module.dilation, 'dilation'))


class ChannelPlan:
    """Records groups, per-layer channel rules, feature taps and MAC terms during an architecture walk."""

    def __init__(self):
        self.group_names: List[str] = []
        self.base_widths: List[int] = []
        self.rules: Dict[str, Tuple[Optional[Channels], Optional[Channels]]] = {}
        self.terms: List[MacTerm] = []
        self.taps: Dict[str, Channels] = {}
        self.features: Optional[Channels] = None

    # recording

    def input(self, in_chans: int) -> Activation:
        return Activation(Channels(None, in_chans), ())

    def new_group(self, name: str, base_width: int) -> Channels:
        if name in self.group_names:
            raise ValueError(f'channel group {name!r} defined twice')
        self.group_names.append(name)
        self.base_widths.append(int(base_width))
        return Channels(len(self.group_names) - 1)

    def conv(self, name: str, conv: nn.Conv2d, x: Activation, out: Optional[Channels] = None) -> Activation:
        """A conv reading `x`; `out` is its output channels (None: depthwise, follows its input)."""
        depthwise = conv.groups > 1
        if depthwise == (out is not None):
            raise ValueError(f'{name}: give output channels for a dense conv and none for a depthwise one')
        spatial = x.spatial + (_spatial_op(conv, name),)
        k = conv.kernel_size[0] * conv.kernel_size[1]
        cin = x.channels
        if depthwise:
            out = cin
            self.terms.append(MacTerm(spatial, cin.group, None, k * cin.mult))
        else:
            self.terms.append(MacTerm(spatial, cin.group, out.group, k * cin.mult * out.mult))
        self.rules[name] = (cin, out)
        return Activation(out, spatial)

    def norm(self, name: str, x: Activation) -> Activation:
        self.rules[name] = (x.channels, x.channels)
        return x

    def pool(self, name: str, pool: nn.Module, x: Activation) -> Activation:
        return Activation(x.channels, x.spatial + (_spatial_op(pool, name),))

    def tap(self, name: str, x: Activation) -> None:
        self.taps[name] = x.channels

    def head(self, features: Activation, global_pool: nn.Module, classifier: nn.Module,
             classifier_name: str) -> None:
        """forward_features output, then global pool (avg pools count H*W*C) and classifier."""
        self.features = features.channels
        pool_type = getattr(global_pool, 'pool_type', '')
        if pool_type and global_pool.feat_mult() != 1:
            raise ValueError(f"global_pool={pool_type!r} concatenates pools; a slimmable classifier needs a "
                             f"pool of one output per channel ('avg', 'max', 'avgmax', or '')")
        c = features.channels
        if pool_type and 'avg' in pool_type:
            self.terms.append(MacTerm(features.spatial, c.group, None, c.mult))
        if isinstance(classifier, nn.Linear):
            self.rules[classifier_name] = (c, None)
            self.terms.append(MacTerm(None, c.group, None, c.mult * classifier.out_features))

    # using

    def attach(self, model: nn.Module) -> None:
        """Give every slimmable layer of `model` its rules; every layer must be covered, and only those."""
        layers = dict(slimmable_layers(model))
        missing = sorted(set(layers) - set(self.rules))
        unknown = sorted(set(self.rules) - set(layers))
        if missing or unknown:
            raise ValueError(f'channel plan does not match the model: layers without a rule {missing[:5]}, '
                             f'rules for absent layers {unknown[:5]}')
        for name, layer in layers.items():
            layer.set_rules(*self.rules[name])

    def build_space(
            self,
            width_range: Tuple[float, float],
            resolution_range: Tuple[int, int, int],
            fixed_groups: Sequence[str] = (),
    ) -> SearchSpace:
        unknown = set(fixed_groups) - set(self.group_names)
        if unknown:
            raise ValueError(f'fixed_groups {sorted(unknown)} are not groups of this model: {self.group_names}')
        choices = [(base,) if name in fixed_groups else width_choices(base, width_range)
                   for name, base in zip(self.group_names, self.base_widths)]
        for name, base, c in zip(self.group_names, self.base_widths, choices):
            if c[-1] > base:
                raise ValueError(f'width_range {width_range} makes group {name!r} wider ({c[-1]}) than its '
                                 f'{base} channels; the upper end must be at most 1.0')
        return SearchSpace(self.group_names, choices, resolution_choices(resolution_range), self.terms)
