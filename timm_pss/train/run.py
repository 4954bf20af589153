"""The training run's set-up: device, data, supernet, optimizer, PSS task, resume, loaders, schedule, run folder,
checkpoint saver and pool monitor, gathered in a `TrainingRun` that the epoch loop and finalisation share."""
import argparse
import logging
import os
import pickle
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributed as dist
import timm
from timm.data import Mixup, resolve_data_config
from timm.loss import create_classification_loss
from timm.models import load_checkpoint, resume_checkpoint
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    CheckpointSaver, NativeScaler, init_distributed_device, is_primary, load_checkpoint_metadata, random_seed,
)

from timm_pss.errors import first_line
from timm_pss.files import claim_new_dir, write_text_atomic
from timm_pss.latency import LatencyTable
from timm_pss.pss import PoolMonitor, ResumablePSSTask, build_sampler, sampler_kwargs
from timm_pss.supernet import SupernetMixin

from .args import plain_args
from .checks import (
    INFERRED_SETTINGS, TrainingFailed, UsageError, check_free_space, check_image_size, check_resume_settings,
    read_latency_table, read_resume_metadata, resume_checkpoint_file,
)
from .data import create_datasets, create_loaders, monitor_batch, resolve_data_properties
from .optimizer import create_optimizer, lr_base_scale, scaled_lr

_logger = logging.getLogger('train_pss')

# Rank 0 alone evaluates each epoch and finalises the budget table (at ImageNet scale: many passes over the held-out
# slice); the other ranks wait for it on a CPU (gloo) group with this timeout instead of the default group's
# (NCCL's 10 minutes), which would abort them mid-wait.
RANK0_WORK_TIMEOUT = timedelta(hours=48)


def create_wait_group(timeout: timedelta = RANK0_WORK_TIMEOUT):
    """A gloo process group (all ranks must call this together) whose barrier waits up to `timeout`."""
    return dist.new_group(backend='gloo', timeout=timeout)


@dataclass
class TrainingRun:
    """What `setup` builds and the epoch loop, per-epoch evaluation and finalisation share."""
    args: argparse.Namespace
    device: torch.device
    primary: bool
    model: torch.nn.Module
    eval_model: torch.nn.Module  # the EMA weights with --model-ema, else the model
    task: ResumablePSSTask
    optimizer: torch.optim.Optimizer
    loss_scaler: Optional[NativeScaler]
    amp_autocast: Callable
    lr_scheduler: Any
    num_epochs: int
    start_epoch: int
    mixup_fn: Optional[Mixup]
    train_loader: Any
    calib_loader: Any
    heldout_loader: Any
    val_loader: Any
    latency_table: Optional[LatencyTable]
    output_dir: Optional[Path]  # rank 0 only, as the saver and wandb run
    saver: Optional[CheckpointSaver]
    wandb_run: Any
    pool_monitor: Optional[PoolMonitor]
    wait_group: Any

    @property
    def sampler(self):
        return self.task.sampler

    @property
    def space(self):
        return self.model.space


