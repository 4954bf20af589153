"""The PSS settings in one place: train_pss.py's --pss-* options, the rules their combinations follow, and the
sampler keyword arguments they give.

`check_sampler_settings` is the one statement of the rules between sampler settings. The command line runs it
while parsing (naming options, `OPTION_NAMES`); `build_sampler`, `GlobalWidthSampler` and `MultiCostSampler` run it
for library callers (naming keyword arguments, `KEYWORD_NAMES`), so a bad combination is refused the same way
whichever way it comes in.
"""
from __future__ import annotations

import argparse
import math
from typing import Mapping, Sequence

from ..units import parse_flops
from ..costs import COST_KINDS
from .pools import BUCKET_WEIGHTS, PRIORITIES

__all__ = ['SAMPLERS', 'KEYWORD_NAMES', 'OPTION_NAMES', 'PSS_RESUME_SETTINGS', 'MAX_POOLS', 'add_pss_args',
           'check_pss_args', 'check_pss_values', 'check_sampler_settings', 'sampler_kwargs']

SAMPLERS = ('prioritized', 'uniform', 'global_width', 'usnet')
# the samplers whose pools follow one cost kind each, so several of them can run side by side (MultiCostSampler)
MULTI_COST_SAMPLERS = ('prioritized', 'uniform')
# the pool-draw ablations and their reference values: only samplers that draw buckets and pool members take others
ABLATION_DEFAULTS = dict(bucket_weights='uniform', priority='raw', shuffle_scores=False)

# the --pss-* settings (argument names) a resumed run must share with the run it continues: the space and pools depend
# on them, and so does how middle subnets are drawn (the prioritized and in-bucket uniform samplers save the same
# state, so continuing one as the other would mix two methods in one run without a word)
PSS_RESUME_SETTINGS = ('pss_resolutions', 'pss_width_range', 'pss_num_pools', 'pss_pool_size', 'pss_budget_range',
                       'pss_latency_range', 'pss_metrics', 'pss_sampler', 'pss_bucket_weights', 'pss_priority',
                       'pss_shuffle_scores', 'pss_refresh_scores')

# what the rules' messages call each setting: the library's keyword arguments, or the command line's options
KEYWORD_NAMES = dict(kind='kind', cost_kinds='cost_kinds', latency_table='latency_table',
                     latency_builder='timm_pss.latency.build_lut', bucket_weights='bucket_weights',
                     priority='priority', shuffle_scores='shuffle_scores')
OPTION_NAMES = dict(kind='--pss-sampler', cost_kinds='--pss-cost-kinds', latency_table='--pss-latency-table JSON',
                    latency_builder='python -m timm_pss.latency --model MODEL --device DEVICE --output JSON',
                    bucket_weights='--pss-bucket-weights', priority='--pss-priority',
                    shuffle_scores='--pss-shuffle-scores')


def check_sampler_settings(
        kind: str = 'prioritized',
        cost_kinds: Sequence[str] = ('flops',),
        has_latency_table: bool = False,
        bucket_weights: str = 'uniform',
        priority: str = 'raw',
        shuffle_scores: bool = False,
        names: Mapping[str, str] = KEYWORD_NAMES,
) -> None:
    """Raise ValueError (one line, naming settings as `names` does) unless these settings can work together:
    known cost kinds, each at most once; latency costs only with a latency table; several cost kinds only for the
    samplers in `MULTI_COST_SAMPLERS`; the pool-draw ablations only for samplers that draw from pools."""
    for cost_kind in cost_kinds:
        if cost_kind not in COST_KINDS:
            raise ValueError(f'unknown cost kind {cost_kind!r}; choose from {", ".join(COST_KINDS)}')
    if 'latency' in cost_kinds and not has_latency_table:
        raise ValueError(f'{names["cost_kinds"]} latency needs {names["latency_table"]} (build one with '
                         f'{names["latency_builder"]})')
    if len(set(cost_kinds)) != len(cost_kinds):
        raise ValueError(f'{names["cost_kinds"]} lists a cost kind twice: {list(cost_kinds)}')
    if len(cost_kinds) > 1 and kind not in MULTI_COST_SAMPLERS:
        raise ValueError(f'{names["kind"]} {kind} keeps pools for one cost kind only; drop the other '
                         f'{names["cost_kinds"]}')
    settings = dict(bucket_weights=bucket_weights, priority=priority, shuffle_scores=shuffle_scores)
    ablations = [names[key] for key, reference in ABLATION_DEFAULTS.items() if settings[key] != reference]
    if ablations and kind not in MULTI_COST_SAMPLERS:
        raise ValueError(f'{", ".join(ablations)} change(s) how buckets and pool members are drawn; {names["kind"]} '
                         f'{kind} draws neither (use prioritized or uniform)')


