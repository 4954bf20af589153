"""The epoch loop: training steps with the PSS task, end-of-epoch pool work and BN sync, rank 0's evaluation of
the max, min and --pss-eval-budgets subnets, the schedule and checkpoints."""
import logging
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import timm
from timm.utils import AverageMeter, distribute_bn, is_primary

from timm_pss.units import format_flops
from timm_pss.pss import TrainingDiverged, check_pools_identical, evaluate_subnet
from timm_pss.reporting import write_summary_row
from timm_pss.supernet import find_supernet

from .checks import TrainingFailed
from .run import TrainingRun

_logger = logging.getLogger('train_pss')


def eta(elapsed: float, done: int, total: int) -> str:
    """Time left as H:MM:SS when `done` of `total` equal steps took `elapsed` seconds."""
    left = elapsed / max(done, 1) * max(total - done, 0)
    return str(timedelta(seconds=round(left)))


def train_one_epoch(epoch, num_epochs, task, loader, optimizer, loss_scaler, lr_scheduler, mixup_fn, amp_autocast,
                    args, device, saver=None):
    task.train()
    sampler = task.sampler
    accum = args.grad_accum_steps
    last_idx = len(loader) - 1
    updates_per_epoch = (len(loader) + accum - 1) // accum
    num_updates = epoch * updates_per_epoch
    losses, distill = AverageMeter(), AverageMeter()
    start = time.time()
    seen = 0
    optimizer.zero_grad()
    for batch_idx, (images, target) in enumerate(loader):
        images, target = images.to(device), target.to(device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_target = target
        if mixup_fn is not None:
            images, target = mixup_fn(images, target)
        if args.pss_schedule == 'step':
            sampler.set_progress((epoch + batch_idx / len(loader)) / num_epochs)
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == last_idx
        with (nullcontext() if need_update else task.no_sync()):
            with amp_autocast():
                try:
                    result = task(images, target, hard_target=hard_target)
                except TrainingDiverged as e:
                    last = 'the last checkpoint in the output folder' if saver is not None else 'a checkpoint'
                    raise TrainingFailed(f'epoch {epoch}, step {batch_idx}: {e} (--lr, --warmup-epochs, --clip-grad; '
                                         f'--resume {last} keeps the pools)')
            loss = result['loss'] / accum
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=task.trainable_module.parameters(), need_update=need_update)
            else:
                loss.backward()
                if need_update:
                    if args.clip_grad is not None:
                        timm.utils.dispatch_clip_grad(task.trainable_module.parameters(), args.clip_grad,
                                                      mode=args.clip_mode)
                    optimizer.step()
        losses.update(result['loss_max'].item(), images.shape[0])
        distill.update(result['loss_distill'].item(), images.shape[0])
        seen += images.shape[0]
        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            task.update_ema(step=num_updates)
            lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)
            if saver is not None and args.recovery_interval and num_updates % args.recovery_interval == 0:
                saver.save_recovery(epoch, batch_idx=batch_idx)
        if is_primary(args) and (batch_idx % args.log_interval == 0 or batch_idx == last_idx):
            now = time.time()
            lr = optimizer.param_groups[0]['lr']
            fill = sampler.fill()
            _logger.info(
                f'Train: {epoch} [{batch_idx:>4d}/{len(loader)} ({100. * batch_idx / max(last_idx, 1):>3.0f}%)]  '
                f'loss(max) {losses.val:.3f} ({losses.avg:.3f})  distill {distill.avg:.3f}  lr {lr:.3e}  '
                f'{seen * args.world_size / max(now - start, 1e-9):.0f} img/s  pools {sum(fill)}/'
                f'{len(fill) * sampler.config.pool_size}  p_random {sampler.p_random:.3f}  '
                f'ETA {eta(now - start, batch_idx + 1, len(loader))}')
    return OrderedDict(loss=losses.avg, distill=distill.avg, time=time.time() - start)


def evaluate_subnets(model, subnets, calib_loader, val_loader, calib_batches, progress: str = ''):
    """{name: (top1, top5)} for each (name, subnet), each with BN calibrated first; with `progress`, a log line
    per subnet (at ImageNet scale each is a pass over the validation split)."""
    supernet = find_supernet(model)
    results = OrderedDict()
    start = time.time()
    with supernet.keep_active():
        for i, (name, subnet) in enumerate(subnets.items()):
            results[name] = evaluate_subnet(supernet, subnet, calib_loader, val_loader, calib_batches)
            if progress:
                _logger.info(f'{progress} {i + 1}/{len(subnets)}: {name} top-1 {results[name][0]:.2f}  '
                             f'ETA {eta(time.time() - start, i + 1, len(subnets))}')
    return results