def create_supernet(args: argparse.Namespace, resume_file: Optional[Path], primary: bool):
    """(model, datasets, data_config): the supernet for --model and --pss-*, on the datasets whose classes and
    channels it takes, with the data config its loaders use."""
    supernets = timm.list_models('pss_*')
    if ':' not in args.model and args.model.split('.')[0] not in supernets:
        raise SystemExit(f'--model {args.model} is not a timm_pss supernet; use one of {supernets}')
    model_kwargs = dict(args.model_kwargs)
    if args.pss_resolutions:
        model_kwargs['resolution_range'] = tuple(args.pss_resolutions)
    if args.pss_width_range:
        model_kwargs['width_range'] = tuple(args.pss_width_range)
    datasets = resolve_data_properties(args, create_datasets(args))
    if resume_file is not None and any(getattr(args, key) is not None for key in INFERRED_SETTINGS):
        check_resume_settings(args, resume_file, read_resume_metadata(resume_file))  # now with the data's values
    for key, value in (('num_classes', args.num_classes),
                       ('in_chans', args.in_chans), ('global_pool', args.gp), ('drop_path_rate', args.drop_path),
                       ('bn_momentum', args.bn_momentum), ('bn_eps', args.bn_eps)):
        if value is not None:
            model_kwargs[key] = value
    if args.drop:
        model_kwargs['drop_rate'] = args.drop
    model = timm.create_model(args.model, pretrained=args.pretrained, **model_kwargs)
    if not isinstance(model, SupernetMixin):
        raise SystemExit(f'--model {args.model} is not a timm_pss supernet; use one of {supernets}')
    check_image_size(args, model.space)
    if args.initial_checkpoint:
        try:
            load_checkpoint(model, args.initial_checkpoint)
        except (OSError, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as e:
            raise UsageError(f'--initial-checkpoint {args.initial_checkpoint}: not weights of {args.model} with this '
                             f'run\'s settings ({first_line(e)}); give a checkpoint of this model') from None
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    # the saved config.json then preprocesses as this run evaluates (e.g. a grayscale dataset's own mean/std, the
    # digits' full-image crop), so timm's resolve_data_config(model=...) reproduces the run's validation numbers
    model.pretrained_cfg.update(mean=tuple(data_config['mean']), std=tuple(data_config['std']),
                                crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'],
                                interpolation=data_config['interpolation'], tag=run_tag(args))
    return model, datasets, data_config


def run_tag(args: argparse.Namespace) -> str:
    """The pretrained tag of this run's weights, named after its data (timm's `pss_in1k` means ImageNet-1k)."""
    if not args.data_dir and not args.dataset:
        return 'pss_digits'
    name = args.dataset.partition('/')[2] or args.dataset or Path(str(args.data_dir).rstrip('/\\')).name
    return 'pss_' + (re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_') or 'data')


def create_amp(args: argparse.Namespace, device: torch.device):
    """(autocast context factory, loss scaler or None) for --amp: bfloat16 on CPU, a scaler for float16 only."""
    amp_autocast, loss_scaler = nullcontext, None
    if args.amp:
        amp_dtype = torch.bfloat16 if device.type == 'cpu' or args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)
    return amp_autocast, loss_scaler


def create_task(args: argparse.Namespace, model, device: torch.device, primary: bool):
    """(task, latency table or None): the PSS training step with --pss-sampler over --pss-cost-kinds, the max subnet's
    loss and, with --model-ema, its EMA."""
    latency_table = None
    if args.pss_latency_table:
        latency_table = read_latency_table(args.pss_latency_table, model)
    sampler = build_sampler(model.space, latency_table=latency_table, **sampler_kwargs(args))
    criterion = create_classification_loss(
        loss_type='bce' if args.bce_loss else None, smoothing=args.smoothing, soft_targets=mixup_active(args),
        bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum, pos_weight=args.bce_pos_weight)
    task = ResumablePSSTask(model, sampler, num_middle=args.pss_num_middle, criterion=criterion, device=device,
                            verbose=primary)
    task.run_args = plain_args(args)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device='cpu' if args.model_ema_force_cpu else None)
    return task, latency_table


def mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def resume_training(args: argparse.Namespace, path: Path, model, task, optimizer, loss_scaler, primary: bool) -> int:
    """Restore weights, optimizer, scaler, pools, RNGs and EMA from checkpoint `path`; returns its epoch."""
    try:
        resume_epoch = resume_checkpoint(model, str(path), optimizer=None if args.no_resume_opt else optimizer,
                                         loss_scaler=loss_scaler, log_info=primary)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UsageError(f'--resume {path}: its weights do not fit {args.model} with this run\'s settings '
                         f'({first_line(e)}); resume a checkpoint of this model') from None
    meta = load_checkpoint_metadata(str(path))
    try:
        task.load_task_state(meta.get('task_state'))
        if task.has_ema() and 'state_dict_ema' in meta:
            task.load_checkpoint_state(meta['state_dict_ema'], meta.get('task_state_ema'), ema=True, strict=False)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f'--resume {path}: its pools, RNG or EMA state cannot be restored ({first_line(e)}); '
                         f'resume a checkpoint train_pss.py wrote') from None
    if primary:
        _logger.info(f'Resumed from {path} at epoch {resume_epoch} with {sum(task.sampler.fill())} pooled subnets')
    return resume_epoch


@contextmanager
def stop_on_failed_write(output_dir: Optional[Path], finalising: bool = False):
    """A write into the run folder that fails (full disk, file-size limit, read-only folder) stops the run in one
    line saying how to continue, and removes the partial tmp.pth.tar timm's CheckpointSaver leaves behind."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        torch_writer = isinstance(e, RuntimeError) and ('inline_container' in str(e) or 'StreamWriter' in str(e))
        if output_dir is None or not (isinstance(e, OSError) or torch_writer):
            raise
        try:
            (output_dir / 'tmp.pth.tar').unlink(missing_ok=True)
        except OSError:
            pass
        reason = ((e.strerror or first_line(e)) if isinstance(e, OSError)
                  else f'the checkpoint was cut short ({first_line(e)})')
        where = f' ({e.filename})' if isinstance(e, OSError) and e.filename else ''
        if finalising:
            then = f'free space and finalise with --resume {output_dir} --pss-finalize-only'
        elif (output_dir / 'last.pth.tar').is_file():
            then = f'free space and continue from its last checkpoint with --resume {output_dir}'
        else:
            then = 'free space (or raise the file-size limit) and start the run again'
        raise TrainingFailed(f'could not write into the run folder {output_dir}{where}: {reason}; {then}') from None


def run_folder_name(args: argparse.Namespace) -> Path:
    """Where this run's folder goes: --output/--experiment (default ./output/train/<date>-<model>)."""
    exp_name = args.experiment or '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), args.model])
    return Path(args.output or './output/train') / exp_name


