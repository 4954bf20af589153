"""PSS supernets of MobileNetV1 and MobileNetV2 (timm's EfficientNet class with slimmable layers).

At full width and 224px they are, key for key and shape for shape, timm's `mobilenetv1_100` / `mobilenetv2_100`.

Search spaces (PSS-Net, arXiv 2109.05432):
  * pss_mobilenetv1, 14 groups: `conv_stem` (32) and the pointwise conv of each of the 13 depthwise-separable
    blocks `blocks.S.B` (64, 128, 128, 256, 256, 512 x5, 1024, 1024); a depthwise conv has its input's width.
  * pss_mobilenetv2, 9 groups: `conv_stem` (32), the stage outputs `blocks.0` .. `blocks.6`
    (16, 24, 32, 64, 96, 160, 320; all blocks of a stage share it, the residuals tie them), and `conv_head`
    fixed at 1280. Each inverted residual's hidden width is 6x its actual input width.
  Widths: every multiple of 8 that `make_divisible(base * m, 8)` reaches for m in `width_range` (0.75..1.0);
  resolutions 128..224 in steps of 8.
"""
from copy import deepcopy
from functools import partial
from typing import Tuple

from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, resolve_bn_args
from timm.models.efficientnet import EfficientNet

from ..channel_plan import Activation, ChannelPlan
from ..spaces import Channels
from ..hub import hub_repo_id
from ..supernet import SupernetMixin
from .build import build_supernet

__all__ = ['PssEfficientNet']


class PssEfficientNet(SupernetMixin, EfficientNet):
    """timm's EfficientNet as a PSS supernet.

    Args:
        group_per: 'block' gives each block without a residual its own channel group (MobileNetV1),
            'stage' gives each stage one group (MobileNetV2, whose residuals tie a stage's blocks).
        width_range: (lo, hi) width multipliers of the space.
        resolution_range: (min, max, step) input resolutions of the space.
        fixed_groups: groups kept at full width.
        dense_architecture: the timm model an exported subnet is an instance of.
        **kwargs: EfficientNet's own arguments.
    """

    dense_class = EfficientNet

    def __init__(
            self,
            block_args,
            group_per: str = 'block',
            width_range: Tuple[float, float] = (0.75, 1.0),
            resolution_range: Tuple[int, int, int] = (128, 224, 8),
            fixed_groups: Tuple[str, ...] = (),
            dense_architecture: str = '',
            **kwargs,
    ):
        if group_per not in ('block', 'stage'):
            raise ValueError(f"group_per must be 'block' or 'stage', got {group_per!r}")
        self._dense_init = dict(block_args=deepcopy(block_args), **kwargs)
        super().__init__(block_args=block_args, **kwargs)
        self.group_per = group_per
        self.dense_architecture = dense_architecture
        self._init_supernet(width_range, resolution_range, fixed_groups)

    def channel_plan(self) -> ChannelPlan:
        plan = ChannelPlan()
        x = plan.input(self.in_chans)
        x = plan.conv('conv_stem', self.conv_stem, x, plan.new_group('conv_stem', self.conv_stem.out_channels))
        x = plan.norm('bn1', x)
        for s, stage in enumerate(self.blocks):
            for b, block in enumerate(stage):
                group_name = f'blocks.{s}' if self.group_per == 'stage' else f'blocks.{s}.{b}'
                x = _walk_block(plan, f'blocks.{s}.{b}', block, x, group_name)
            plan.tap(f'blocks.{s}', x)
        if isinstance(self.conv_head, nn.Conv2d):
            x = plan.conv('conv_head', self.conv_head, x, plan.new_group('conv_head', self.conv_head.out_channels))
            x = plan.norm('bn2', x)
        plan.head(x, self.global_pool, self.classifier, 'classifier')
        return plan


