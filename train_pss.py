#!/usr/bin/env python3
"""Train a timm_pss supernet with Prioritized Subnet Sampling on timm's training recipe.

    python train_pss.py --model pss_mobilenetv1              # embedded digits dataset, CPU, a few minutes
    python train_pss.py --data-dir /data/imagenet -c recipes/pss_mobilenetv2_imagenet.yaml
    torchrun --nproc_per_node=8 train_pss.py --data-dir /data/imagenet -c recipes/pss_mobilenetv2_imagenet.yaml

Options shared with timm's train.py keep its names and meanings (a YAML file given with -c/--config sets their
defaults); the PSS options are the --pss-* group. Without --data-dir/--dataset it trains on scikit-learn's bundled
handwritten digits. The run folder gets checkpoints (last.pth.tar: model, optimizer, AMP scaler, EMA, pools and RNG
state, loadable with weights_only=True), model.safetensors (the supernet with its budget table) and timm's
config.json, so the folder loads with timm.create_model('local-dir:RUN') and publishes with
`python -m timm_pss.publish RUN --repo-id ORG/NAME`; results.csv / results.json, summary.csv, args.yaml and
accuracy_vs_flops.png.
"""
import argparse
import difflib
import importlib.util
import logging
import os
import pickle
import re
import shutil
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import yaml
import timm
from timm.data import Mixup, create_dataset, create_loader, resolve_data_config
from timm.data.loader import PrefetchLoader
from timm_pss.timm_compat import search_split
from timm.data.readers.img_extensions import get_img_extensions
from timm.loss import create_classification_loss
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter, CheckpointSaver, NativeScaler, ParseKwargs, distribute_bn, init_distributed_device,
    is_primary, load_checkpoint_metadata, random_seed, setup_default_logging,
)

from timm_pss.units import format_flops, parse_flops
from timm_pss.data import (
    DigitsDataset, ImageModeDataset, IndexSubset, dataset_num_classes, image_statistics, split_indices,
)
from timm_pss.publish import save_hub_files
from timm_pss.costs import COST_KINDS
from timm_pss.files import claim_new_dir, write_text_atomic
from timm_pss.latency import LatencyTable, record_latency
from timm_pss.pss import (
    BUCKET_WEIGHTS, PRIORITIES, SAMPLERS, PoolMonitor, ResumablePSSTask, TrainingDiverged, build_sampler,
    check_pools_identical, evaluate_accuracy, evaluate_subnet, finalize_budget_table, fixed_batch, sampler_kwargs,
)
from timm_pss.reporting import format_results, plot_results, write_results, write_summary_row
from timm_pss.supernet import SupernetMixin, find_supernet

_logger = logging.getLogger('train_pss')

