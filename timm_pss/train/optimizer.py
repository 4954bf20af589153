"""The optimizer: timm's, with the learning rate scaled to the global batch as timm's train.py does and
--no-pss-wd-depthwise's weight-decay exemption."""
import argparse
from functools import partial

import torch
from timm.optim import create_optimizer_v2, optimizer_kwargs, param_groups_layer_decay, param_groups_weight_decay


def lr_base_scale(opt: str) -> str:
    """timm's default --lr-base-scale: "sqrt" for Ada* and LAMB optimizers, "linear" for the others."""
    return 'sqrt' if any(name in opt.lower() for name in ('ada', 'lamb')) else 'linear'


def scaled_lr(lr_base: float, global_batch: int, lr_base_size: int, scale: str) -> float:
    """--lr-base for --lr-base-size images scaled to `global_batch` images, linearly or by the square root."""
    ratio = global_batch / lr_base_size
    return lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)


def depthwise_weight_names(model: torch.nn.Module) -> list:
    """Names of the depthwise conv weights (one input channel per group; a grayscale stem is not one)."""
    return [f'{name}.weight' for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]


def create_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """timm's optimizer for `args`; --no-pss-wd-depthwise adds the depthwise weights to the model's no-weight-decay
    list, keeping --layer-decay (whose groups also carry the decay split)."""
    kwargs = optimizer_kwargs(cfg=args)
    if args.pss_wd_depthwise:
        return create_optimizer_v2(model, **kwargs)
    no_decay = set(getattr(model, 'no_weight_decay', lambda: set())()) | set(depthwise_weight_names(model))
    if kwargs.get('layer_decay') is not None:
        groups = partial(param_groups_layer_decay, weight_decay=args.weight_decay, no_weight_decay_list=no_decay,
                         layer_decay=kwargs['layer_decay'], min_scale=kwargs.get('layer_decay_min_scale', 0.),
                         no_opt_scale=kwargs.get('layer_decay_no_opt_scale'))
    else:
        groups = partial(param_groups_weight_decay, weight_decay=args.weight_decay, no_weight_decay_list=no_decay)
    return create_optimizer_v2(model, param_group_fn=groups, **kwargs)