def _walk_block(plan: ChannelPlan, name: str, block: nn.Module, x: Activation, group_name: str) -> Activation:
    """One depthwise-separable or inverted-residual block; a block with a residual keeps its input's group."""
    if not isinstance(getattr(block, 'se', None), nn.Identity) or not isinstance(block.aa, nn.Identity):
        raise ValueError(f'{name}: squeeze-excite and anti-aliasing blocks are not slimmable here')

    def out_channels(conv):
        return x.channels if block.has_skip else plan.new_group(group_name, conv.out_channels)

    if isinstance(block, DepthwiseSeparableConv):
        h = plan.norm(f'{name}.bn1', plan.conv(f'{name}.conv_dw', block.conv_dw, x))
        return plan.norm(f'{name}.bn2', plan.conv(f'{name}.conv_pw', block.conv_pw, h, out_channels(block.conv_pw)))
    if isinstance(block, InvertedResidual):
        expand, rest = divmod(block.conv_pw.out_channels, block.conv_pw.in_channels)
        if rest:
            raise ValueError(f'{name}: hidden width {block.conv_pw.out_channels} is not a multiple of its input')
        hidden = Channels(x.channels.group, x.channels.mult * expand)
        h = plan.norm(f'{name}.bn1', plan.conv(f'{name}.conv_pw', block.conv_pw, x, hidden))
        h = plan.norm(f'{name}.bn2', plan.conv(f'{name}.conv_dw', block.conv_dw, h))
        return plan.norm(f'{name}.bn3', plan.conv(f'{name}.conv_pwl', block.conv_pwl, h, out_channels(block.conv_pwl)))
    raise ValueError(f'{name}: {type(block).__name__} blocks are not slimmable here')


def _create_pss_effnet(variant: str, pretrained: bool = False, **kwargs) -> PssEfficientNet:
    return build_supernet(PssEfficientNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs)


def _gen_pss_mobilenet_v1(variant: str, pretrained: bool = False, **kwargs) -> PssEfficientNet:
    """MobileNetV1 exactly as timm's mobilenetv1_100, as a supernet with one group per block."""
    arch_def = [
        ['dsa_r1_k3_s1_c64'],
        ['dsa_r2_k3_s2_c128'],
        ['dsa_r2_k3_s2_c256'],
        ['dsa_r6_k3_s2_c512'],
        ['dsa_r2_k3_s2_c1024'],
    ]
    model_kwargs = dict(
        block_args=decode_arch_def(arch_def),
        num_features=0,
        stem_size=32,
        group_per='block',
        dense_architecture='mobilenetv1_100',
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, 'relu6'),
        **kwargs,
    )
    return _create_pss_effnet(variant, pretrained, **model_kwargs)


def _gen_pss_mobilenet_v2(variant: str, pretrained: bool = False, **kwargs) -> PssEfficientNet:
    """MobileNetV2 exactly as timm's mobilenetv2_100, as a supernet with one group per stage, head fixed."""
    arch_def = [
        ['ds_r1_k3_s1_c16'],
        ['ir_r2_k3_s2_e6_c24'],
        ['ir_r3_k3_s2_e6_c32'],
        ['ir_r4_k3_s2_e6_c64'],
        ['ir_r3_k3_s1_e6_c96'],
        ['ir_r3_k3_s2_e6_c160'],
        ['ir_r1_k3_s1_e6_c320'],
    ]
    model_kwargs = dict(
        block_args=decode_arch_def(arch_def),
        num_features=1280,
        stem_size=32,
        group_per='stage',
        fixed_groups=kwargs.pop('fixed_groups', ('conv_head',)),
        dense_architecture='mobilenetv2_100',
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, 'relu6'),
        **kwargs,
    )
    return _create_pss_effnet(variant, pretrained, **model_kwargs)


def _cfg(url: str = '', **kwargs):
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem', 'classifier': 'classifier',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2109.05432',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'pss_mobilenetv1.pss_in1k': _cfg(hf_hub_id=hub_repo_id('pss_mobilenetv1.pss_in1k')),
    'pss_mobilenetv2.pss_in1k': _cfg(hf_hub_id=hub_repo_id('pss_mobilenetv2.pss_in1k')),
})


@register_model
def pss_mobilenetv1(pretrained: bool = False, **kwargs) -> PssEfficientNet:
    """MobileNetV1 PSS supernet: 14 channel groups, widths 0.75-1.0, 128-224px (MACs: `model.space.flops_span`)."""
    return _gen_pss_mobilenet_v1('pss_mobilenetv1', pretrained=pretrained, **kwargs)


@register_model
def pss_mobilenetv2(pretrained: bool = False, **kwargs) -> PssEfficientNet:
    """MobileNetV2 PSS supernet: 9 channel groups (head fixed), widths 0.75-1.0, 128-224px (MACs:
    `model.space.flops_span`)."""
    return _gen_pss_mobilenet_v2('pss_mobilenetv2', pretrained=pretrained, **kwargs)
