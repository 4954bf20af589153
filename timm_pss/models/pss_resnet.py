"""PSS supernet of ResNet-50 (timm's ResNet class with slimmable layers).

At full width and 224px it is, key for key and shape for shape, timm's `resnet50`.

Search space, 21 channel groups in forward order:
  * `conv1`: the stem conv (64);
  * `layerS.B`: the mid width of bottleneck B of stage S, shared by its 1x1 reduce conv and 3x3 conv
    (64, 128, 256, 512 per stage);
  * `layerS`: the output width of stage S (256, 512, 1024, 2048), tied across the stage by the residuals and
    set by the first block's conv3 and downsample conv.
Widths: every multiple of 8 that `make_divisible(base * m, 8)` reaches for m in `width_range`, default
0.25..1.0 as US-Net's S-ResNet-50; resolutions 128..224 in steps of 8. The span is 0.091..4.09 GMACs
(min subnet at 128px; the 0.25x subnet at 224px is 0.278 GMACs, US-Net's 0.28).
"""
from typing import Tuple

from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet

from ..channel_plan import ChannelPlan
from ..hub import hub_repo_id
from ..supernet import SupernetMixin
from .build import build_supernet

__all__ = ['PssResNet']


class PssResNet(SupernetMixin, ResNet):
    """timm's ResNet (single 7x7 stem conv, bottleneck blocks, conv downsample) as a PSS supernet.

    Args:
        width_range: (lo, hi) width multipliers of the space.
        resolution_range: (min, max, step) input resolutions of the space.
        fixed_groups: groups kept at full width.
        dense_architecture: the timm model an exported subnet is an instance of.
        **kwargs: ResNet's own arguments.
    """

    dense_class = ResNet

    def __init__(
            self,
            width_range: Tuple[float, float] = (0.25, 1.0),
            resolution_range: Tuple[int, int, int] = (128, 224, 8),
            fixed_groups: Tuple[str, ...] = (),
            dense_architecture: str = '',
            **kwargs,
    ):
        self._dense_init = dict(kwargs)
        super().__init__(**kwargs)
        self.dense_architecture = dense_architecture
        self._init_supernet(width_range, resolution_range, fixed_groups)

    def channel_plan(self) -> ChannelPlan:
        if not isinstance(self.conv1, nn.Conv2d):
            raise ValueError('only the single 7x7 conv stem (stem_type="") is slimmable here')
        plan = ChannelPlan()
        x = plan.input(self.in_chans)
        x = plan.conv('conv1', self.conv1, x, plan.new_group('conv1', self.conv1.out_channels))
        x = plan.norm('bn1', x)
        plan.tap('act1', x)
        x = plan.pool('maxpool', self.maxpool, x)
        for s in range(1, 5):
            stage = f'layer{s}'
            for b, block in enumerate(getattr(self, stage)):
                name = f'{stage}.{b}'
                if not isinstance(block, Bottleneck) or block.se is not None or not isinstance(block.aa, nn.Identity):
                    raise ValueError(f'{name}: only plain Bottleneck blocks (no SE, no anti-aliasing) are slimmable')
                mid = plan.new_group(name, block.conv1.out_channels)
                h = plan.norm(f'{name}.bn1', plan.conv(f'{name}.conv1', block.conv1, x, mid))
                h = plan.norm(f'{name}.bn2', plan.conv(f'{name}.conv2', block.conv2, h, mid))
                if block.downsample is None:
                    out = x.channels
                else:
                    if not (isinstance(block.downsample, nn.Sequential) and len(block.downsample) == 2):
                        raise ValueError(f'{name}: only a conv + norm downsample (avg_down=False) is slimmable')
                    out = plan.new_group(stage, block.conv3.out_channels)
                    plan.norm(f'{name}.downsample.1', plan.conv(f'{name}.downsample.0', block.downsample[0], x, out))
                x = plan.norm(f'{name}.bn3', plan.conv(f'{name}.conv3', block.conv3, h, out))
            plan.tap(stage, x)
        plan.head(x, self.global_pool, self.fc, 'fc')
        return plan


def _create_pss_resnet(variant: str, pretrained: bool = False, **kwargs) -> PssResNet:
    return build_supernet(PssResNet, variant, pretrained, **kwargs)


def _cfg(url: str = '', **kwargs):
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2109.05432',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'pss_resnet50.pss_in1k': _cfg(hf_hub_id=hub_repo_id('pss_resnet50.pss_in1k')),
})


@register_model
def pss_resnet50(pretrained: bool = False, **kwargs) -> PssResNet:
    """ResNet-50 PSS supernet: 21 channel groups, widths 0.25-1.0, 128-224px (MACs: `model.space.flops_span`)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), dense_architecture='resnet50')
    return _create_pss_resnet('pss_resnet50', pretrained, **dict(model_args, **kwargs))