def train_epochs(run: TrainingRun) -> None:
    """The epoch loop: train, end-of-epoch pool work and BN sync, evaluation (rank 0), schedule, checkpoint."""
    args, sampler = run.args, run.sampler
    for epoch in range(run.start_epoch, run.num_epochs):
        if args.distributed and hasattr(run.train_loader.sampler, 'set_epoch'):
            run.train_loader.sampler.set_epoch(epoch)
        if run.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            run.mixup_fn.mixup_enabled = False
        if args.pss_schedule == 'epoch':
            sampler.set_progress(epoch / run.num_epochs)
        train_metrics = train_one_epoch(epoch, run.num_epochs, run.task, run.train_loader, run.optimizer,
                                        run.loss_scaler, run.lr_scheduler, run.mixup_fn, run.amp_autocast, args,
                                        run.device, run.saver)
        if run.pool_monitor is not None:
            monitor_start = time.time()
            pools = run.pool_monitor.end_epoch(epoch)
            if run.primary and pools is not None:
                _logger.info(f'Pools {epoch}: top member p {pools["top_member_prob"]:.3f}  effective members '
                             f'{pools["effective_members"]:.2f}  Spearman(score, fresh -CE) '
                             f'{pools["spearman_score_vs_fresh"]:.3f}  [{time.time() - monitor_start:.1f}s]')
        if args.distributed:
            check_pools_identical(sampler, args.world_size)
            if args.dist_bn in ('broadcast', 'reduce'):
                distribute_bn(run.model, args.world_size, args.dist_bn == 'reduce')
        eval_metrics = OrderedDict()
        if run.primary:
            eval_metrics = evaluate_epoch(run, epoch, train_metrics)
        if run.wandb_run is not None:
            run.wandb_run.log({'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()},
                               **{f'eval_{k}': v for k, v in eval_metrics.items()},
                               'lr': run.optimizer.param_groups[0]['lr']})
        run.lr_scheduler.step(epoch + 1, eval_metrics.get(args.eval_metric))
        if run.primary:
            run.saver.save_checkpoint(epoch, metric=eval_metrics.get(args.eval_metric))
        if args.distributed:
            dist.barrier(group=run.wait_group)  # rank 0 evaluated and saved


def evaluate_epoch(run: TrainingRun, epoch: int, train_metrics: dict) -> OrderedDict:
    """Rank 0's end of an epoch: validate the max and min subnets and each --pss-eval-budgets budget's best pooled
    subnet (every --val-interval epochs and the last), log, and write the summary.csv row; returns the metrics."""
    args, space = run.args, run.space
    eval_metrics = OrderedDict()
    if not ((epoch + 1) % args.val_interval == 0 or epoch + 1 == run.num_epochs):
        _logger.info(f'Epoch {epoch}: no evaluation (--val-interval {args.val_interval})  '
                     f'[training {train_metrics["time"]:.1f} s]')
        write_summary_row(run.output_dir / 'summary.csv', epoch, train_metrics, eval_metrics,
                          lr=run.optimizer.param_groups[0]['lr'])
        return eval_metrics
    subnets = OrderedDict(max=space.max_subnet(), min=space.min_subnet())
    for budget in args.pss_eval_budgets:
        subnet = run.sampler.best_subnet(budget)
        if subnet is not None:
            subnets[format_flops(budget)] = subnet
    eval_start = time.time()
    results = evaluate_subnets(run.eval_model, subnets, run.calib_loader, run.val_loader, args.pss_calib_batches,
                               progress=f'Eval {epoch}')
    eval_metrics['top1'], eval_metrics['top5'] = results['max']
    eval_metrics['min_top1'] = results['min'][0]
    for name, (top1, _) in results.items():
        if name not in ('max', 'min'):
            eval_metrics[f'top1@{name}'] = top1
    _logger.info(f'Epoch {epoch}: ' + '  '.join(
        f'{name} ({format_flops(space.flops(subnets[name]))}) top-1 {top1:.2f}'
        for name, (top1, _) in results.items())
        + f'  [training {train_metrics["time"]:.1f} s, evaluation {time.time() - eval_start:.1f} s]')
    write_summary_row(run.output_dir / 'summary.csv', epoch, train_metrics, eval_metrics,
                      lr=run.optimizer.param_groups[0]['lr'])
    return eval_metrics