def add_pss_args(parser: argparse.ArgumentParser) -> None:
    """The --pss-* option group of train_pss.py."""
    group = parser.add_argument_group('Prioritized Subnet Sampling')
    group.add_argument('--pss-budget-range', nargs=3, type=parse_flops, default=None, metavar=('LO', 'HI', 'STEP'),
                       help='pool centres in FLOPs (MACs), e.g. 110M 570M 10M; default: --pss-num-pools over the span')
    group.add_argument('--pss-num-pools', type=int, default=40, help='pools per cost kind, spread over its span')
    group.add_argument('--pss-cost-kinds', '--pss-metrics', nargs='+', choices=COST_KINDS, default=['flops'],
                       dest='pss_metrics', metavar='COST_KIND',
                       help='the cost kinds the pools bucket by: flops, latency (needs --pss-latency-table), or both '
                            'at once (PSS-Net\'s multi-constraint variant); --pss-metrics is its older name')
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


# the most pools one cost kind may have: each holds up to --pss-pool-size subnets and is measured every epoch, so a
# range with a tiny step (6M 11M 1: five million pools) would hang building them
MAX_POOLS = 10_000


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def check_pss_values(args: argparse.Namespace) -> None:
    """Raise ValueError (one line, naming the option and what it allows) for a --pss-* value out of its range, before
    anything is built: counts at least 1, probabilities in [0, 1], temperatures above 0, ranges low <= high with a
    positive step and at most `MAX_POOLS` pools."""
    for option, value, least in (('--pss-num-pools', args.pss_num_pools, 1), ('--pss-pool-size', args.pss_pool_size, 1),
                                 ('--pss-num-middle', args.pss_num_middle, 0), ('--pss-top-k', args.pss_top_k, 1),
                                 ('--pss-calib-batches', args.pss_calib_batches, 1)):
        if value < least:
            raise ValueError(f'{option} must be at least {least}, got {value}')
    if args.pss_num_pools > MAX_POOLS:
        raise ValueError(f'--pss-num-pools {args.pss_num_pools}: at most {MAX_POOLS} pools per cost kind')
    if not (math.isfinite(args.pss_momentum) and 0 <= args.pss_momentum < 1):
        raise ValueError(f'--pss-momentum must lie in [0, 1), got {args.pss_momentum}')
    if not (_finite(args.pss_p_random) and all(0 <= p <= 1 for p in args.pss_p_random)):
        raise ValueError(f'--pss-p-random START END are probabilities in [0, 1], got {args.pss_p_random}')
    if not (_finite(args.pss_temperature) and all(v > 0 for v in args.pss_temperature)):
        raise ValueError(f'--pss-temperature START END must be above 0, got {args.pss_temperature}')
    if args.pss_width_range is not None:
        lo, hi = args.pss_width_range
        if not (_finite((lo, hi)) and 0 < lo <= hi):
            raise ValueError(f'--pss-width-range LO HI needs 0 < LO <= HI (e.g. 0.25 1.0), got {lo:g} {hi:g}')
    if args.pss_resolutions is not None:
        lo, hi, step = args.pss_resolutions
        if not (8 <= lo <= hi and step >= 1):
            raise ValueError(f'--pss-resolutions MIN MAX STEP needs 8 <= MIN <= MAX and STEP >= 1 (e.g. 128 224 8), '
                             f'got {lo} {hi} {step}')
    for option, span in (('--pss-budget-range', args.pss_budget_range),
                         ('--pss-latency-range', args.pss_latency_range)):
        if span is None:
            continue
        lo, hi, step = span
        shown = ' '.join(f'{v:g}' for v in span)
        if not (_finite(span) and 0 < lo < hi and step > 0):
            raise ValueError(f'{option} LO HI STEP needs 0 < LO < HI and STEP > 0, got {shown}')
        if (hi - lo) / step + 1 > MAX_POOLS:
            raise ValueError(f'{option} {shown} gives {int((hi - lo) / step) + 1} pools; at most {MAX_POOLS}: use a '
                             f'larger STEP')


def check_pss_args(args: argparse.Namespace) -> None:
    """Raise ValueError (one line, naming the options) unless the parsed --pss-* options hold allowed values
    (`check_pss_values`) and can work together."""
    check_pss_values(args)
    if args.pss_finalize_only and not args.resume:
        raise ValueError('--pss-finalize-only needs --resume CHECKPOINT')
    if not 0 < args.pss_heldout_frac < 1:
        raise ValueError('--pss-heldout-frac must lie in (0, 1)')
    check_sampler_settings(
        args.pss_sampler, args.pss_metrics, has_latency_table=bool(args.pss_latency_table),
        bucket_weights=args.pss_bucket_weights, priority=args.pss_priority, shuffle_scores=args.pss_shuffle_scores,
        names=OPTION_NAMES)


def sampler_kwargs(args: argparse.Namespace) -> dict:
    """`build_sampler`'s keyword arguments from train_pss.py's --pss-* options (as timm's `scheduler_kwargs`)."""
    return dict(
        kind=args.pss_sampler, cost_kinds=tuple(args.pss_metrics), budget_range=args.pss_budget_range,
        latency_range=args.pss_latency_range, num_pools=args.pss_num_pools, pool_size=args.pss_pool_size,
        momentum=args.pss_momentum, p_random=tuple(args.pss_p_random), temperature=tuple(args.pss_temperature),
        seed=args.seed, priority=args.pss_priority, shuffle_scores=args.pss_shuffle_scores,
        bucket_weights=args.pss_bucket_weights)
