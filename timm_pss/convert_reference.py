"""Convert a checkpoint of the PSS-Net reference implementation (MobileNetV1/V2) into a timm_pss Hub folder.

    python -m timm_pss.convert_reference CKPT --model pss_mobilenetv2 --out DIR --trust-pickle [--calib-data FOLDER]

Reference checkpoints are torch pickles: loading one runs whatever code it names, so it is only done when you pass
--trust-pickle for a file you trust. Weights are mapped layer by layer in forward order (conv, BN, linear; every
shape checked) from `features.*` / `classifier.0` to the timm layout. Each pool (`arch_pools['pools'][metric][target]`,
keys parsed with `ast.literal_eval`) gives its best-scored subnet; with the max and min subnets they become the budget
table, calibrated on --calib-data (an image folder). Without calibration data the model is written with an empty table
(`set_budget` refuses until one is built) and the chosen subnets go to `reference_subnets.json`.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import pickle
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn
from timm.layers import make_divisible

from .errors import first_line
from .spaces import SearchSpace, Subnet

__all__ = ['map_reference_state_dict', 'parse_reference_pools', 'check_finite_weights', 'convert']

REFERENCE_MODELS = ('pss_mobilenetv1', 'pss_mobilenetv2')


def _reference_layers(state: Dict[str, torch.Tensor]) -> List[Tuple[str, str]]:
    """(kind, prefix) of every conv / bn / linear in the reference state dict, in its (forward) order."""
    layers, seen = [], set()
    for key, tensor in state.items():
        if key.endswith('.bn.running_mean'):
            prefix, kind = key[:-len('.bn.running_mean')], 'bn'
        elif key.endswith('.weight') and f'{key[:-7]}.bn.running_mean' not in state and '.bn.' not in key:
            prefix, kind = key[:-len('.weight')], {4: 'conv', 2: 'linear'}.get(tensor.dim())
            if kind is None:
                continue
        else:
            continue
        if prefix not in seen:
            seen.add(prefix)
            layers.append((kind, prefix))
    return layers


def map_reference_state_dict(reference: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """The reference's weights under `model`'s keys; ValueError at the first layer whose kind or shape differs."""
    reference = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in reference.items())
    ours = [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    theirs = _reference_layers(reference)
    if len(ours) != len(theirs):
        raise ValueError(f'the reference checkpoint has {len(theirs)} conv/BN/linear layers, '
                         f'{type(model).__name__} has {len(ours)}: not the same architecture')
    mapped = {}
    for (name, module), (kind, prefix) in zip(ours, theirs):
        expected = 'bn' if isinstance(module, nn.BatchNorm2d) else 'linear' if isinstance(module, nn.Linear) else 'conv'
        sources = {'weight': f'{prefix}.weight', 'bias': f'{prefix}.bias'}
        if kind == 'bn':
            sources.update(running_mean=f'{prefix}.bn.running_mean', running_var=f'{prefix}.bn.running_var')
        for attr, key in sources.items():
            target = getattr(module, attr, None)
            if target is None:
                continue
            if kind != expected or key not in reference or tuple(reference[key].shape) != tuple(target.shape):
                got = tuple(reference[key].shape) if key in reference else 'missing'
                raise ValueError(f'reference layer {prefix} ({kind}) does not fit {name} ({expected}): {key} is '
                                 f'{got}, {name}.{attr} needs {tuple(target.shape)}')
            mapped[f'{name}.{attr}'] = reference[key]
        if isinstance(module, nn.BatchNorm2d) and module.num_batches_tracked is not None:
            mapped[f'{name}.num_batches_tracked'] = reference.get(f'{prefix}.bn.num_batches_tracked',
                                                                  torch.tensor(0, dtype=torch.long))
    return mapped


def parse_reference_pools(arch_pools: dict, space: SearchSpace) -> Dict[float, List[Tuple[Subnet, float]]]:
    """{target: [(subnet, score), ...]} from `arch_pools['pools'][metric][target]` ({str(cfg dict): score}).

    Every score must be a finite number: a NaN would win its pool's max() (comparisons with NaN are false) and an
    infinity would win it unearned, so such a checkpoint is refused with a ValueError naming the pool and subnet
    rather than skipped with a warning: a reference run that produced one is not one to convert.
    """
    pools = arch_pools.get('pools') if isinstance(arch_pools, dict) else None
    if not isinstance(pools, dict):
        raise ValueError("arch_pools has no 'pools' mapping")
    result: Dict[float, List[Tuple[Subnet, float]]] = {}
    for metric, by_target in pools.items():
        for target, entries in by_target.items():
            for text, score in entries.items():
                try:
                    cfg = ast.literal_eval(text)
                    mults = cfg['stage_cout_mults']
                    if len(mults) != space.num_groups:
                        raise ValueError(f'{len(mults)} width multipliers for {space.num_groups} groups')
                    widths = tuple(make_divisible(base * m, 8) for base, m in zip(space.max_widths, mults))
                    subnet = space.validate(Subnet(int(cfg['resolution']), widths))
                except (ValueError, SyntaxError, KeyError, TypeError) as e:
                    raise ValueError(f'pool {metric}/{target}: cannot read subnet {text[:80]!r}: {e}') from None
                try:
                    score = float(score)
                except (TypeError, ValueError, OverflowError):
                    score = math.nan
                if not math.isfinite(score):
                    raise ValueError(f'pool {metric}/{target}: subnet {text[:80]!r} has score {entries[text]!r}; '
                                     f'pool scores must be finite numbers')
                result.setdefault(float(target), []).append((subnet, score))
    return result


def check_finite_weights(state_dict: Dict[str, torch.Tensor], source) -> None:
    """Refuse weights a converted model would silently run wrong with: any non-finite value, or a negative BN
    running_var (its square root is NaN)."""
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor)
        if key.endswith('running_var'):
            bad |= tensor < 0
        if bad.any():
            value = tensor[bad].flatten()[0].item()
            allowed = 'finite and >= 0' if key.endswith('running_var') else 'finite'
            raise ValueError(f'{source}: {key} holds {value} ({int(bad.sum())} such values); weights must be '
                             f'{allowed}, so this checkpoint would give a broken model')


def convert(checkpoint: Path, model_name: str, out: Path, calib_data: str = '', calib_batches: int = 8,
            batch_size: int = 64, trust_pickle: bool = False, force: bool = False) -> Path:
    """Write the converted Hub folder to `out`: a new or empty folder, or with `force` one holding other files,
    never a train_pss.py run folder (whose weights and results would then describe another model); see the
    module docstring."""
    import timm
    from .files import write_text_atomic
    from .publish import save_hub_files
    from .runs import check_output_folder

    out = check_output_folder(out, force=force)

    if not trust_pickle:
        raise PermissionError('reference checkpoints are pickles and loading one can run code from the file; pass '
                              '--trust-pickle (trust_pickle=True) only for a checkpoint you trust')
    if model_name not in REFERENCE_MODELS:
        raise ValueError(f'the reference publishes {REFERENCE_MODELS} supernets, got {model_name!r}')
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'{checkpoint} is not a file; give the reference checkpoint (a .pth file)')
    if calib_data and not Path(calib_data).is_dir():
        raise FileNotFoundError(f'--calib-data {calib_data} is not a folder; give an image folder with class '
                                f'subfolders')
    if calib_batches < 1 or batch_size < 1:
        raise ValueError(f'--calib-batches and --batch-size must be at least 1, got {calib_batches} and {batch_size}')
    try:
        ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)  # trusted: the user passed --trust-pickle
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f'{checkpoint} is not a readable torch checkpoint ({type(e).__name__}: {first_line(e)}); '
                         f'it may be truncated') from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt or 'arch_pools' not in ckpt:
        raise ValueError(f'{checkpoint} is not a PSS-Net reference checkpoint (needs "model" and "arch_pools")')
    model = timm.create_model(model_name).eval()
    state_dict = map_reference_state_dict(ckpt['model'], model)
    check_finite_weights(state_dict, checkpoint)
    model.load_state_dict(state_dict, strict=True)
    pools = parse_reference_pools(ckpt['arch_pools'], model.space)
    chosen = [max(entries, key=lambda e: e[1]) for _, entries in sorted(pools.items())]
    subnets = [s for s, _ in chosen] + [model.space.max_subnet(), model.space.min_subnet()]
    metrics = [{'score': score} for _, score in chosen] + [{}, {}]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / 'reference_subnets.json', json.dumps(
        [{'subnet': s.to_dict(), 'flops': model.space.flops(s), **m} for s, m in zip(subnets, metrics)], indent=1))
    if calib_data:
        from timm.data import create_dataset, create_loader, resolve_data_config
        from .calibration import fill_budget_table
        config = resolve_data_config(model=model)
        loader = create_loader(create_dataset('', root=calib_data, is_training=False), input_size=config['input_size'],
                               batch_size=batch_size, is_training=False, mean=config['mean'], std=config['std'],
                               crop_pct=config['crop_pct'], interpolation=config['interpolation'], num_workers=2,
                               use_prefetcher=False, device=next(model.parameters()).device)
        fill_budget_table(model, subnets, loader, num_batches=calib_batches, metrics=metrics)
        model.set_subnet(model.space.max_subnet())
    save_hub_files(model, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_pss.convert_reference',
                                     description=__doc__.split('\n', 1)[0])
    parser.add_argument('checkpoint', type=Path, help='the reference checkpoint (a torch pickle)')
    parser.add_argument('--model', required=True, choices=REFERENCE_MODELS)
    parser.add_argument('--out', required=True, type=Path, help='output folder (timm Hub layout): new or empty, '
                        'see --force')
    parser.add_argument('--calib-data', default='', metavar='FOLDER',
                        help='image folder (class subfolders) to calibrate BN per budget-table entry')
    parser.add_argument('--calib-batches', type=int, default=8)
    parser.add_argument('-b', '--batch-size', type=int, default=64)
    parser.add_argument('--trust-pickle', action='store_true',
                        help='allow loading the pickle (it can run code): only for a file you trust')
    parser.add_argument('--force', action='store_true',
                        help='write into an --out folder that holds other files (never into a training run folder)')
    args = parser.parse_args(argv)
    try:
        out = convert(args.checkpoint, args.model, args.out, args.calib_data, args.calib_batches, args.batch_size,
                      args.trust_pickle, args.force)
    except (PermissionError, ValueError, FileNotFoundError) as e:
        parser.exit(2, f'error: {e}\n')
    if args.calib_data:
        print(f'wrote {out}: weights, a calibrated budget table; load with timm.create_model("local-dir:{out}", '
              f'pretrained=True)')
    else:
        print(f'wrote {out}: weights and reference_subnets.json; the budget table is NOT calibrated (empty), so '
              f'set_budget refuses until you rerun with --calib-data FOLDER (or call timm_pss.fill_budget_table)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
