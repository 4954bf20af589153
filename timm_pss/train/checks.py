"""Usage checks before any long work: each stops the command with one line naming the problem and the fix.

They raise `UsageError` (exit code 2, as argparse's usage errors); `timm_pss.train.cli.main` prints it as
`train_pss.py: error: ...` without a traceback. `TrainingFailed` (exit code 1) is a run that cannot go on.
"""
import argparse
import importlib.util
import logging
import math
import os
import pickle
import shutil
from pathlib import Path
from typing import Optional

import timm.optim
import torch
import yaml
from timm.data import create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils import load_checkpoint_metadata

from timm_pss.errors import first_line
from timm_pss.timm_compat import search_split
from timm_pss.units import format_flops, parse_flops
from timm_pss.latency import LatencyTable
from timm_pss.pss.options import PSS_RESUME_SETTINGS

from .args import plain_args

_logger = logging.getLogger('train_pss')


class CommandError(Exception):
    """A one-line reason the command stops; `exit_code` is its exit status."""
    exit_code = 1


class UsageError(CommandError):
    """Bad arguments, or files and folders they name that cannot serve: exit code 2, as argparse's usage errors."""
    exit_code = 2


class TrainingFailed(CommandError):
    """A run that cannot go on (e.g. diverged weights): exit code 1."""


# settings a resumed run must share with the run it continues (its model, space and pools depend on them)
RESUME_SETTINGS = ('model', 'model_kwargs', 'num_classes', 'in_chans') + PSS_RESUME_SETTINGS
# settings a run may leave unset, to be inferred from its data: compared once the data has filled them in
INFERRED_SETTINGS = ('num_classes', 'in_chans')


def resume_checkpoint_file(resume: str) -> Path:
    """The checkpoint --resume names: the file itself, or a run folder's last.pth.tar."""
    path = Path(resume)
    if not path.exists():
        raise UsageError(f'--resume {resume} does not exist; give a run folder or one of its .pth.tar checkpoints')
    if path.is_dir():
        if not (path / 'last.pth.tar').is_file():
            raise UsageError(f'--resume {resume} holds no last.pth.tar, so there is nothing to resume; give a run '
                             f'folder that train_pss.py wrote checkpoints into, or a .pth.tar file')
        path = path / 'last.pth.tar'
    return path


def read_resume_metadata(path: Path) -> dict:
    """A checkpoint's non-tensor entries, read with weights_only=True (never unpickling arbitrary objects)."""
    try:
        meta = load_checkpoint_metadata(str(path))
    except (RuntimeError, pickle.UnpicklingError) as e:
        raise UsageError(f'--resume {path}: torch.load(weights_only=True) refused this file ({first_line(e)}). '
                         f'train_pss.py never unpickles arbitrary objects; resume from a checkpoint train_pss.py wrote')
    except (OSError, EOFError, ValueError) as e:
        raise UsageError(f'--resume {path} is not a readable checkpoint ({type(e).__name__}: {e}); it may be '
                         f'truncated, resume from another checkpoint of the run')
    if not isinstance(meta, dict) or 'state_dict' not in meta:
        raise UsageError(f'--resume {path} is not a training checkpoint (no "state_dict"); for weights only use '
                         f'--initial-checkpoint')
    return meta


def check_resume_epoch(args: argparse.Namespace, path: Path, meta: dict) -> None:
    """The checkpoint's epoch must be a count this run can continue from: a whole number >= 0 below --epochs (a
    finished run, epoch --epochs - 1, resumes to finalise only)."""
    epoch = meta.get('epoch')
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f'--resume {path} records epoch {epoch!r}, not a whole number >= 0; resume a checkpoint '
                         f'train_pss.py wrote')
    if not args.pss_finalize_only and args.start_epoch is None and epoch + 1 > args.epochs:
        raise UsageError(f'--resume {path} is at epoch {epoch}, beyond --epochs {args.epochs}: nothing would train; '
                         f'give --epochs above {epoch} to train on, or --pss-finalize-only to finalise it')


