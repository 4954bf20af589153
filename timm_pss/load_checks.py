"""The whole-state-dict check a supernet's `load_state_dict` runs before anything changes.

torch checks each module's keys and shapes as it copies, so a wrong-shape `conv_stem.weight` or an unexpected
key used to raise after the layers before it (and the budget table) had already been replaced. The supernet's
load pre-hook calls `check_state_dict` first: a load either fits whole or leaves the model exactly as it was.
The per-entry budget keys (the table and its BN statistics, whose shapes follow the incoming table) are checked by
`timm_pss.budget_storage`.
"""
from typing import Collection, Mapping

import torch
from torch import nn

__all__ = ['check_state_dict']


def check_state_dict(module: nn.Module, state_dict: Mapping[str, object], prefix: str, strict: bool,
                     budget_keys: Collection[str]) -> None:
    """Raise RuntimeError (torch's type for a load that does not fit) naming the first key whose value is not a
    tensor of the module's shape, or, under `strict`, a key missing or unexpected; `budget_keys` (full names) are
    left to the budget storage's own checks."""
    own = module.state_dict(prefix=prefix, keep_vars=True)
    name = type(module).__name__
    for key, current in own.items():
        if key in budget_keys:
            continue
        if key not in state_dict:
            if strict and not key.endswith('num_batches_tracked'):  # BN fills a missing counter itself
                raise RuntimeError(f'Error(s) in loading state_dict for {name}: missing key {key!r} (and nothing '
                                   f'was changed)')
            continue
        incoming = state_dict[key]
        if not isinstance(incoming, torch.Tensor):
            raise RuntimeError(f'Error(s) in loading state_dict for {name}: {key!r} is a '
                               f'{type(incoming).__name__}, not a tensor (and nothing was changed)')
        shape = incoming.shape
        if len(current.shape) == 0 and len(shape) == 1 and shape[0] == 1:  # torch's legacy 1-element scalars
            continue
        if shape != current.shape:
            raise RuntimeError(f'Error(s) in loading state_dict for {name}: size mismatch for {key}: the checkpoint '
                               f'has shape {tuple(shape)}, the model {tuple(current.shape)} (and nothing was changed)')
    if strict:
        unexpected = [k for k in state_dict if k.startswith(prefix) and k not in own and k not in budget_keys]
        if unexpected:
            raise RuntimeError(f'Error(s) in loading state_dict for {name}: unexpected key {unexpected[0]!r}'
                               f'{f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""} (and nothing '
                               f'was changed)')
