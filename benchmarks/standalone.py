"""Train one architecture of a supernet's space alone: the yardstick a subnet of the supernet is measured against.

The architecture (`--subnet`: `max`, `min` or a JSON {"resolution": R, "widths": [...]}, e.g. a budget-table entry
of results.json) is exported from the supernet as the plain timm model it is an instance of (`export_subnet`),
re-initialised with timm's own initialisation for its widths, and trained with cross-entropy only (no distillation,
no other subnets) on exactly what `train_pss.py` would use for the same command line: its datasets, held-out slice,
loaders, transforms, optimizer, schedule, epochs and seed. Each batch is resized to the architecture's resolution
as the supernet resizes it for a subnet (bilinear, antialiased), so the images are the same as a subnet sees.

    python benchmarks/standalone.py --subnet max --output output/alone --experiment max-seed0 \\
        <train_pss.py options: --dataset, --data-dir, --lr, --epochs, --seed, --pss-width-range, ...>

The run folder gets `results.json` in train_pss.py's format (one budget-table entry: FLOPs, resolution, widths,
top-1 / top-5 on the validation split, top-1 on the held-out slice; so a report reads it as it reads a supernet's)
and `summary.csv` (per epoch: training loss, held-out top-1, learning rate: what a recipe is chosen on, never the
validation split). BatchNorm keeps the running statistics of training, as a model trained alone is used. A
non-finite loss stops the run with exit code 1 and one line saying where (`training diverged`), as train_pss.py does.
"""
import argparse
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, List, Tuple

import torch
from timm.loss import create_classification_loss
from timm.models._efficientnet_builder import efficientnet_init_weights
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import accuracy, random_seed, setup_default_logging

from timm_pss import Subnet
from timm_pss.export import export_subnet
from timm_pss.files import claim_new_dir, write_text_atomic
from timm_pss.reporting import write_csv
from timm_pss.resolution import resize_to_resolution
# the recipe's one definition: train_pss.py's parser, checks, datasets, loaders and optimizer
from timm_pss.train.args import parse_args as parse_train_args
from timm_pss.train.checks import CommandError, TrainingFailed, UsageError, check_run_args
from timm_pss.train.data import create_loaders
from timm_pss.train.optimizer import create_optimizer
from timm_pss.train.run import create_supernet, run_folder_name

_logger = logging.getLogger('standalone')


def parse_args(argv=None) -> Tuple[argparse.Namespace, str]:
    """(train_pss.py's arguments with `subnet` added, the --subnet text); train_pss.py's checks apply."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], add_help=False)
    parser.add_argument('--subnet', required=True,
                        help='max, min or a JSON {"resolution": R, "widths": [...]} of the supernet\'s space')
    own, rest = parser.parse_known_args(argv)
    args, _ = parse_train_args(rest)
    check_run_args(args)
    if args.resume:
        raise UsageError('standalone.py does not resume (a run is short): remove --resume and run again')
    return args, own.subnet


def resolve_subnet(text: str, space) -> Subnet:
    """`max`, `min` or a JSON subnet of `space`; anything else stops with one line saying what is allowed."""
    if text in ('max', 'min'):
        return space.max_subnet() if text == 'max' else space.min_subnet()
    try:
        return space.validate(Subnet.from_dict(json.loads(text)))
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise UsageError(f'--subnet {text!r}: {e}; give max, min or {{"resolution": R, "widths": [...]}} '
                         f'of the space {space}') from None


def standalone_model(supernet, subnet: Subnet) -> torch.nn.Module:
    """The plain timm model of `subnet`'s architecture with fresh weights (timm's EfficientNet initialisation for
    its own widths, from torch's current RNG state), in training mode."""
    with supernet.keep_active():
        supernet.set_subnet(subnet)
        model = export_subnet(supernet)
    efficientnet_init_weights(model)
    for module in model.modules():  # fresh BN statistics, not the supernet's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
    return model.train()