def check_resume_settings(args: argparse.Namespace, path: Path, meta: dict) -> None:
    """Stop unless the checkpoint's run used the same model and PSS settings as this command.

    Settings this command leaves to the data (`INFERRED_SETTINGS` still None) are skipped: call again once the
    data has filled them in."""
    saved = meta.get('args')
    if isinstance(saved, argparse.Namespace):
        saved = vars(saved)
    if not isinstance(saved, dict) and (path.parent / 'args.yaml').is_file():
        saved = yaml.safe_load((path.parent / 'args.yaml').read_text())
    if not isinstance(saved, dict):
        _logger.warning(f'{path} records no arguments; its model and PSS settings cannot be checked')
        return
    def shown(value):
        return 'its default' if value is None else ' '.join(map(str, value)) if isinstance(value, list) else value

    ours, saved = plain_args(args), yaml.safe_load(yaml.safe_dump(saved))
    for key in RESUME_SETTINGS:
        if key in INFERRED_SETTINGS and ours.get(key) is None:
            continue
        if key in saved and saved[key] != ours.get(key):
            option = '--' + key.replace('_', '-')
            raise UsageError(f'--resume {path} is a run of {saved.get("model")} with {option} {shown(saved[key])}, '
                             f'this command has {shown(ours.get(key))}; give the same {option} to continue it, or '
                             f'start a new run without --resume')


def check_image_folders(args: argparse.Namespace) -> None:
    """Stop if an ImageNet-style split folder has a class folder without images (timm would drop that class and
    shift every later label)."""
    if args.dataset and args.dataset.lower() not in ('folder', 'imagefolder'):
        return
    train_root, val_root = (Path(search_split(args.data_dir, s)) for s in (args.train_split, args.val_split))
    if train_root.resolve() == val_root.resolve():
        raise UsageError(f'--data-dir {args.data_dir}: --train-split {args.train_split} and --val-split '
                         f'{args.val_split} both read {train_root}, so the run would validate on its training images; '
                         f'arrange the data as ROOT/train/CLASS/ and ROOT/validation/CLASS/ (or val/)')
    extensions = get_img_extensions(as_set=True)
    for split in dict.fromkeys((args.train_split, args.val_split)):
        root = Path(search_split(args.data_dir, split))
        if not root.is_dir():
            continue
        classes = sorted(p for p in root.iterdir() if p.is_dir())
        for folder in classes:
            if not any(os.path.splitext(f)[1].lower() in extensions for _, _, files in os.walk(folder) for f in files):
                raise UsageError(f'--data-dir: class folder {folder} holds no images '
                                 f'({", ".join(sorted(extensions))}); add its images or remove the folder')


# timm's scheduler names (timm.scheduler.create_scheduler_v2) and the autocast dtypes train_pss.py maps
SCHEDULERS = ('constant', 'cosine', 'multistep', 'plateau', 'poly', 'rsqrt', 'step', 'tanh')
AMP_DTYPES = ('float16', 'bfloat16')


def check_option_values(args: argparse.Namespace) -> None:
    """Values timm's train.py passes through to timm or torch, which fail there with a traceback (or train something
    else without a word): each refused in one line naming what it allows."""
    bounds = [('--lr', args.lr, 0, False), ('--smoothing', args.smoothing, 0, True), ('--seed', args.seed, 0, True),
              ('--checkpoint-hist', args.checkpoint_hist, 1, True), ('--log-interval', args.log_interval, 1, True),
              ('-j/--workers', args.workers, 0, True), ('--clip-grad', args.clip_grad, 0, False),
              ('--warmup-epochs', args.warmup_epochs, 0, True), ('--mixup', args.mixup, 0, True),
              ('--cutmix', args.cutmix, 0, True), ('--num-classes', args.num_classes, 1, True),
              ('--start-epoch', args.start_epoch, 0, True), ('--threads', args.threads, 1, True)]
    for option, value, least, inclusive in bounds:
        if value is not None and not (math.isfinite(value) and (value >= least if inclusive else value > least)):
            raise UsageError(f'{option} must be {"at least" if inclusive else "above"} {least}, got {value}')
    for option, value in (('--smoothing', args.smoothing), ('--drop', args.drop), ('--drop-path', args.drop_path)):
        if value is not None and not 0 <= value < 1:
            raise UsageError(f'{option} is a probability in [0, 1), got {value}')
    if args.std is not None and not all(math.isfinite(s) and s > 0 for s in args.std):
        raise UsageError(f'--std values must be above 0, got {args.std}')
    if args.mean is not None and not all(math.isfinite(m) for m in args.mean):
        raise UsageError(f'--mean values must be finite numbers, got {args.mean}')
    if args.amp_dtype not in AMP_DTYPES:
        raise UsageError(f'--amp-dtype {args.amp_dtype}: use one of {", ".join(AMP_DTYPES)}')
    if args.sched not in SCHEDULERS:
        raise UsageError(f'--sched {args.sched}: timm\'s schedulers are {", ".join(SCHEDULERS)}')
    check_named_choices(args)