def claim_output_dir(args: argparse.Namespace, resume_path: Path = None) -> Path:
    """The run folder, claimed for this run alone.

    A new run creates a new folder, adding `-1`, `-2`, ... to the name when it is taken (one `mkdir` per try, so
    concurrent runs never share a folder); it never writes into an existing one. `--resume` continues in the
    checkpoint's own folder unless --output/--experiment name another, which is then claimed as a new run folder.
    """
    target = run_folder_name(args)
    if resume_path is not None:
        own = resume_path.resolve().parent
        if (not args.output and not args.experiment) or target.resolve() == own:
            return own
    try:
        folder = claim_new_dir(target)
    except FileExistsError as e:
        raise UsageError(str(e))
    except OSError as e:
        raise UsageError(f'--output {args.output or "./output/train"} cannot hold a run folder ({e.strerror or e}: '
                         f'{e.filename or target}); choose a writable --output')
    if folder != target:
        _logger.info(f'{target} exists (another run); this run writes to {folder}')
    return folder


def setup(args: argparse.Namespace, args_text: str, resume_file: Optional[Path]) -> TrainingRun:
    """Everything before the first epoch: device, data, model, optimizer, task, resume, loaders, schedule, run
    folder, checkpoint saver and pool monitor."""
    device = init_distributed_device(args)
    primary = is_primary(args)
    set_threads(args, primary)
    if args.aug_repeats and not args.distributed:
        raise UsageError(f'--aug-repeats {args.aug_repeats:g} repeats each image across ranks: it needs distributed '
                              f'training (torchrun --nproc_per_node=N), as in timm')
    args.prefetcher = device.type == 'cuda' and not args.no_prefetcher
    random_seed(args.seed, args.rank)
    embedded = not args.data_dir and not args.dataset
    if primary:
        _logger.info(f'Training {args.model} on {"the embedded digits dataset" if embedded else args.data_dir} '
                     f'({args.world_size} process{"es" if args.world_size > 1 else ""}, device {device})')

    model, datasets, data_config = create_supernet(args, resume_file, primary)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    resume_path = resume_checkpoint_file(args.resume) if args.resume else None
    if primary:
        check_free_space(run_folder_name(args) if resume_path is None else resume_path.parent, model, args)

    set_lr(args, primary)
    optimizer = create_optimizer(model, args)
    amp_autocast, loss_scaler = create_amp(args, device)
    task, latency_table = create_task(args, model, device, primary)
    resume_epoch = None
    if args.resume:
        resume_epoch = resume_training(args, resume_path, model, task, optimizer, loss_scaler, primary)
    wait_group = prepare_task(args, task, device, primary)

    mixup_fn = create_mixup(args, model.num_classes)
    train_loader, calib_loader, heldout_loader, val_loader = create_loaders(args, data_config, datasets,
                                                                            mixup_active(args), device)
    lr_scheduler, num_epochs, start_epoch = create_schedule(args, optimizer, len(train_loader), resume_epoch)
    saver = wandb_run = output_dir = None
    if primary:  # claimed last, once everything that can refuse the run has been built: no empty folders left
        output_dir = claim_output_dir(args, resume_path)
        saver, wandb_run = start_run_folder(args, args_text, output_dir, model, optimizer, loss_scaler, task,
                                            resume_path)

    eval_model = task.get_trainable_module(ema=True).module if task.has_ema() else model
    pool_monitor = None
    if not args.pss_finalize_only and (args.pss_refresh_scores or not args.pss_no_diagnostics):
        images, labels = monitor_batch(calib_loader, args.batch_size, args.seed)
        pool_monitor = PoolMonitor(model, task.sampler, images, labels, diagnostics=not args.pss_no_diagnostics,
                                   csv_path=output_dir / 'pss_diagnostics.csv' if primary else None,
                                   refresh=args.pss_refresh_scores, autocast=amp_autocast, start_epoch=start_epoch)
    return TrainingRun(
        args=args, device=device, primary=primary, model=model, eval_model=eval_model, task=task,
        optimizer=optimizer, loss_scaler=loss_scaler, amp_autocast=amp_autocast, lr_scheduler=lr_scheduler,
        num_epochs=num_epochs, start_epoch=start_epoch, mixup_fn=mixup_fn, train_loader=train_loader,
        calib_loader=calib_loader, heldout_loader=heldout_loader, val_loader=val_loader, latency_table=latency_table,
        output_dir=output_dir, saver=saver, wandb_run=wandb_run, pool_monitor=pool_monitor, wait_group=wait_group)