# Settings of the embedded default (digits): they apply unless the command line or --config says otherwise.
EMBEDDED_DEFAULTS = dict(
    epochs=25, batch_size=64, opt='sgd', lr=0.1, momentum=0.9, weight_decay=5e-5, sched='cosine', warmup_epochs=2,
    warmup_lr=0.01, min_lr=1e-4, scale=[0.7, 1.0], ratio=[0.9, 1.1], hflip=0.0, color_jitter=0.0, crop_pct=1.0,
    interpolation='bilinear', train_interpolation='bilinear', workers=0, log_interval=10,
    pss_resolutions=[24, 32, 4], pss_num_pools=8, pss_pool_size=8, pss_calib_batches=4, pss_top_k=2,
)
DIGITS_IMAGE_SIZE = 32


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, unless the help already says what the default is."""

    def _get_help_string(self, action):
        if 'default' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        add_help=add_help,
        description='Train a timm_pss supernet with Prioritized Subnet Sampling (options as timm train.py, '
                    'plus --pss-*)', formatter_class=HelpFormatter,
        epilog='Defaults shown are the ones that apply to this command line: with no --data-dir/--dataset (on the '
               'command line or in -c) the embedded digits settings replace ' + ', '.join(
                   '--' + k.replace('_', '-') for k in EMBEDDED_DEFAULTS) + '; add --data-dir DIR to see timm\'s.')
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file whose keys set the defaults')

    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', help='dataset root (ImageNet-style folders); default: the '
                       'embedded digits dataset')
    group.add_argument('--dataset', metavar='NAME', default='', help='timm dataset type, e.g. "torch/cifar10"')
    group.add_argument('--train-split', metavar='NAME', default='train',
                       help='dataset split to train on (the held-out slice is taken from it)')
    group.add_argument('--val-split', metavar='NAME', default='validation', help='dataset split to validate on')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='download a torch/ or tfds/ dataset that supports it')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='file mapping class names to indices')

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='pss_mobilenetv1', type=str, metavar='MODEL',
                       help='a timm_pss supernet: pss_mobilenetv1, pss_mobilenetv2, pss_resnet50')
    group.add_argument('--pretrained', action='store_true', default=False, help='start from pretrained weights')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='load these weights first, e.g. timm\'s dense mobilenetv2_100 (same keys at full width)')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='resume from this checkpoint or run folder (its last.pth.tar)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='with --resume, do not restore the optimizer state')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of classes (default None: the number the dataset declares)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='image size of the loaders; must equal the space\'s max resolution (--pss-resolutions '
                            'sets the training resolutions; default None: that max)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='image channels (default None: the data\'s own, 1 for grayscale, 3 for RGB)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N N N',
                       help='C H W of the loaders\' images; H and W must equal the space\'s max resolution (default '
                            'None: in_chans x max resolution)')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help='centre-crop fraction of evaluation images (default None: the model\'s)')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='normalisation mean per channel (default None: timm\'s, or a grayscale dataset\'s own)')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='normalisation std per channel (default None: timm\'s, or a grayscale dataset\'s own)')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help='resize interpolation of evaluation images (default \'\': the model\'s)')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='evaluation batch size (default None: --batch-size)')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='batches whose gradients are summed per optimizer step')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='channels_last memory layout for the model and its training batches')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor', metavar='BACKEND',
                       help='torch.compile the training model with this backend (bare flag: inductor); each new '
                            'subnet is a recompile, see README (default: None, eager)')
    group.add_argument('--torchcompile-mode', type=str, default=None, metavar='MODE',
                       help='torch.compile mode (default: None, torch\'s default)')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='recompute activations in the backward pass to save memory')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra timm.create_model keyword arguments, KEY=VALUE ...')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER',
                       help='timm optimizer name (timm\'s "sgd" is SGD with Nesterov momentum)')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help='optimizer epsilon (default None: the optimizer\'s)')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='optimizer betas (default None: the optimizer\'s)')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M', help='optimizer momentum')
    group.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay (see --pss-wd-depthwise)')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='clip gradients at this norm or value (default None: no clipping)')
    group.add_argument('--clip-mode', type=str, default='norm', help='gradient clipping mode: norm, value or agc')
    group.add_argument('--layer-decay', type=float, default=None,
                       help='layer-wise learning-rate decay factor (default None: off)')

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER', help='timm LR scheduler name')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='step the LR scheduler every optimizer update instead of every epoch')
    group.add_argument('--lr', type=float, default=None, metavar='LR', help='learning rate (default: from --lr-base)')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR', help='lr for --lr-base-size images')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV', help='batch size --lr-base is given for')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='"linear" or "sqrt" scaling of --lr-base with the global batch (default \'\': sqrt for '
                            'Ada* and LAMB optimizers, linear otherwise, as timm)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='LR noise on/off epochs as fractions of the run (default None: no noise)')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='LR cycle length multiplier')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='LR decay per cycle')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N', help='LR cycles (cycling when > 1)')
    group.add_argument('--lr-k-decay', type=float, default=1.0, help='k-decay of the cosine / poly schedules')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='LR at the start of warm-up')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR', help='lowest LR of the schedule')
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='epochs to train')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='epoch to start at (default None: 0, or the resumed checkpoint\'s)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='epochs at which the multistep scheduler decays the LR')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N',
                       help='epochs between LR decays of the step scheduler')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N', help='epochs of LR warm-up')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='leave the warm-up out of the decay schedule')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='epochs at --min-lr after the schedule ends')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='epochs without improvement before the plateau scheduler decays the LR')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE',
                       help='LR decay factor of the step / multistep / plateau schedulers')

    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='no training augmentation (resize and centre-crop only)')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='random-resized-crop area range')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='random-resized-crop aspect-ratio range')
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    group.add_argument('--vflip', type=float, default=0., help='vertical flip probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT', help='colour jitter strength')
    group.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy, e.g. rand-m9-mstd0.5')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random-erasing probability')
    group.add_argument('--remode', type=str, default='pixel', help='random-erasing mode: const, rand or pixel')
    group.add_argument('--recount', type=int, default=1, help='random-erasing regions per image')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (on when > 0)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (on when > 0)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='cutmix min/max area ratio; overrides --cutmix (default None: off)')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='probability of mixup or cutmix per batch when either is on')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='probability of cutmix instead of mixup when both are on')
    group.add_argument('--mixup-mode', type=str, default='batch', help='mixup / cutmix per batch, pair or elem')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='turn mixup / cutmix off from this epoch (0: never)')
    group.add_argument('--aug-repeats', type=float, default=0, metavar='N',
                       help='repeated augmentation: each image N times per epoch across ranks (torchrun only; 0: off)')
    group.add_argument('--bce-loss', action='store_true', default=False,
                       help='binary cross-entropy for the max subnet\'s loss (the others distil from it)')
    group.add_argument('--bce-sum', action='store_true', default=False, help='with --bce-loss, sum over classes')
    group.add_argument('--bce-target-thresh', type=float, default=None,
                       help='with --bce-loss, binarize soft targets above this value (default: None, off)')
    group.add_argument('--bce-pos-weight', type=float, default=None,
                       help='with --bce-loss, weight of the positive term (default: None, 1)')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='resize interpolation of training images (random: a random one per image)')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate')
    group.add_argument('--drop-connect', type=float, default=None, metavar='PCT',
                       help='deprecated name of --drop-path, as in timm (default: None)')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                       help='stochastic depth rate (default None: the model\'s)')
    group.add_argument('--bn-momentum', type=float, default=None,
                       help='BatchNorm momentum (default None: the model\'s)')
    group.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon (default None: the model\'s)')
    group.add_argument('--sync-bn', action='store_true', default=False,
                       help='refused: SyncBatchNorm would replace the slimmable BN layers (use --dist-bn)')
    group.add_argument('--dist-bn', type=str, default='reduce', help='"broadcast", "reduce" or "" at epoch end')

    group = parser.add_argument_group('Model exponential moving average')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='keep an exponential moving average of the weights; it is evaluated and finalised')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='keep the EMA weights on the CPU')
    group.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay per update')
    group.add_argument('--model-ema-warmup', action='store_true', help='warm the EMA decay up from 0')

    group = parser.add_argument_group('Miscellaneous')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='random seed (data split, pools, initial weights)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N', help='batches between training log lines')
    group.add_argument('--val-interval', type=int, default=1, metavar='N',
                       help='epochs between evaluations (the last epoch is always evaluated)')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='optimizer updates between recovery checkpoints (recovery-EPOCH-BATCH.pth.tar; 0: none)')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='best checkpoints to keep')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N',
                       help='data-loading worker processes per training process')
    group.add_argument('--amp', action='store_true', default=False, help='mixed precision (bfloat16 on CPU)')
    group.add_argument('--amp-dtype', default='float16', type=str, help='float16 or bfloat16 on GPU')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help='turn off timm\'s prefetcher (on CUDA it loads the next batch and normalises on the '
                            'GPU; other devices never use it)')
    group.add_argument('--log-wandb', action='store_true', default=False,
                       help='log each epoch\'s metrics to Weights & Biases (needs: pip install wandb)')
    group.add_argument('--wandb-project', default=None, type=str, metavar='NAME',
                       help='wandb project (default: None, wandb\'s)')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='pin CPU memory in the data loaders (faster copies to the GPU)')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str,
                       help='torch device')
    group.add_argument('--output', default='', type=str, metavar='PATH', help='output root (default: ./output)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME', help='run folder name')
    group.add_argument('--eval-metric', default='top1', type=str,
                       help='metric that ranks checkpoints and drives the plateau scheduler: top1, top5, min_top1 or '
                            'top1@BUDGET (one of --pss-eval-budgets)')
    group.add_argument('--local_rank', '--local-rank', default=0, type=int,
                       help='set by the launcher under distributed training')

    group = parser.add_argument_group('Prioritized Subnet Sampling')
    group.add_argument('--pss-budget-range', nargs=3, type=parse_flops, default=None, metavar=('LO', 'HI', 'STEP'),
                       help='pool centres in FLOPs (MACs), e.g. 110M 570M 10M; default: --pss-num-pools over the span')
    group.add_argument('--pss-num-pools', type=int, default=40, help='pools per metric, spread over its span')
    group.add_argument('--pss-metrics', nargs='+', choices=COST_KINDS, default=['flops'],
                       help='what the pools bucket by: flops, latency (needs --pss-latency-table), or both at once '
                            '(PSS-Net\'s multi-constraint variant)')
    group.add_argument('--pss-latency-table', default=None, metavar='JSON',
                       help='latency lookup table from timm_pss.latency.build_lut for this model and device; its '
                            'predicted latency is recorded in the budget table (set_budget(latency_ms=...))')
    group.add_argument('--pss-latency-range', nargs=3, type=float, default=None, metavar=('LO', 'HI', 'STEP'),
                       help='latency pool centres in ms, e.g. 4 12 0.5; default: --pss-num-pools over the span')
    group.add_argument('--pss-pool-size', type=int, default=50, help='subnets per pool')
    group.add_argument('--pss-momentum', type=float, default=0.9, help='lambda of the score moving average')
    group.add_argument('--pss-p-random', nargs=2, type=float, default=[1.0, 0.01], metavar=('START', 'END'),
                       help='probability of a random in-bucket subnet, decayed exponentially')
    group.add_argument('--pss-temperature', nargs=2, type=float, default=[1.0, 0.01], metavar=('START', 'END'),
                       help='softmax temperature of pool draws, decayed exponentially')
    group.add_argument('--pss-schedule', choices=('epoch', 'step'), default='epoch',
                       help='advance p_random and the temperature per epoch or per step')
    group.add_argument('--pss-sampler', choices=SAMPLERS, default='prioritized',
                       help='middle-subnet rule: prioritized (PSS), uniform (random in-bucket, the paper\'s '
                            'p_random=1 ablation), global_width (MutualNet style: one width level for all groups '
                            'and a random resolution; the option value keeps its old name) or usnet (US-Net: one '
                            'width level for all groups at the max resolution, the sandwich\'s min subnet too); '
                            'all keep the same pools for finalisation')
    group.add_argument('--pss-bucket-weights', choices=BUCKET_WEIGHTS, default='uniform',
                       help='ablation: draw buckets uniformly (PSS) or as often as the global_width sampler lands '
                            'in them')
    group.add_argument('--pss-priority', choices=PRIORITIES, default='raw',
                       help='ablation: pool draws take softmax(raw score / T) (PSS), or of per-pool z-scores or '
                            'ranks scaled to [0, 1] (scale-free: T means the same at any loss level)')
    group.add_argument('--pss-shuffle-scores', action='store_true', default=False,
                       help='ablation (control): pool draws use the scores permuted among the pool\'s members')
    group.add_argument('--pss-refresh-scores', action='store_true', default=False,
                       help='ablation: at each epoch end replace every pool score by the member\'s fresh -CE on '
                            'the fixed diagnostics batch')
    group.add_argument('--pss-no-diagnostics', action='store_true', default=False,
                       help='do not measure the pools each epoch (pss_diagnostics.csv: top member\'s draw '
                            'probability, effective members, Spearman of pool scores vs fresh -CE)')
    group.add_argument('--pss-num-middle', type=int, default=1, help='middle subnets per step')
    group.add_argument('--pss-width-range', nargs=2, type=float, default=None, metavar=('LO', 'HI'),
                       help='width multipliers of the space (default: the model\'s)')
    group.add_argument('--pss-resolutions', nargs=3, type=int, default=None, metavar=('MIN', 'MAX', 'STEP'),
                       help='input resolutions of the space (default: the model\'s, 128 224 8)')
    group.add_argument('--pss-wd-depthwise', action=argparse.BooleanOptionalAction, default=True,
                       help='apply weight decay to depthwise convs (the reference does not)')
    group.add_argument('--pss-heldout-frac', type=float, default=0.1,
                       help='share of the training data held out to choose the budget table\'s subnets')
    group.add_argument('--pss-top-k', type=int, default=3, help='best subnets per pool compared on held-out data')
    group.add_argument('--pss-calib-batches', type=int, default=8, help='batches to calibrate BN per subnet')
    group.add_argument('--pss-eval-budgets', nargs='*', type=parse_flops, default=[],
                       help='budgets (FLOPs) whose best pooled subnet is evaluated each epoch')
    group.add_argument('--pss-finalize-only', action='store_true', default=False,
                       help='skip training: build the budget table from --resume\'s weights and pools')
    return parser


def options_given(argv) -> set:
    """The option names (dests) that `argv` itself sets, whatever their defaults."""
    parser = build_parser(add_help=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    known, _ = parser.parse_known_args(argv)
    return set(vars(known))


def config_value(action: argparse.Action, value):
    """`value` from a YAML config converted and checked as the command line would treat it for `action`; raises
    ValueError saying what is allowed."""
    if value is None:
        return None
    if action.nargs == 0:  # flags (store_true, BooleanOptionalAction)
        if not isinstance(value, bool):
            raise ValueError(f'{value!r} is not true or false')
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            raise ValueError(f'{value!r} is not a mapping of keyword arguments')
        return value
    many = action.nargs not in (None, '?')
    if many != isinstance(value, (list, tuple)):
        raise ValueError(f'{value!r} is not {"a list" if many else "a single value"}')
    values = list(value) if many else [value]
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise ValueError(f'{value!r} has {len(values)} values, {action.nargs} expected')
    if action.nargs == '+' and not values:
        raise ValueError('an empty list; give at least one value')
    converted = []
    for v in values:
        if isinstance(v, (dict, list, bool)) and action.type is not None:
            raise ValueError(f'{v!r} is not a {getattr(action.type, "__name__", "value")}')
        if action.type is int and isinstance(v, float) and not v.is_integer():
            raise ValueError(f'{v!r} is not an integer')
        try:
            v = action.type(v) if action.type is not None else v
        except (TypeError, ValueError) as e:
            raise ValueError(f'{v!r} is not a valid {getattr(action.type, "__name__", "value")} ({e})') from None
        if action.choices is not None and v not in action.choices:
            raise ValueError(f'{v!r} is not one of {", ".join(map(str, action.choices))}')
        converted.append(v)
    return converted if many else converted[0]


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The defaults a YAML config sets: our own keys, converted and checked like command-line values.

    Accepts timm's args.yaml (what timm's train.py writes, and timm's published hparams): keys this script does not
    use are logged in one warning and skipped, as timm's train.py skips them; a `data` key (timm's old positional
    dataset path) is read as `data_dir`. An unknown `pss_*` key is our own option misspelt: an error.
    """
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        parser.error(f'-c/--config {path}: cannot read it ({e.strerror or e})')
    except yaml.YAMLError as e:
        parser.error(f'-c/--config {path} is not valid YAML ({" ".join(str(e).split())})')
    config = {} if config is None else config
    if not isinstance(config, dict):
        parser.error(f'-c/--config {path} holds a {type(config).__name__}, not a mapping of option names to values')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    config = dict(config)
    if config.get('data') and not config.get('data_dir'):
        config['data_dir'] = config['data']
    config.pop('data', None)
    defaults, unused = {}, []
    for key, value in config.items():
        if key in actions:
            try:
                defaults[key] = config_value(actions[key], value)
            except ValueError as e:
                parser.error(f'-c/--config {path}: {key}: {e}')
        elif str(key).startswith('pss_'):
            close = difflib.get_close_matches(key, [k for k in actions if k.startswith('pss_')], n=1)
            hint = f'did you mean {close[0]}?' if close else 'see --help for the --pss-* options'
            parser.error(f'-c/--config {path}: unknown key {key} ({hint})')
        else:
            unused.append(str(key))
    if unused:
        _logger.warning(f'{path}: {len(unused)} key(s) not used by train_pss.py, ignored: {", ".join(sorted(unused))}')
    return defaults


