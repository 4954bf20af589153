"""train_pss.py's command line: the parser (one `add_*_args` per option group; the --pss-* group is
`timm_pss.pss.options.add_pss_args`), the embedded digits defaults, and `parse_args` with timm's precedence
(command line over -c/--config over defaults)."""
import argparse
import logging
import os
import sys
from typing import Optional, Sequence, Tuple

import torch
import yaml
from timm.utils import ParseKwargs

from timm_pss.pss import add_pss_args, check_pss_args

from .config import read_config

_logger = logging.getLogger('train_pss')

# Settings of the embedded default (digits): they apply unless the command line or --config says otherwise.
EMBEDDED_DEFAULTS = dict(
    epochs=25, batch_size=64, opt='sgd', lr=0.1, momentum=0.9, weight_decay=5e-5, sched='cosine', warmup_epochs=2,
    warmup_lr=0.01, min_lr=1e-4, scale=[0.7, 1.0], ratio=[0.9, 1.1], hflip=0.0, color_jitter=0.0, crop_pct=1.0,
    interpolation='bilinear', train_interpolation='bilinear', workers=0, log_interval=10,
    pss_resolutions=[24, 32, 4], pss_num_pools=8, pss_pool_size=8, pss_calib_batches=4, pss_top_k=2,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, unless the help already says what the default is."""

    def _get_help_string(self, action):
        if 'default' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """train_pss.py's parser: timm's train.py options with their names and meanings, then the --pss-* group."""
    parser = argparse.ArgumentParser(
        add_help=add_help,
        description='Train a timm_pss supernet with Prioritized Subnet Sampling (options as timm train.py, '
                    'plus --pss-*)', formatter_class=HelpFormatter,
        epilog='Defaults shown are the ones that apply to this command line: with no --data-dir/--dataset (on the '
               'command line or in -c) the embedded digits settings replace ' + ', '.join(
                   '--' + k.replace('_', '-') for k in EMBEDDED_DEFAULTS) + '; add --data-dir DIR to see timm\'s.')
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file whose keys set the defaults')
    for add_args in (add_dataset_args, add_model_args, add_optimizer_args, add_schedule_args, add_augmentation_args,
                     add_ema_args, add_misc_args, add_pss_args):
        add_args(parser)
    return parser


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The dataset options (as timm's train.py)."""
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


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model and its inputs (as timm's train.py)."""
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
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar=('C', 'H', 'W'),
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
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ModelKwargs,
                       help='extra timm.create_model keyword arguments, KEY=VALUE ...')


class ModelKwargs(ParseKwargs):
    """timm's KEY=VALUE parser for --model-kwargs, refusing an item without '=' in one line (timm's raises)."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if v and '=' not in v]
        if bad:
            parser.error(f'{option_string} takes KEY=VALUE items (e.g. resolution=160), got {bad[0]!r}')
        super().__call__(parser, namespace, values, option_string)


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    """The optimizer options (as timm's train.py)."""
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


def add_schedule_args(parser: argparse.ArgumentParser) -> None:
    """The learning-rate schedule options (as timm's train.py)."""
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


def add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    """The augmentation and regularization options (as timm's train.py)."""
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


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    """The model EMA options (as timm's train.py)."""
    group = parser.add_argument_group('Model exponential moving average')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='keep an exponential moving average of the weights; it is evaluated and finalised')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='keep the EMA weights on the CPU')
    group.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay per update')
    group.add_argument('--model-ema-warmup', action='store_true', help='warm the EMA decay up from 0')


def add_misc_args(parser: argparse.ArgumentParser) -> None:
    """Seeds, logging, checkpoints, devices and outputs."""
    group = parser.add_argument_group('Miscellaneous')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='random seed (data split, pools, initial weights)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N', help='batches between training log lines')
    group.add_argument('--val-interval', type=int, default=1, metavar='N',
                       help='epochs between evaluations (the last epoch is always evaluated)')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='optimizer updates between recovery checkpoints (recovery-EPOCH-BATCH.pth.tar; 0: none)')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='best checkpoints to keep')
    group.add_argument('--threads', type=int, default=None, metavar='N',
                       help='torch CPU threads per process (default None: torch\'s, one per core); on a shared or '
                            'busy CPU, 1 is often many times faster (see docs/training.md)')
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


def options_given(argv: Sequence[str]) -> set:
    """The option names (dests) that `argv` itself sets, whatever their defaults."""
    parser = build_parser(add_help=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    known, _ = parser.parse_known_args(argv)
    return set(vars(known))


def dataset_named(known: argparse.Namespace, config: dict) -> bool:
    """Whether the command line or the config names a dataset (else the embedded digits apply)."""
    return bool(known.data_dir or known.dataset or config.get('data_dir') or config.get('dataset'))


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
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
    try:
        check_pss_args(args)
    except ValueError as e:
        parser.error(str(e))
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


def plain_args(args: argparse.Namespace) -> dict:
    """The arguments as plain YAML-safe types (dict, list, str, numbers): what checkpoints and args.yaml store."""
    return yaml.safe_load(yaml.safe_dump(vars(args)))