def set_threads(args: argparse.Namespace, primary: bool) -> None:
    """Apply --threads, and say at start how many threads each process computes with; on a CPU already busier
    than its cores, advise --threads 1 (torch's spinning threads then wait on each other: many times slower)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not primary:
        return
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
    how = '--threads' if args.threads is not None else 'torch\'s default; set with --threads'
    _logger.info(f'CPU threads per process: {threads} ({how}); load average {load:.1f} on {cores} cores')
    if threads > 1 and load > cores - 0.5:
        _logger.warning(f'the CPU is busy (load {load:.1f} on {cores} cores): with {threads} threads a process can '
                        f'run many times slower than with --threads 1; see docs/training.md')


def set_lr(args: argparse.Namespace, primary: bool) -> None:
    """Without --lr, set it from --lr-base scaled to the global batch (timm's rule), and log how."""
    if args.lr is None:
        args.lr_base_scale = args.lr_base_scale or lr_base_scale(args.opt)
        batch = args.batch_size * args.world_size * args.grad_accum_steps
        args.lr = scaled_lr(args.lr_base, batch, args.lr_base_size, args.lr_base_scale)
        if primary:
            _logger.info(f'Learning rate ({args.lr}) from base ({args.lr_base}) x (global batch {batch} / '
                         f'{args.lr_base_size}), {args.lr_base_scale} scaling')


def prepare_task(args: argparse.Namespace, task: ResumablePSSTask, device: torch.device, primary: bool):
    """--torchcompile and distributed training for the task; returns rank 0's wait group (None unless
    distributed)."""
    if args.torchcompile:
        if primary:
            _logger.info(f'Compiling the training model (backend {args.torchcompile}, mode {args.torchcompile_mode}): '
                         f'each subnet seen for the first time compiles anew, up to torch._dynamo\'s recompile limit')
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    wait_group = create_wait_group() if args.distributed else None
    if args.distributed:
        task.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None)
    return wait_group


def create_mixup(args: argparse.Namespace, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup for --mixup / --cutmix, or None when both are off."""
    if not mixup_active(args):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def create_schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer, batches_per_epoch: int,
                    resume_epoch: Optional[int]) -> Tuple[Any, int, int]:
    """(LR scheduler, number of epochs, start epoch): timm's scheduler, stepped to the start epoch."""
    updates_per_epoch = (batches_per_epoch + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                   updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if start_epoch > 0:
        lr_scheduler.step(start_epoch) if not args.sched_on_updates else lr_scheduler.step_update(
            start_epoch * updates_per_epoch)
    return lr_scheduler, num_epochs, start_epoch


def start_run_folder(args: argparse.Namespace, args_text: str, output_dir: Path, model, optimizer, loss_scaler,
                     task: ResumablePSSTask, resume_path: Optional[Path]):
    """Rank 0: args.yaml, the checkpoint saver (continuing a resumed run's history in its own folder) and the
    wandb run; returns (saver, wandb run or None)."""
    write_text_atomic(output_dir / 'args.yaml', args_text)
    saver = CheckpointSaver(model=model, optimizer=optimizer, amp_scaler=loss_scaler,  # args: in task.run_args
                            checkpoint_dir=str(output_dir), recovery_dir=str(output_dir), decreasing=False,
                            max_history=args.checkpoint_hist, task=task)
    if args.resume and resume_path.resolve().parent == output_dir.resolve():  # continue its checkpoint history
        saver.load_state_dict_from_checkpoint(str(resume_path))
    _logger.info(f'Run folder: {output_dir}')
    wandb_run = None
    if args.log_wandb:
        import wandb  # optional: check_run_args stopped already if it is not installed
        wandb_run = wandb.init(project=args.wandb_project, name=output_dir.name, config=plain_args(args))
    sampler = task.sampler
    _logger.info(f'Space: {model.space}; {len(sampler.pools)} pools of {args.pss_pool_size}, centres '
                 f'{sampler.describe_bucket(0)} .. {sampler.describe_bucket(len(sampler.pools) - 1)}')
    return saver, wandb_run