def dataset_named(known: argparse.Namespace, config: dict) -> bool:
    """Whether the command line or the config names a dataset (else the embedded digits apply)."""
    return bool(known.data_dir or known.dataset or config.get('data_dir') or config.get('dataset'))


def parse_args(argv=None):
    """(args, args.yaml text): timm's precedence, command line over -c/--config over defaults, where the defaults
    are the embedded digits settings (EMBEDDED_DEFAULTS) when no dataset is named anywhere."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    known, _ = build_parser(add_help=False).parse_known_args(argv)
    config = read_config(known.config, parser) if known.config else {}
    if not dataset_named(known, config):
        parser.set_defaults(**EMBEDDED_DEFAULTS)
        given = options_given(argv)
        applied = {k: v for k, v in EMBEDDED_DEFAULTS.items() if k not in config and k not in given}
        if applied and os.environ.get('RANK', '0') == '0' and not {'-h', '--help'} & set(argv):
            _logger.info('No --data-dir/--dataset: the embedded digits dataset with its defaults ' +
                         ' '.join(f'{k}={v}' for k, v in applied.items()))
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    if args.grad_accum_steps < 1:
        parser.error('--grad-accum-steps must be at least 1')
    if args.drop_connect is not None:
        if args.drop_path is not None:
            parser.error('--drop-connect is the deprecated name of --drop-path; give only --drop-path')
        args.drop_path = args.drop_connect
    if args.pss_finalize_only and not args.resume:
        parser.error('--pss-finalize-only needs --resume CHECKPOINT')
    if not 0 < args.pss_heldout_frac < 1:
        parser.error('--pss-heldout-frac must lie in (0, 1)')
    if 'latency' in args.pss_metrics and not args.pss_latency_table:
        parser.error('--pss-metrics latency needs --pss-latency-table JSON (build one with '
                     'python -m timm_pss.latency --model MODEL --device DEVICE --output JSON)')
    if len(set(args.pss_metrics)) != len(args.pss_metrics):
        parser.error(f'--pss-metrics lists a metric twice: {args.pss_metrics}')
    if len(args.pss_metrics) > 1 and args.pss_sampler in ('global_width', 'usnet'):
        parser.error(f'--pss-sampler {args.pss_sampler} keeps pools for one metric only; drop the other --pss-metrics')
    ablations = [option for option, on in (('--pss-bucket-weights', args.pss_bucket_weights != 'uniform'),
                                           ('--pss-priority', args.pss_priority != 'raw'),
                                           ('--pss-shuffle-scores', args.pss_shuffle_scores)) if on]
    if ablations and args.pss_sampler in ('global_width', 'usnet'):
        parser.error(f'{", ".join(ablations)} change(s) how buckets and pool members are drawn; --pss-sampler '
                     f'{args.pss_sampler} draws neither (use prioritized or uniform)')
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


# Rank 0 alone evaluates each epoch and finalises the budget table (at ImageNet scale: many passes over the held-out
# slice); the other ranks wait for it on a CPU (gloo) group with this timeout instead of the default group's
# (NCCL's 10 minutes), which would abort them mid-wait.
RANK0_WORK_TIMEOUT = timedelta(hours=48)


def create_wait_group(timeout: timedelta = RANK0_WORK_TIMEOUT):
    """A gloo process group (all ranks must call this together) whose barrier waits up to `timeout`."""
    return dist.new_group(backend='gloo', timeout=timeout)


# argument, resume and run-folder checks: one line and exit code 2 before any long work

def usage_error(message: str, exit_code: int = 2):
    """Stop with a one-line error (no traceback) and exit code 2, as argparse does for usage errors."""
    print(f'train_pss.py: error: {message}', file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


def training_error(message: str):
    """Stop a run that cannot go on (e.g. diverged weights) with a one-line error and exit code 1."""
    usage_error(message, exit_code=1)


# PSS settings a resumed run must share with the run it continues (its pools and space depend on them)
RESUME_SETTINGS = ('model', 'model_kwargs', 'num_classes', 'in_chans', 'pss_resolutions', 'pss_width_range',
                   'pss_num_pools', 'pss_pool_size', 'pss_budget_range', 'pss_latency_range', 'pss_metrics',
                   # how middle subnets are drawn: the prioritized and in-bucket uniform samplers save the same
                   # state, so continuing one as the other would mix two methods in one run without a word
                   'pss_sampler', 'pss_bucket_weights', 'pss_priority', 'pss_shuffle_scores', 'pss_refresh_scores')
# settings a run may leave unset, to be inferred from its data: compared once the data has filled them in
INFERRED_SETTINGS = ('num_classes', 'in_chans')


def plain_args(args: argparse.Namespace) -> dict:
    """The arguments as plain YAML-safe types (dict, list, str, numbers): what checkpoints and args.yaml store."""
    return yaml.safe_load(yaml.safe_dump(vars(args)))


def resume_checkpoint_file(resume: str) -> Path:
    """The checkpoint --resume names: the file itself, or a run folder's last.pth.tar."""
    path = Path(resume)
    if not path.exists():
        usage_error(f'--resume {resume} does not exist; give a run folder or one of its .pth.tar checkpoints')
    if path.is_dir():
        if not (path / 'last.pth.tar').is_file():
            usage_error(f'--resume {resume} holds no last.pth.tar, so there is nothing to resume; give a run folder '
                        f'that train_pss.py wrote checkpoints into, or a .pth.tar file')
        path = path / 'last.pth.tar'
    return path


