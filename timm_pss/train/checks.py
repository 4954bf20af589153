"""Usage checks before any long work: each stops the command with one line naming the problem and the fix.

They raise `UsageError` (exit code 2, as argparse's usage errors); `timm_pss.train.cli.main` prints it as
`train_pss.py: error: ...` without a traceback. `TrainingFailed` (exit code 1) is a run that cannot go on.
"""
import argparse
import importlib.util
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Optional

import yaml
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils import load_checkpoint_metadata

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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f'--resume {path}: torch.load(weights_only=True) refused this file ({reason}). train_pss.py '
                         f'never unpickles arbitrary objects; resume from a checkpoint train_pss.py wrote')
    except (OSError, EOFError, ValueError) as e:
        raise UsageError(f'--resume {path} is not a readable checkpoint ({type(e).__name__}: {e}); it may be '
                         f'truncated, resume from another checkpoint of the run')
    if not isinstance(meta, dict) or 'state_dict' not in meta:
        raise UsageError(f'--resume {path} is not a training checkpoint (no "state_dict"); for weights only use '
                         f'--initial-checkpoint')
    return meta


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
        if Path(args.data_dir).is_dir():
            check_image_folders(args)
    if args.pss_latency_table:
        read_latency_table(args.pss_latency_table)
    if args.resume:
        path = resume_checkpoint_file(args.resume)
        check_resume_settings(args, path, read_resume_metadata(path))
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
    last.pth.tar and the temporary of the next one, and model.safetensors."""
    per_checkpoint = checkpoint_bytes(model, args)
    needed = per_checkpoint * (args.checkpoint_hist + 2) + per_checkpoint // 2
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UsageError(f'--output {folder}: {free / 2**20:.1f} MiB free, the run needs about {needed / 2**20:.1f} '
                         f'MiB ({args.checkpoint_hist + 2} checkpoints of {per_checkpoint / 2**20:.1f} MiB and the '
                         f'weights); free space, lower --checkpoint-hist or choose another --output')
