"""The frozen protocol of benchmarks/pareto.py: the methods compared (their extra train_pss.py arguments), each
dataset's fixed settings, the budgets a run is read at, which architectures are trained alone, and the settings a
run's record is matched on."""
import one_thread  # noqa: F401  (first: one thread for BLAS and OpenMP before numpy and torch load)

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from timm_pss import BudgetEntry, BudgetTable, Subnet


ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Method:
    label: str
    args: Tuple[str, ...]  # extra train_pss.py arguments


METHODS: Dict[str, Method] = {
    'pss': Method('PSS', ('--pss-sampler', 'prioritized')),
    'uniform': Method('uniform in-bucket', ('--pss-sampler', 'uniform')),
    'mutualnet': Method('MutualNet-style', ('--pss-sampler', 'global_width')),
    'usnet': Method('US-Net', ('--pss-sampler', 'usnet')),
    'pss_bw_global': Method('PSS, bucket weights of global width', ('--pss-sampler', 'prioritized',
                                                                     '--pss-bucket-weights', 'global_width')),
    'pss_refresh': Method('PSS, refreshed scores', ('--pss-sampler', 'prioritized', '--pss-refresh-scores')),
    'pss_zscore': Method('PSS, z-score priority', ('--pss-sampler', 'prioritized', '--pss-priority', 'zscore')),
    'pss_rank': Method('PSS, rank priority', ('--pss-sampler', 'prioritized', '--pss-priority', 'rank')),
    'pss_shuffled': Method('PSS, shuffled scores', ('--pss-sampler', 'prioritized', '--pss-shuffle-scores')),
    # not a sampler: each architecture of STANDALONE_FRACTIONS' rule trained alone (benchmarks/standalone.py)
    'standalone': Method('trained alone', ()),
}
MAIN_METHODS = ('pss', 'standalone', 'pss_refresh', 'uniform', 'mutualnet', 'usnet')
# names the digits CSV of earlier versions used
LEGACY_METHOD_NAMES = {'prioritized': 'pss', 'uniform': 'uniform', 'global_width': 'mutualnet'}

WIDTH_RANGE, RESOLUTIONS = (0.25, 1.0), (16, 32, 4)
SPACE_ARGS = ['--model', 'pss_mobilenetv1', '--pss-width-range', *map(str, WIDTH_RANGE),
              '--pss-resolutions', *map(str, RESOLUTIONS)]


@dataclass(frozen=True)
class Protocol:
    """What is fixed for one dataset: train_pss.py arguments, pools, defaults of the adjustable options."""
    title: str
    args: Tuple[str, ...]
    num_pools: int
    in_chans: int
    seeds: Tuple[int, ...]
    epochs: int
    quick_args: Tuple[str, ...] = ()
    train_size: Optional[int] = None  # Fashion-MNIST: training subset; None: the whole training data
    quick_sizes: Tuple[int, int] = (0, 0)  # (train, test) images with --quick


PROTOCOLS = {
    'digits': Protocol(
        'digits', tuple(SPACE_ARGS + ['--pss-num-pools', '10', '--pss-pool-size', '8']), num_pools=10, in_chans=3,
        seeds=(0, 1, 2), epochs=30, quick_args=('-b', '256')),
    'fashion-mnist': Protocol(
        'Fashion-MNIST', tuple(SPACE_ARGS + [
            '--pss-num-pools', '8', '--pss-pool-size', '8', '--pss-top-k', '2', '--pss-calib-batches', '4',
            '--pss-schedule', 'step', '--dataset', 'torch/fashion_mnist', '-b', '64', '-vb', '256', '--opt', 'sgd',
            '--lr', '0.05', '--momentum', '0.9', '--weight-decay', '5e-5', '--sched', 'cosine', '--warmup-epochs',
            '1', '--sched-on-updates', '--smoothing', '0.0', '--scale', '0.5', '1', '--ratio', '0.9', '1.1', '--hflip', '0.5',
            '--color-jitter', '0', '--crop-pct', '1.0', '--interpolation', 'bilinear', '--train-interpolation',
            'bilinear', '--workers', '0', '--pss-heldout-frac', '0.1']),
        num_pools=8, in_chans=1, seeds=(0, 1, 2, 3, 4), epochs=12, quick_args=('-b', '32'), train_size=6000,
        quick_sizes=(192, 256)),
}
QUICK_ARGS = ('--pss-num-pools', '3', '--pss-pool-size', '2', '--pss-calib-batches', '1', '--pss-top-k', '1')