def check_named_choices(args: argparse.Namespace) -> None:
    """--opt, --device, --torchcompile, --aa, --class-map and --experiment name things that must exist or be plain."""
    opt = args.opt.lower()
    try:
        timm.optim.get_optimizer_info(opt[len('lookahead_'):] if opt.startswith('lookahead_') else opt)
    except ValueError:
        raise UsageError(f'--opt {args.opt}: not one of timm\'s optimizers (timm.optim.list_optimizers(), e.g. sgd, '
                         f'adamw, lamb; lookahead_ADAMW-style prefixes allowed)') from None
    try:
        torch.device(args.device)
    except RuntimeError:
        raise UsageError(f'--device {args.device}: not a torch device; use cpu, cuda or cuda:N') from None
    backends = torch.compiler.list_backends(exclude_tags=())
    if args.torchcompile is not None and args.torchcompile not in backends:
        raise UsageError(f'--torchcompile {args.torchcompile}: not a torch.compile backend; use one of '
                         f'{", ".join(torch.compiler.list_backends())} (or eager)')
    if args.aa:
        try:
            create_transform(32, is_training=True, auto_augment=args.aa)
        except (AssertionError, ValueError, KeyError, IndexError) as e:
            raise UsageError(f'--aa {args.aa}: not an AutoAugment policy timm knows ({e}); e.g. rand-m9-mstd0.5, '
                             f'augmix-m5-w4-d2, original, v0') from None
    if args.class_map and not Path(args.class_map).is_file():
        raise UsageError(f'--class-map {args.class_map}: no such file')
    name = args.experiment
    if name and (name in ('.', '..') or Path(name).name != name or '\\' in name):
        raise UsageError(f'--experiment {name}: a run folder name, created under --output (no path separators and '
                         f'not . or ..); say where with --output')


def check_run_args(args: argparse.Namespace) -> Optional[Path]:
    """Usage errors found before anything is built: each stops with one line naming the problem and the fix.
    Returns the checkpoint file `--resume` names, if any."""
    if args.epochs < 1:
        raise UsageError(f'--epochs must be at least 1, got {args.epochs}')
    if args.batch_size < 1:
        raise UsageError(f'-b/--batch-size must be at least 1, got {args.batch_size}')
    if args.validation_batch_size is not None and args.validation_batch_size < 1:
        raise UsageError(f'-vb/--validation-batch-size must be at least 1, got {args.validation_batch_size}')
    if args.sync_bn:
        raise UsageError('--sync-bn cannot work with a supernet: SyncBatchNorm would replace the slimmable BN layers '
                         'that run each subnet\'s width; BN statistics are averaged across ranks at each epoch end '
                         '(--dist-bn reduce) and calibrated per budget at finalisation')
    for option, value, least in (('--val-interval', args.val_interval, 1), ('--recovery-interval',
                                 args.recovery_interval, 0), ('--aug-repeats', args.aug_repeats, 0)):
        if value < least:
            raise UsageError(f'{option} must be at least {least}, got {value}')
    check_option_values(args)
    if args.log_wandb and importlib.util.find_spec('wandb') is None:
        raise UsageError('--log-wandb needs the wandb package, which is not installed: pip install wandb (or leave out '
                         '--log-wandb)')
    if args.eval_metric.startswith('top1@'):  # top1@300M names the summary's top1@300.00M
        try:
            args.eval_metric = f'top1@{format_flops(parse_flops(args.eval_metric[5:]))}'
        except ValueError:
            pass  # not a budget: refused below with the allowed names
    if args.eval_metric not in eval_metric_names(args):
        raise UsageError(f'--eval-metric {args.eval_metric} is not recorded by train_pss.py (it measures accuracy, no '
                         f'validation loss); use one of {", ".join(eval_metric_names(args))}')
    if args.data_dir:
        if not Path(args.data_dir).exists() and not args.dataset_download:
            raise UsageError(f'--data-dir {args.data_dir} does not exist; give the dataset root (with train/ and '
                             f'validation/ class folders), or leave it out to train on the embedded digits')
        if Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
            raise UsageError(f'--data-dir {args.data_dir} is a file; give the dataset root folder')
        if Path(args.data_dir).is_dir():
            check_image_folders(args)
    if args.initial_checkpoint and not Path(args.initial_checkpoint).is_file():
        raise UsageError(f'--initial-checkpoint {args.initial_checkpoint}: no such file; give a .pth.tar or '
                         f'.safetensors file of this model\'s weights')
    if args.pss_latency_table:
        read_latency_table(args.pss_latency_table)
    if args.resume:
        path = resume_checkpoint_file(args.resume)
        meta = read_resume_metadata(path)
        check_resume_epoch(args, path, meta)
        check_resume_settings(args, path, meta)
        return path
    return None


