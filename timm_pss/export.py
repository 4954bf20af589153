"""Export the active subnet of a supernet as a plain, static timm model (the dense class, narrower layers).

`python -m timm_pss.export RUN --output DIR` exports every budget entry with a manifest: see `timm_pss.deploy`.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import adapt_model_from_string

from .conversion import slimmable_layers
from .resolution import set_input_size_cfg
from .supernet import find_supernet

__all__ = ['export_subnet']


@torch.no_grad()
def export_subnet(model: nn.Module) -> nn.Module:
    """A standalone timm model (e.g. `EfficientNet`, `ResNet`) of `model`'s active subnet, in eval mode.

    It holds copies of the active weights and BatchNorm statistics, so its outputs equal the supernet's at the
    active resolution, and it scripts (`torch.jit.script`) and exports (`torch.export`) like any timm model.
    `model` may be wrapped (DDP, ModelEma, torch.compile).
    """
    supernet = find_supernet(model)
    if not hasattr(supernet, 'dense_model'):
        raise TypeError(f'{type(supernet).__name__} cannot be exported; export the full supernet, not a '
                        f'features_only model')
    subnet = supernet.active_subnet
    state = {}
    for name, layer in slimmable_layers(supernet):
        for key, tensor in layer.slice_state().items():
            state[f'{name}.{key}'] = tensor.detach().clone(memory_format=torch.contiguous_format)
    shapes = '***'.join(f'{k}:[{",".join(str(d) for d in v.shape)}]' for k, v in state.items() if v.dim())
    skeleton = supernet.dense_model(device='meta')
    exported = adapt_model_from_string(skeleton, shapes)
    exported.load_state_dict(state, strict=True, assign=True)
    exported.eval()
    cfg = dict(getattr(supernet, 'pretrained_cfg', None) or {})
    for key in ('url', 'hf_hub_id', 'hf_hub_filename', 'file', 'state_dict', 'tag'):
        cfg.pop(key, None)
    cfg.update(architecture=supernet.dense_architecture, pss_subnet=subnet.to_dict())
    set_input_size_cfg(cfg, subnet.resolution)
    exported.pretrained_cfg = exported.default_cfg = cfg
    return exported


if __name__ == '__main__':
    import sys

    from .deploy import main
    sys.exit(main())