def unsupported_methods(methods: Sequence[str]) -> Dict[str, str]:
    """{method: why} for the methods whose extra arguments this version of train_pss.py does not accept."""
    from timm_pss.train.args import build_parser
    parser = build_parser()
    parser.exit_on_error = False
    reasons = {}
    for m in methods:
        try:
            _, unknown = parser.parse_known_args(list(METHODS[m].args))
        except argparse.ArgumentError as e:
            reasons[m] = f'train_pss.py {" ".join(METHODS[m].args)}, which this version refuses ({e})'
        else:
            if unknown:
                reasons[m] = f'train_pss.py options {unknown}, which this version lacks'
    return reasons


def fail(message: str):
    """A usage error: one line on stderr, exit code 2."""
    print(f'pareto.py: error: {message}', file=sys.stderr)
    raise SystemExit(2)


# budgets and per-run rows

def space_of(protocol: Protocol):
    import timm
    return timm.create_model('pss_mobilenetv1', num_classes=10, in_chans=protocol.in_chans, width_range=WIDTH_RANGE,
                             resolution_range=RESOLUTIONS).space


def evaluation_budgets(space, num_pools: int) -> np.ndarray:
    """The min subnet's FLOPs, then each pool's upper edge (clipped to the max subnet): where set_budget is read."""
    from timm_pss.pss import bucket_targets
    targets, step = bucket_targets(space, num_pools=num_pools)
    f_min, f_max = space.flops_span
    return np.clip(np.concatenate([[f_min], targets + step / 2]), f_min, f_max)


def served_entry(entries: Sequence[dict], budget: float) -> dict:
    """The entry of a run's results.json that `set_budget(budget)` picks (timm_pss.BudgetTable.select's rule: the
    best held-out top-1 within the budget)."""
    table = BudgetTable(['g'], [BudgetEntry(int(e['flops']), Subnet(1, (1,)), {
        k: float(e[k]) for k in ('heldout_top1', 'top1') if e.get(k) is not None}) for e in entries])
    return entries[table.select(float(budget))[0]]


def rows_of_run(method: str, seed: int, entries: Sequence[dict], budgets: np.ndarray, min_flops: float) -> List[dict]:
    """One row per budget: the entry `set_budget(B)` picks (timm_pss.BudgetTable.select's rule) and its top-1."""
    rows = []
    for b in budgets:
        entry = served_entry(entries, b)
        rows.append(dict(method=method, seed=seed, budget_mflops=round(b / 1e6, 4),
                         entry_mflops=round(entry['flops'] / 1e6, 4), top1=round(float(entry['top1']), 4),
                         is_min_subnet=int(int(entry['flops']) == int(min_flops))))
    return rows


# models trained alone: which architectures, chosen before any test accuracy is looked at

STANDALONE_FRACTIONS = (1 / 3, 2 / 3)  # of the FLOPs span: where the two middle architectures are taken


def standalone_budget_indices(budgets: Sequence[float]) -> List[int]:
    """Indices of the evaluation budgets the models trained alone are compared at: the min subnet's, the budgets
    nearest 1/3 and 2/3 of the FLOPs span, the max subnet's."""
    budgets = np.asarray(budgets, float)
    lo, hi = budgets[0], budgets[-1]
    middle = [int(np.argmin(np.abs(budgets - (lo + f * (hi - lo))))) for f in STANDALONE_FRACTIONS]
    return sorted({0, *middle, len(budgets) - 1})


def standalone_architectures(entries: Sequence[dict], budgets: Sequence[float], space) -> Dict[str, Subnet]:
    """{name: subnet} trained alone: the min subnet, the entries the reference PSS run's table serves at the middle
    budgets of `standalone_budget_indices` (chosen on the held-out slice, as set_budget chooses; where that is the
    min subnet, the table's largest entry within the budget instead), and the max subnet."""
    budgets = np.asarray(budgets, float)
    min_flops = space.flops(space.min_subnet())
    chosen = {'min': space.min_subnet()}
    for i in standalone_budget_indices(budgets)[1:-1]:
        entry = served_entry(entries, budgets[i])
        if int(entry['flops']) == min_flops:
            entry = max((e for e in entries if e['flops'] <= budgets[i]), key=lambda e: e['flops'])
        chosen[f'at{budgets[i] / 1e6:.2f}M'] = Subnet(int(entry['resolution']),
                                                      tuple(int(w) for w in str(entry['widths']).split()))
    chosen['max'] = space.max_subnet()
    return chosen


def run_command(method: str, seed: int, args: argparse.Namespace, subnet: Optional[Subnet] = None) -> List[str]:
    """The settings of one run, which its record is matched on: the protocol, the method's arguments, seed, epochs
    and, for a model trained alone, its architecture. Not the data folder or the device, which differ between
    machines that continue one study."""
    protocol = PROTOCOLS[args.dataset]
    cmd = [*protocol.args, *METHODS[method].args, '--seed', str(seed), '--epochs', str(args.epochs), *args.extra]
    return cmd + (['--subnet', subnet.to_json()] if subnet is not None else [])
