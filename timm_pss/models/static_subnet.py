"""`timm_pss_subnet`: one subnet of a supernet as a static timm model, rebuilt from its description.

An exported budget entry (`timm_pss.deploy`) is its supernet's dense timm class at narrower widths, which no timm
architecture name describes; its `config.json` names this entrypoint with the supernet, the supernet's arguments
and the subnet, so `timm.create_model('local-dir:ENTRY', pretrained=True)` rebuilds and loads it (after
`import timm_pss`, which registers `timm_pss_subnet`). An entry at full width is saved as the dense architecture itself
and needs no timm_pss to load.
"""
from typing import Any, Dict, Optional

from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..spaces import Subnet

__all__ = ['timm_pss_subnet']


def _static_subnet(supernet: str = 'pss_mobilenetv1', subnet: Optional[Dict[str, Any]] = None,
                   supernet_args: Optional[Dict[str, Any]] = None, **kwargs) -> nn.Module:
    """The static model of `subnet` (a `Subnet.to_dict()`) of `supernet` built with `supernet_args` (random init)."""
    import timm
    from ..export import export_subnet

    if subnet is None:
        raise ValueError('timm_pss_subnet needs subnet= (a dict with "resolution" and "widths"), as timm_pss.deploy '
                         'writes it into config.json')
    model = timm.create_model(supernet, **dict(supernet_args or {}, **kwargs))
    model.set_subnet(Subnet.from_dict(subnet))
    static = export_subnet(model)
    static.train()
    return static


def _cfg(**kwargs):
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.875,
            'interpolation': 'bilinear', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
            'first_conv': '', 'classifier': '', 'license': 'apache-2.0', **kwargs}


default_cfgs = generate_default_cfgs({'timm_pss_subnet': _cfg()})


@register_model
def timm_pss_subnet(pretrained: bool = False, **kwargs) -> nn.Module:
    """A subnet of a pss_* supernet as a static timm model (`supernet=`, `subnet=`, `supernet_args=`)."""
    return build_model_with_cfg(_static_subnet, 'timm_pss_subnet', pretrained, **kwargs)