@torch.no_grad()
def top1_top5(model: torch.nn.Module, loader: Iterable, resolution: int, device: torch.device) -> Tuple[float, float]:
    """(top-1, top-5) in percent of `model` in eval mode over `loader`, each batch resized to `resolution`."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0.0
    for images, target in loader:
        images, target = resize_to_resolution(images.to(device), resolution), target.to(device)
        output = model(images)
        top1, top5 = accuracy(output, target, topk=(1, min(5, output.shape[-1])))
        correct1 += top1.item() * len(target)
        correct5 += top5.item() * len(target)
        total += len(target)
    model.train(was_training)
    return correct1 / total, correct5 / total


def train(args: argparse.Namespace, subnet_text: str) -> Path:
    """Train the architecture alone; returns the run folder."""
    device = torch.device(args.device)
    args.prefetcher = device.type == 'cuda' and not args.no_prefetcher
    args.distributed, args.world_size, args.rank = False, 1, 0
    random_seed(args.seed, 0)
    supernet, datasets, data_config = create_supernet(args, None, primary=True)
    subnet = resolve_subnet(subnet_text, supernet.space)
    flops = supernet.space.flops(subnet)
    model = standalone_model(supernet, subnet).to(device)
    output_dir = claim_new_dir(run_folder_name(args))
    train_loader, _, heldout_loader, val_loader = create_loaders(args, data_config, datasets, False, device)
    optimizer = create_optimizer(model, args)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                updates_per_epoch=len(train_loader))
    criterion = create_classification_loss(smoothing=args.smoothing)
    _logger.info(f'Training {subnet} ({flops / 1e6:.2f} MMACs) alone for {num_epochs} epochs; run folder '
                 f'{output_dir}')
    summary: List[dict] = []
    updates = 0
    for epoch in range(num_epochs):
        start, loss_sum, seen = time.time(), 0.0, 0
        for step, (images, target) in enumerate(train_loader):
            images, target = resize_to_resolution(images.to(device), subnet.resolution), target.to(device)
            loss = criterion(model(images), target)
            if not math.isfinite(loss.item()):
                raise TrainingFailed(f'epoch {epoch}, step {step}: training diverged: non-finite cross-entropy '
                                     f'({loss.item()}) (--lr, --warmup-epochs, --clip-grad)')
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            loss_sum, seen = loss_sum + loss.item() * len(target), seen + len(target)
        heldout = top1_top5(model, heldout_loader, subnet.resolution, device)[0]
        summary.append(OrderedDict(epoch=epoch, train_loss=loss_sum / seen, heldout_top1=heldout,
                                   lr=optimizer.param_groups[0]['lr'], train_s=time.time() - start))
        write_csv(output_dir / 'summary.csv', summary)
        _logger.info(f'Epoch {epoch}: loss {loss_sum / seen:.3f}  held-out top-1 {heldout:.2f}  '
                     f'{seen / (time.time() - start):.0f} img/s')
        scheduler.step(epoch + 1)
    top1, top5 = top1_top5(model, val_loader, subnet.resolution, device)
    entry = OrderedDict(entry=0, flops=flops, mflops=round(flops / 1e6, 3), resolution=subnet.resolution,
                        widths=' '.join(map(str, subnet.widths)), top1=top1, top5=top5, heldout_top1=heldout,
                        score=None)
    write_text_atomic(output_dir / 'results.json', json.dumps(
        {'group_names': list(supernet.space.group_names), 'entries': [entry]}, indent=2))
    _logger.info(f'{subnet}: validation top-1 {top1:.2f}, held-out top-1 {heldout:.2f}; wrote {output_dir}')
    return output_dir


def main(argv=None) -> int:
    setup_default_logging()
    try:
        train(*parse_args(argv))
    except CommandError as e:  # as train_pss.py: one line, exit 2 for usage, 1 for a failed run
        print(f'standalone.py: error: {e}', file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == '__main__':
    sys.exit(main())