def read_latency_table(path: str, model=None) -> LatencyTable:
    """--pss-latency-table, checked against `model` when given; a missing, unreadable or foreign file stops with
    one line."""
    try:
        table = LatencyTable.load(path)
        if model is not None:
            table.check_model(model)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f'--pss-latency-table {path}: {reason}; build a table for this model and space with python -m '
                         f'timm_pss.latency --model MODEL --output JSON')
    return table


def eval_metric_names(args: argparse.Namespace) -> list:
    """What --eval-metric may name: the metrics each epoch's evaluation records."""
    return ['top1', 'top5', 'min_top1'] + [f'top1@{format_flops(b)}' for b in args.pss_eval_budgets]


def check_image_size(args: argparse.Namespace, space) -> None:
    """Stop unless --img-size / --input-size agree with the space: in timm they set the training resolution, which
    for a supernet is each subnet's own (--pss-resolutions); the loaders deliver the largest."""
    largest = max(space.resolutions)
    sizes = (('--img-size', args.img_size, args.img_size),
             ('--input-size', args.input_size and ' '.join(map(str, args.input_size)),
              args.input_size and tuple(args.input_size[1:])))
    for option, shown, size in sizes:
        if size is not None and size not in (largest, (largest, largest)):
            raise UsageError(f'{option} {shown}: a supernet trains each subnet at its own resolution '
                             f'({min(space.resolutions)}..{largest} px here) and its loaders deliver the largest, '
                             f'{largest} px; set the resolutions with --pss-resolutions MIN MAX STEP instead')


def checkpoint_bytes(model, args: argparse.Namespace) -> int:
    """Estimated size of one training checkpoint: weights and buffers, optimizer slots (1 for SGD momentum,
    2 otherwise, e.g. Adam's moments) and the EMA copy."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    slots = 1 if args.opt.lower().split('_')[-1] in ('sgd', 'momentum', 'nesterov') else 2
    return state * (1 + slots + int(args.model_ema))


def check_free_space(folder: Path, model, args: argparse.Namespace) -> None:
    """Stop before training when `folder`'s disk clearly cannot hold the run: up to --checkpoint-hist checkpoints,
    last.pth.tar and the temporary of the next one, and model.safetensors (--pss-finalize-only writes only the
    weights and the results)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_checkpoint = checkpoint_bytes(model, args)
    checkpoints = 0 if args.pss_finalize_only else args.checkpoint_hist + 2
    needed = per_checkpoint * checkpoints + weights
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        what = (f'{checkpoints} checkpoints of {per_checkpoint / 2**20:.1f} MiB and the weights' if checkpoints else
                'the weights')
        raise UsageError(f'--output {folder}: {free / 2**20:.1f} MiB free, the run needs about {needed / 2**20:.1f} '
                         f'MiB ({what}); free space{", lower --checkpoint-hist" if checkpoints else ""} or choose '
                         f'another --output')