def read_resume_metadata(path: Path) -> dict:
    """A checkpoint's non-tensor entries, read with weights_only=True (never unpickling arbitrary objects)."""
    try:
        meta = load_checkpoint_metadata(str(path))
    except (RuntimeError, pickle.UnpicklingError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        usage_error(f'--resume {path}: torch.load(weights_only=True) refused this file ({reason}). train_pss.py '
                    f'never unpickles arbitrary objects; resume from a checkpoint train_pss.py wrote')
    except (OSError, EOFError, ValueError) as e:
        usage_error(f'--resume {path} is not a readable checkpoint ({type(e).__name__}: {e}); it may be truncated, '
                    f'resume from another checkpoint of the run')
    if not isinstance(meta, dict) or 'state_dict' not in meta:
        usage_error(f'--resume {path} is not a training checkpoint (no "state_dict"); for weights only use '
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
            usage_error(f'--resume {path} is a run of {saved.get("model")} with {option} {shown(saved[key])}, this '
                        f'command has {shown(ours.get(key))}; give the same {option} to continue it, or start a new '
                        f'run without --resume')


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
                usage_error(f'--data-dir: class folder {folder} holds no images ({", ".join(sorted(extensions))}); '
                            f'add its images or remove the folder')


def check_run_args(args: argparse.Namespace) -> Optional[Path]:
    """Usage errors found before anything is built: each stops with one line naming the problem and the fix.
    Returns the checkpoint file `--resume` names, if any."""
    if args.epochs < 1:
        usage_error(f'--epochs must be at least 1, got {args.epochs}')
    if args.batch_size < 1:
        usage_error(f'-b/--batch-size must be at least 1, got {args.batch_size}')
    if args.validation_batch_size is not None and args.validation_batch_size < 1:
        usage_error(f'-vb/--validation-batch-size must be at least 1, got {args.validation_batch_size}')
    if args.sync_bn:
        usage_error('--sync-bn cannot work with a supernet: SyncBatchNorm would replace the slimmable BN layers that '
                    'run each subnet\'s width; BN statistics are averaged across ranks at each epoch end (--dist-bn '
                    'reduce) and calibrated per budget at finalisation')
    for option, value, least in (('--val-interval', args.val_interval, 1), ('--recovery-interval',
                                 args.recovery_interval, 0), ('--aug-repeats', args.aug_repeats, 0)):
        if value < least:
            usage_error(f'{option} must be at least {least}, got {value}')
    if args.log_wandb and importlib.util.find_spec('wandb') is None:
        usage_error('--log-wandb needs the wandb package, which is not installed: pip install wandb (or leave out '
                    '--log-wandb)')
    if args.eval_metric.startswith('top1@'):  # top1@300M names the summary's top1@300.00M
        try:
            args.eval_metric = f'top1@{format_flops(parse_flops(args.eval_metric[5:]))}'
        except ValueError:
            pass  # not a budget: refused below with the allowed names
    if args.eval_metric not in eval_metric_names(args):
        usage_error(f'--eval-metric {args.eval_metric} is not recorded by train_pss.py (it measures accuracy, no '
                    f'validation loss); use one of {", ".join(eval_metric_names(args))}')
    if args.data_dir:
        if not Path(args.data_dir).exists() and not args.dataset_download:
            usage_error(f'--data-dir {args.data_dir} does not exist; give the dataset root (with train/ and '
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
        usage_error(f'--pss-latency-table {path}: {reason}; build a table for this model and space with python -m '
                    f'timm_pss.latency --model MODEL --output JSON')
    return table


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
            usage_error(f'{option} {shown}: a supernet trains each subnet at its own resolution '
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
        usage_error(f'--output {folder}: {free / 2**20:.1f} MiB free, the run needs about {needed / 2**20:.1f} MiB '
                    f'({args.checkpoint_hist + 2} checkpoints of {per_checkpoint / 2**20:.1f} MiB and the weights); '
                    f'free space, lower --checkpoint-hist or choose another --output')


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
        usage_error(str(e))
    except OSError as e:
        usage_error(f'--output {args.output or "./output/train"} cannot hold a run folder ({e.strerror or e}: '
                    f'{e.filename or target}); choose a writable --output')
    if folder != target:
        _logger.info(f'{target} exists (another run); this run writes to {folder}')
    return folder


# data

def create_datasets(args):
    """(train, calibration, held-out, validation) datasets; calibration is the training data without augmentation."""
    if not args.data_dir and not args.dataset:
        kw = dict(image_size=DIGITS_IMAGE_SIZE, heldout_fraction=args.pss_heldout_frac, seed=args.seed)
        return (DigitsDataset('train', **kw), DigitsDataset('train', **kw), DigitsDataset('heldout', **kw),
                DigitsDataset('val', **kw))
    kw = dict(root=args.data_dir, split=args.train_split, class_map=args.class_map, download=args.dataset_download,
              batch_size=args.batch_size, seed=args.seed)
    train_full = create_dataset(args.dataset, is_training=True, **kw)
    eval_full = create_dataset(args.dataset, is_training=False, **kw)
    heldout_idx, train_idx = split_indices(len(train_full), [args.pss_heldout_frac, 1.0], args.seed)
    val = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                         class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size)
    calib_full = create_dataset(args.dataset, is_training=False, **kw)
    return (IndexSubset(train_full, train_idx), IndexSubset(calib_full, train_idx), IndexSubset(eval_full, heldout_idx),
            val)


def resolve_data_properties(args, datasets):
    """Fill --num-classes, --in-chans, --mean and --std from the training data where the command line left them
    unset, and return the datasets with images of the model's channel count.

    Classes: the number the dataset declares (torchvision's `classes`, a folder dataset's class folders). Channels:
    one-channel (grayscale) images give a model with in_chans=1 normalised by the data's own mean/std (measured on
    up to 2,000 training images); three-channel images keep timm's defaults. An explicit --in-chans that differs
    from the images' channels converts the images (grayscale replicated to RGB, or RGB to grayscale).
    """
    if args.num_classes is None:
        args.num_classes = dataset_num_classes(datasets[0])
        if args.num_classes is None:
            usage_error(f'cannot tell the number of classes of --dataset {args.dataset!r} (it declares no classes); '
                        f'give --num-classes N')
    channels = image_statistics(datasets[0], max_images=1)[0]
    if args.in_chans is None:
        args.in_chans = channels
    if args.in_chans != channels:
        modes = {1: 'L', 3: 'RGB'}
        if args.in_chans not in modes or channels not in modes:
            usage_error(f'--in-chans {args.in_chans} does not match the data\'s {channels}-channel images, and only '
                        f'1 (grayscale) and 3 (RGB) can be converted into each other')
        datasets = tuple(ImageModeDataset(d, modes[args.in_chans]) for d in datasets)
    elif channels == 1 and (args.mean is None or args.std is None):
        _, mean, std = image_statistics(datasets[0])
        args.mean = args.mean if args.mean is not None else list(mean)
        args.std = args.std if args.std is not None else list(std)
    for name in ('mean', 'std'):
        values = getattr(args, name)
        if values is not None and len(values) not in (1, args.in_chans):
            usage_error(f'--{name} has {len(values)} values; the model takes {args.in_chans}-channel images: give '
                        f'1 or {args.in_chans}')
    return datasets


def create_loaders(args, data_config, datasets, mixup_active, device):
    train, calib, heldout, val = datasets
    common = dict(input_size=data_config['input_size'], interpolation=data_config['interpolation'],
                  mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  pin_memory=args.pin_mem, use_prefetcher=args.prefetcher, device=device)
    train_loader = create_loader(
        train, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, distributed=args.distributed,
        num_aug_repeats=args.aug_repeats,
        **dict(common, interpolation=args.train_interpolation))
    eval_batch = args.validation_batch_size or args.batch_size
    eval_kw = dict(common, batch_size=eval_batch, is_training=False, crop_pct=data_config['crop_pct'],
                   crop_mode=data_config['crop_mode'], distributed=False)
    return (train_loader, create_loader(calib, **eval_kw), create_loader(heldout, **eval_kw),
            create_loader(val, **eval_kw))


def monitor_batch(loader, batch_size: int, seed: int):
    """The pool monitor's fixed batch from `loader`'s dataset, normalised as the loader delivers it (timm's
    prefetcher leaves uint8 images in the dataset and normalises on the device)."""
    images, labels = fixed_batch(loader.dataset, batch_size, seed)
    if isinstance(loader, PrefetchLoader):
        images = images.to(loader.mean.device).float().sub_(loader.mean).div_(loader.std)
    return images, labels


# training and evaluation

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
                    training_error(f'epoch {epoch}, step {batch_idx}: {e} (--lr, --warmup-epochs, --clip-grad; '
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


# the run: set-up, the epoch loop, per-epoch evaluation, finalisation

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
        load_checkpoint(model, args.initial_checkpoint)
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
    """(task, latency table or None): the PSS training step with --pss-sampler over --pss-metrics, the max subnet's
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
    resume_epoch = resume_checkpoint(model, str(path), optimizer=None if args.no_resume_opt else optimizer,
                                     loss_scaler=loss_scaler, log_info=primary)
    meta = load_checkpoint_metadata(str(path))
    task.load_task_state(meta.get('task_state'))
    if task.has_ema() and 'state_dict_ema' in meta:
        task.load_checkpoint_state(meta['state_dict_ema'], meta.get('task_state_ema'), ema=True, strict=False)
    if primary:
        _logger.info(f'Resumed from {path} at epoch {resume_epoch} with {sum(task.sampler.fill())} pooled subnets')
    return resume_epoch


def setup(args: argparse.Namespace, args_text: str, resume_file: Optional[Path]) -> TrainingRun:
    """Everything before the first epoch: device, data, model, optimizer, task, resume, loaders, schedule, run
    folder, checkpoint saver and pool monitor."""
    device = init_distributed_device(args)
    primary = is_primary(args)
    if args.aug_repeats and not args.distributed:
        usage_error(f'--aug-repeats {args.aug_repeats:g} repeats each image across ranks: it needs distributed '
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
    output_dir = None
    if primary:
        check_free_space(run_folder_name(args) if resume_path is None else resume_path.parent, model, args)
        output_dir = claim_output_dir(args, resume_path)

    if args.lr is None:
        args.lr_base_scale = args.lr_base_scale or lr_base_scale(args.opt)
        batch = args.batch_size * args.world_size * args.grad_accum_steps
        args.lr = scaled_lr(args.lr_base, batch, args.lr_base_size, args.lr_base_scale)
        if primary:
            _logger.info(f'Learning rate ({args.lr}) from base ({args.lr_base}) x (global batch {batch} / '
                         f'{args.lr_base_size}), {args.lr_base_scale} scaling')
    optimizer = create_optimizer(model, args)
    amp_autocast, loss_scaler = create_amp(args, device)
    task, latency_table = create_task(args, model, device, primary)
    sampler = task.sampler
    resume_epoch = None
    if args.resume:
        resume_epoch = resume_training(args, resume_path, model, task, optimizer, loss_scaler, primary)

    if args.torchcompile:
        if primary:
            _logger.info(f'Compiling the training model (backend {args.torchcompile}, mode {args.torchcompile_mode}): '
                         f'each subnet seen for the first time compiles anew, up to torch._dynamo\'s recompile limit')
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    wait_group = create_wait_group() if args.distributed else None
    if args.distributed:
        task.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None)

    mixup_fn = None
    if mixup_active(args):
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=model.num_classes)
    train_loader, calib_loader, heldout_loader, val_loader = create_loaders(args, data_config, datasets,
                                                                            mixup_active(args), device)
    updates_per_epoch = (len(train_loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                   updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if start_epoch > 0:
        lr_scheduler.step(start_epoch) if not args.sched_on_updates else lr_scheduler.step_update(
            start_epoch * updates_per_epoch)

    saver = wandb_run = None
    if primary:
        write_text_atomic(output_dir / 'args.yaml', args_text)
        saver = CheckpointSaver(model=model, optimizer=optimizer, amp_scaler=loss_scaler,  # args: in task.run_args
                                checkpoint_dir=str(output_dir), recovery_dir=str(output_dir), decreasing=False,
                                max_history=args.checkpoint_hist, task=task)
        if args.resume and resume_path.resolve().parent == output_dir.resolve():  # continue its checkpoint history
            saver.load_state_dict_from_checkpoint(str(resume_path))
        _logger.info(f'Run folder: {output_dir}')
        if args.log_wandb:
            import wandb  # optional: check_run_args stopped already if it is not installed
            wandb_run = wandb.init(project=args.wandb_project, name=output_dir.name, config=plain_args(args))
        _logger.info(f'Space: {model.space}; {len(sampler.pools)} pools of {args.pss_pool_size}, centres '
                     f'{sampler.describe_bucket(0)} .. {sampler.describe_bucket(len(sampler.pools) - 1)}')

    eval_model = task.get_trainable_module(ema=True).module if task.has_ema() else model
    pool_monitor = None
    if not args.pss_finalize_only and (args.pss_refresh_scores or not args.pss_no_diagnostics):
        images, labels = monitor_batch(calib_loader, args.batch_size, args.seed)
        pool_monitor = PoolMonitor(model, sampler, images, labels, diagnostics=not args.pss_no_diagnostics,
                                   csv_path=output_dir / 'pss_diagnostics.csv' if primary else None,
                                   refresh=args.pss_refresh_scores, autocast=amp_autocast, start_epoch=start_epoch)
    return TrainingRun(
        args=args, device=device, primary=primary, model=model, eval_model=eval_model, task=task,
        optimizer=optimizer, loss_scaler=loss_scaler, amp_autocast=amp_autocast, lr_scheduler=lr_scheduler,
        num_epochs=num_epochs, start_epoch=start_epoch, mixup_fn=mixup_fn, train_loader=train_loader,
        calib_loader=calib_loader, heldout_loader=heldout_loader, val_loader=val_loader, latency_table=latency_table,
        output_dir=output_dir, saver=saver, wandb_run=wandb_run, pool_monitor=pool_monitor, wait_group=wait_group)


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


def finalize(run: TrainingRun) -> None:
    """Rank 0's end of training: the budget table from the pools (held-out choice, BN per entry), each entry's
    validation accuracy, predicted latencies, then the Hub files, results and plot in the run folder."""
    args, space, output_dir = run.args, run.space, run.output_dir
    _logger.info('Finalising: choosing each pool\'s subnet on the held-out slice, calibrating BN per entry')
    finalize_budget_table(run.eval_model, run.sampler, run.calib_loader, run.heldout_loader, top_k=args.pss_top_k,
                          calib_batches=args.pss_calib_batches)
    supernet = find_supernet(run.eval_model)
    metrics, start, entries = [], time.time(), len(supernet.budget_table)
    for index in range(entries):
        supernet.set_budget_entry(index)
        top1, top5 = evaluate_accuracy(supernet, run.val_loader)
        metrics.append({'top1': top1, 'top5': top5})
        _logger.info(f'Validating the budget table: entry {index + 1}/{entries} top-1 {top1:.2f}  '
                     f'ETA {eta(time.time() - start, index + 1, entries)}')
    supernet.set_table_metrics(metrics)
    if run.latency_table is not None:
        record_latency(supernet, run.latency_table)
    supernet.set_top_budget()  # config.json's input size is then that of the entry a loaded model serves
    save_hub_files(supernet, output_dir)  # timm's save_for_hf layout: config.json + model.safetensors
    rows = write_results(output_dir, supernet, space)
    data = 'the embedded digits' if not args.data_dir and not args.dataset else (args.dataset or args.data_dir)
    plot_results(rows, output_dir / 'accuracy_vs_flops.png', f'{args.model} (PSS) on {data}',
                 val_images=len(run.val_loader.dataset))
    print(f'\n{args.model}: budget table with validation accuracy\n{format_results(rows)}\n', flush=True)
    _logger.info(f'Wrote {output_dir}: model.safetensors + config.json (load with timm.create_model('
                 f'"local-dir:{output_dir}", pretrained=True), which serves its top entry; budget=... picks '
                 f'another), publish with python -m timm_pss.publish), results.csv/json, plot')


def main(argv=None):
    setup_default_logging()
    args, args_text = parse_args(argv)
    resume_file = check_run_args(args)
    run = setup(args, args_text, resume_file)
    if not args.pss_finalize_only:
        train_epochs(run)
    if run.primary:
        finalize(run)
    if args.distributed:
        dist.barrier(group=run.wait_group)  # rank 0 finalised
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
