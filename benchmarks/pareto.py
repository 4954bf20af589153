"""Does one supernet training give each budget a subnet as good as a model trained alone, and does prioritized
sampling help? Accuracy vs FLOPs of PSS, simpler samplers and models trained alone, paired by seed.

Every supernet method is one `train_pss.py` run per seed with everything identical (script, recipe, epochs, steps,
data split, initial weights, buckets, pool sizes, finalisation) except the extra arguments of its row in `METHODS`:

- `pss`: PSS, the reference (pools drawn by softmax(score / T), p_random 1 -> 0.01).
- `pss_refresh`: PSS whose pool scores are re-measured on a fixed training batch every epoch (the ablations' candidate).
- `uniform`: the paper's ablation, a random in-bucket subnet every step (p_random fixed at 1); its pools only record
  scores, so finalisation has the same candidates to choose from.
- `mutualnet`: one global width level for every group and a random resolution (MutualNet-style; `global_width`).
- `usnet`: US-Net, width only at the fixed max resolution (`--pss-sampler usnet`).
- `standalone`: the yardstick, not a sampler: four architectures, each re-initialised and trained alone with
  cross-entropy only on the same data, recipe and epochs (`benchmarks/standalone.py`): the min subnet, the max subnet
  and the two entries the PSS reference run of the first seed serves nearest 1/3 and 2/3 of the FLOPs span (chosen
  on the held-out slice, before any test accuracy is read). Served like a budget table: at B, the one of them
  with the best held-out top-1 that fits.
- ablations of PSS: `pss_bw_global`, `pss_zscore`, `pss_rank`, `pss_shuffled` (select with --methods).
  A method whose options this version of train_pss.py lacks is refused up front, naming the missing option.

The main comparison is `pss standalone pss_refresh uniform mutualnet usnet`. Runs of one seed share the data split
and the initial weights (train_pss.py seeds both from --seed), so differences are paired by seed. Finalisation
chooses each pool's subnet on a held-out slice of the training data; the reported accuracy is the top-1 on the
validation split (Fashion-MNIST: the full 10,000-image test split, on which nothing is selected) of the entry
`set_budget(B)` picks, for B = the min subnet's FLOPs and each pool's upper edge. AUC: the area under that curve
over the FLOPs span divided by the span (the mean top-1 over the range). The report gives mean +- std per method,
PSS - baseline as the mean paired difference with a 95% t-interval over seeds, each supernet - the models trained
alone at the four budgets whose architecture was trained alone, each method's training cost (CPU-seconds of its
runs per seed) and the pool diagnostics (pss_diagnostics.csv: top member's draw probability, effective members,
Spearman of pool score vs fresh -CE, first and last epoch); budgets where runs serve the min subnet (every method
trains it every step, so they say nothing about the middle-subnet rule) are marked.

Protocols (both pss_mobilenetv1, widths 0.25-1.0 of every group, inputs 16-32 px in steps of 4, so the small subnets
are hard and the methods do not all saturate):

- digits: the embedded scikit-learn digits (8x8 scans), 10 pools of 8, 30 epochs of SGD (about 570 steps).
- fashion-mnist: grayscale 28x28 (in_chans=1, the data's own mean/std), a training subset of --train-size images
  (10% of it held out for selection), random-resized crops of scale 0.5-1 and horizontal flips, 8 pools of 8,
  SGD lr 0.05 with a 1-epoch linear warm-up (per update) and cosine decay, 12 epochs, the p_random / temperature
  schedules advanced per step.

  The recipe was fixed once, before any comparison, on the held-out slice with one method-neutral run: the max
  architecture trained alone (standalone.py, seed 0). Held-out top-1 (600 images) at the end of training: 12
  epochs 77.7 (epochs 9-11: 77.3, 77.5, 77.7); 20 epochs 77.7 (epochs 15-19: 78.3, 79.0, 77.7, 78.8, 77.7, mean
  78.3). 12 epochs is within about 1 point of the longer run's plateau, so 12 epochs it is. The earlier recipe
  (lr 0.1, no warm-up, 4 epochs) started fresh models at a cross-entropy of 6-7, diverged in two runs and left
  the max architecture trained alone near 68 %: its results measured which sampler survives it, and are gone.

  Time budget: the sandwich step trains at about 115 images per CPU-second, so one supernet run (0.9 x 6,000 x 12
  images, evaluation and finalisation) is about 10 CPU-minutes; the four models trained alone of one seed about
  8 (the max architecture alone: about 240 img/s). 5 methods x 5 seeds + 5 x 4 standalone runs: about 4.8
  CPU-hours, about 2.5 hours two at a time on a 2-core CPU; the progress line after each run gives the time left
  from each method's own recorded run times.

Run from the repository root (one training process per core, one thread each):

    python -m timm_pss.dataset_setup fashion-mnist data/   # optional: the script sets up its own copy
    python benchmarks/pareto.py --dataset fashion-mnist    # the main comparison, 6 methods x 5 seeds
    python benchmarks/pareto.py --dataset fashion-mnist --report-only   # report what the records hold, train nothing
    python benchmarks/pareto.py --dataset fashion-mnist --device cuda --jobs 8   # on a GPU: 8 runs share the card
    python benchmarks/pareto.py --dataset fashion-mnist --quick --methods pss mutualnet   # smoke test
    python benchmarks/pareto.py --dataset digits --seeds 0 1 2 --methods pss uniform mutualnet   # the digits study
    python benchmarks/pareto.py --dataset digits --from-csv benchmarks/results/pareto.csv  # re-report stored runs
    python benchmarks/pareto.py --seeds 0 1 2 --methods pss pss_bw_global pss_refresh pss_zscore pss_shuffled

Runs survive the machine: each finished run's small record (results.json, benchmark.json with its settings, CPU
and wall time and device, pss_diagnostics.csv; no weights) is copied into --records (default
benchmarks/results/runs_<dataset>, committed with the code), and every invocation reuses the records whose
settings match (the data folder and device are not settings), so a study continues on any machine; an interrupted
run resumes from its last checkpoint in --output. With --device cuda the runs train on the GPU, --jobs at a time
on one card, each with loader workers sharing the machine's cores (timm's prefetcher normalises on the card).
Writes `pareto_<dataset>.csv` (one row per method, seed and budget), `pareto_<dataset>.png` and `pareto_<dataset>.md`
into --results (default benchmarks/results; with --quick the --output folder); `pareto_<dataset>_ablations.*` when
PSS is compared with its ablations, `pareto_<dataset>_<method>.*` when another method comes first, so that the main
report is kept; --from-csv writes the report (.md) only.
"""
from harness import format_table, machine_lines  # first: one thread per process

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from one_thread import THREAD_VARIABLES
from timm_pss import BudgetEntry, BudgetTable, Subnet
from timm_pss.files import write_bytes_atomic, write_text_atomic
from timm_pss.reporting import AccuracyCurve, plot_accuracy_vs_flops, write_csv as write_csv_rows

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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', choices=sorted(PROTOCOLS), default='fashion-mnist')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS), default=None,
                        help=f'methods; the first is compared with the others (default: {" ".join(MAIN_METHODS)})')
    parser.add_argument('--seeds', nargs='+', type=int, default=None,
                        help='default: 0 1 2 for digits (the stored results), 0..4 for fashion-mnist')
    parser.add_argument('--epochs', type=int, default=None, help='default: 30 (digits), 12 (fashion-mnist)')
    parser.add_argument('--train-size', type=int, default=None,
                        help='fashion-mnist: training images used, a fixed random subset (default 6000)')
    parser.add_argument('--fashion-source', type=Path, default=None,
                        help='folder with the four Fashion-MNIST .gz files (default: Debian\'s package folder)')
    parser.add_argument('--jobs', type=int, default=None,
                        help='training runs at a time, one thread each (default: 2 on a CPU, 4 on a GPU)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='where the runs train; cuda: --jobs runs share one card, loader workers share the cores')
    parser.add_argument('--output', type=Path, default=None, help='run folders (default output/pareto_<dataset>)')
    parser.add_argument('--records', type=Path, default=None,
                        help='each finished run\'s results.json, benchmark.json and pss_diagnostics.csv, reused by '
                             'later invocations on any machine (default benchmarks/results/runs_<dataset>; with '
                             '--quick: under --output)')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: report the runs the records folder holds (the seeds that every method '
                             'finished; with fewer than two, a table of the finished runs)')
    parser.add_argument('--results', type=Path, default=None,
                        help='where the csv, plot and report go (default benchmarks/results; --quick: --output)')
    parser.add_argument('--quick', action='store_true', help='a smoke test (tiny data, 1 epoch, 2 seeds), not a result')
    parser.add_argument('--from-csv', type=Path, default=None,
                        help='train nothing: report the per-seed rows of this CSV (this script\'s or the older '
                             'method,seed,budget_flops,top1 format)')
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.dataset]
    if args.train_size is not None and protocol.train_size is None:
        parser.error(f'--train-size applies to fashion-mnist only, not {args.dataset}')
    if args.from_csv is not None:  # default: the methods and seeds the CSV holds
        if not args.from_csv.is_file():
            parser.error(f'--from-csv {args.from_csv}: no such file')
        rows = read_csv(args.from_csv)
        present = {r['method'] for r in rows}
        args.methods = args.methods or [m for m in METHODS if m in present]
        args.seeds = args.seeds or sorted({r['seed'] for r in rows})
    args.methods = args.methods or list(MAIN_METHODS)
    args.seeds = args.seeds or list(protocol.seeds)
    args.epochs = args.epochs or protocol.epochs
    args.train_size = args.train_size or protocol.train_size
    args.output = args.output or Path('output') / f'pareto_{args.dataset.replace("-", "_")}'
    args.extra = []
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:2]
        args.extra = [*protocol.quick_args, *QUICK_ARGS]
        args.train_size = protocol.quick_sizes[0] or None
    args.results = args.results or (args.output if args.quick else ROOT / 'benchmarks' / 'results')
    args.records = args.records or (args.output / 'records' if args.quick else
                                    ROOT / 'benchmarks' / 'results' / f'runs_{args.dataset.replace("-", "_")}')
    args.jobs = args.jobs or (4 if args.device == 'cuda' else max(1, min(2, os.cpu_count() or 1)))
    args.num_pools = int(QUICK_ARGS[1]) if args.quick else protocol.num_pools
    if args.device == 'cuda' and args.from_csv is None and not args.report_only:
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda: torch sees no CUDA device here; leave out --device to train on the CPU')
    if 'standalone' in args.methods and 'pss' not in args.methods:
        parser.error('method standalone takes its middle architectures from the PSS reference run: add pss to '
                     '--methods')
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error('--seeds needs at least two different seeds, each once (for a standard deviation)')
    if len(set(args.methods)) != len(args.methods):
        parser.error('--methods lists a method twice')
    for name in ('epochs', 'jobs', 'train_size'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.from_csv is None:
        unsupported = unsupported_methods(args.methods)
        if unsupported:
            parser.error('; '.join(f'method {m} needs {reason}' for m, reason in unsupported.items()))
    return args


def report_stem(dataset: str, methods: Sequence[str]) -> str:
    """File name of the csv/png/md, so that no run overwrites another's report: the main comparison's own,
    `_ablations` when PSS is compared with its ablations, `_<method>` when another method is compared with the rest."""
    stem = f'pareto_{dataset.replace("-", "_")}'
    if methods[0] == 'pss' and set(methods) <= set(MAIN_METHODS):
        return stem
    return f'{stem}_ablations' if methods[0] == 'pss' else f'{stem}_{methods[0]}'


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


# statistics

def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95% intervals)."""
    from scipy.stats import t  # scipy comes with scikit-learn, a dependency
    return float(t.ppf(0.975, df))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float, float]:
    """Mean of the per-seed differences a - b and its 95% t-interval (low, high) over the seeds (n >= 2); a seed
    missing (nan) on either side leaves the pair out."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[~np.isnan(d)]
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f'need paired values of at least two seeds, got {len(d)}')
    half = t_quantile_975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def normalised_auc(budgets: Sequence[float], accuracy: Sequence[float]) -> float:
    """Area under accuracy vs FLOPs (trapezoids) divided by the FLOPs span: the mean accuracy over the range."""
    budgets, accuracy = np.asarray(budgets, float), np.asarray(accuracy, float)
    if len(budgets) < 2 or budgets[-1] <= budgets[0]:
        raise ValueError('need at least two increasing budgets')
    return float(np.trapezoid(accuracy, budgets) / (budgets[-1] - budgets[0]))


def format_interval(mean: float, low: float, high: float) -> str:
    return f'{mean:+.2f} [{low:+.2f}, {high:+.2f}]'


def mean_std(values: Sequence[float]) -> str:
    """Mean ± std of the seeds that have a value (nan: the run diverged), with the count when some are missing."""
    values = np.asarray(values, float)
    kept = values[~np.isnan(values)]
    text = f'{kept.mean():.2f} ± {kept.std(ddof=1):.2f}'
    return text if len(kept) == len(values) else f'{text} (n={len(kept)})'


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


CSV_COLUMNS = ('method', 'seed', 'budget_mflops', 'entry_mflops', 'top1', 'is_min_subnet')


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """This script's per-seed CSV: CSV_COLUMNS, None as an empty cell, '\\n' line ends."""
    write_csv_rows(path, rows, CSV_COLUMNS, lineterminator='\n')


def read_csv(path: Path) -> List[dict]:
    """Per-seed rows of this script's CSV, or of the older format (method,seed,budget_flops,top1 with auc / mean /
    std rows), which records neither the serving entry nor the min subnet: those become None, except the first
    budget, which only the min subnet fits."""
    with open(path, newline='') as f:
        raw = list(csv.DictReader(f))
    rows = []
    if raw and 'budget_mflops' in raw[0]:
        for r in raw:
            rows.append(dict(method=r['method'], seed=int(r['seed']), budget_mflops=float(r['budget_mflops']),
                             entry_mflops=float(r['entry_mflops']) if r['entry_mflops'] else None,
                             top1=float(r['top1']),
                             is_min_subnet=int(r['is_min_subnet']) if r['is_min_subnet'] != '' else None))
        return rows
    per_seed = [r for r in raw if r['seed'].lstrip('-').isdigit() and r['budget_flops'].isdigit()]
    lowest = min(int(r['budget_flops']) for r in per_seed)
    for r in per_seed:
        first = int(r['budget_flops']) == lowest
        rows.append(dict(method=LEGACY_METHOD_NAMES.get(r['method'], r['method']), seed=int(r['seed']),
                         budget_mflops=round(int(r['budget_flops']) / 1e6, 4),
                         entry_mflops=round(lowest / 1e6, 4) if first else None, top1=float(r['top1']),
                         is_min_subnet=1 if first else None))
    return rows


def accuracy_grid(rows: Sequence[dict], methods: Sequence[str], seeds: Sequence[int],
                  diverged: Sequence[Tuple[str, int]] = ()):
    """(budgets in MMACs, {method: array seeds x budgets of top-1}, {method: same of is_min_subnet (nan: unknown)});
    the runs in `diverged` have no rows and give rows of nan."""
    budgets = sorted({r['budget_mflops'] for r in rows})
    index = {(r['method'], r['seed'], r['budget_mflops']): r for r in rows}
    missing = [(m, s) for m in methods for s in seeds if (m, s, budgets[0]) not in index and (m, s) not in diverged]
    if missing:
        fail(f'the rows hold no results for (method, seed) {missing}')

    def value(m, s, b, key):
        if (m, s) in diverged or index[m, s, b][key] is None:
            return np.nan
        return index[m, s, b][key]
    acc = {m: np.array([[value(m, s, b, 'top1') for b in budgets] for s in seeds], float) for m in methods}
    at_min = {m: np.array([[value(m, s, b, 'is_min_subnet') for b in budgets] for s in seeds if (m, s) not in diverged],
                          float) for m in methods}
    return np.array(budgets), acc, at_min


def min_subnet_marks(at_min: Dict[str, np.ndarray], methods: Sequence[str]) -> List[str]:
    """Per budget: 'all' where every run of every method serves the min subnet, 'k/n' where some do, '?' where
    the CSV does not say, '' where none does."""
    stacked = np.concatenate([at_min[m] for m in methods])
    marks = []
    for column in stacked.T:
        if np.isnan(column).any():
            marks.append('?')
        elif column.all():
            marks.append('all')
        else:
            marks.append(f'{int(column.sum())}/{len(column)}' if column.any() else '')
    return marks


def standalone_section(budgets: np.ndarray, acc: Dict[str, np.ndarray], methods: Sequence[str],
                       marks: Sequence[str]) -> List[str]:
    """Markdown lines: each supernet method − the models trained alone, paired by seed, at the budgets whose
    architecture was trained alone (standalone_budget_indices)."""
    others = [m for m in methods if m != 'standalone']
    indices = standalone_budget_indices(budgets)
    headers = ['budget (MMACs)', 'min subnet served'] + [f'{METHODS[m].label} − trained alone' for m in others]
    table = [[f'{budgets[i]:.2f}', marks[i]] + [format_interval(*paired_difference(acc[m][:, i], acc['standalone'][:, i]))
                                                for m in others] for i in indices]
    return ['## Supernet − models trained alone: mean paired difference [95% t-interval] at the budgets whose '
            'architecture was trained alone', '',
            '- trained alone: the min subnet, the max subnet and the entries the PSS reference run of the first seed '
            'serves nearest 1/3 and 2/3 of the FLOPs span (chosen on the held-out slice), each re-initialised and '
            'trained with cross-entropy only, same data, recipe and epochs (benchmarks/standalone.py); between '
            'these budgets its column above is the best of them that fits (a staircase, so its AUC is low by '
            'construction and not compared)', '', format_table(headers, table), '']


def cost_section(costs: Dict[str, List[dict]], methods: Sequence[str]) -> List[str]:
    """Markdown lines: each method's training cost per seed (CPU-seconds and wall minutes of its runs, mean over
    the seeds), and a supernet run's CPU time against the models trained alone that it replaces."""
    alone = np.mean([t['cpu_s'] for t in costs['standalone']]) if 'standalone' in costs else None
    rows = []
    for m in methods:
        cpu, wall = [t['cpu_s'] for t in costs[m]], [t['wall_s'] for t in costs[m]]
        devices = sorted({t.get('device', 'cpu') for t in costs[m]})
        what = ''
        if m == 'standalone':
            parts = costs[m][0].get('parts', {})
            what = ', '.join(f'{n} {np.mean([t["parts"][n]["cpu_s"] for t in costs[m]]):.0f}' for n in parts)
        elif alone:
            what = f'{np.mean(cpu) / alone:.2f}x the models trained alone'
        rows.append([METHODS[m].label, f'{np.mean(cpu):.0f}', f'{np.mean(wall) / 60:.1f}', '/'.join(devices), what])
    return ['## Training cost per seed (mean over seeds, as recorded when each run was trained)', '',
            format_table(['method', 'CPU-s', 'wall min', 'device', 'note'], rows), '']


DIAGNOSTIC_KEYS = (('top_member_prob', 'top-member p'), ('effective_members', 'effective members'),
                   ('spearman_score_vs_fresh', 'Spearman(score, fresh −CE)'))


def diagnostics_section(diagnostics: Dict[str, List[List[dict]]], methods: Sequence[str]) -> List[str]:
    """Markdown lines: the pool diagnostics (pss_diagnostics.csv's mean over pools, then over seeds) at the first
    and the last epoch, per method that records them."""
    rows = []
    for m in methods:
        if m not in diagnostics:
            continue
        per_seed = [[r for r in run if r['pool'] == 'mean'] for run in diagnostics[m]]
        cells = []
        for key, _ in DIAGNOSTIC_KEYS:
            first, last = (np.nanmean([float(run[k][key]) for run in per_seed if run]) for k in (0, -1))
            cells.append(f'{first:.2f} → {last:.2f}')
        rows.append([METHODS[m].label, str(len(per_seed))] + cells)
    if not rows:
        return []
    return ['## Pool diagnostics, first → last epoch (mean over pools, then seeds)', '',
            format_table(['method', 'runs'] + [label for _, label in DIAGNOSTIC_KEYS], rows), '']


def report(rows: Sequence[dict], methods: Sequence[str], seeds: Sequence[int], title: str,
           diverged: Optional[Dict[Tuple[str, int], str]] = None, costs: Optional[Dict[str, List[dict]]] = None,
           diagnostics: Optional[Dict[str, List[List[dict]]]] = None) -> str:
    """Markdown: mean +- std per method and budget; PSS - baseline as paired mean and 95% t-interval; AUC; marks.
    `diverged` {(method, seed): why}: runs that stopped on a non-finite loss; they are listed, and every mean and
    paired difference is over the seeds that finished (n says how many where it is fewer)."""
    diverged = diverged or {}
    budgets, acc, at_min = accuracy_grid(rows, methods, seeds, list(diverged))
    marks = min_subnet_marks(at_min, methods)
    auc = {m: np.array([normalised_auc(budgets, acc[m][i]) for i in range(len(seeds))]) for m in methods}
    base, others = methods[0], list(methods[1:])
    label = {m: METHODS[m].label for m in methods}
    lines = [f'## {title}: top-1 (%) at set_budget(B), mean ± std over seeds {", ".join(map(str, seeds))}', '']
    if diverged:
        lines += [f'- {label[m]} seed {s} diverged and has no accuracy: {why}' for (m, s), why in diverged.items()]
        lines.append('')
    headers = ['budget (MMACs)', 'min subnet served'] + [label[m] for m in methods]
    table = [[f'{b:.2f}', marks[i]] + [mean_std(acc[m][:, i]) for m in methods] for i, b in enumerate(budgets)]
    table.append(['AUC (mean top-1)', ''] + [mean_std(auc[m]) for m in methods])
    lines += [format_table(headers, table), '']
    if others:
        pairs = {m: sum((base, s) not in diverged and (m, s) not in diverged for s in seeds) for m in others}
        counts = ', '.join(sorted({str(n) for n in pairs.values()}))
        lines += [f'## {label[base]} − baseline: mean paired difference over {counts} seeds [95% t-interval]', '']
        if len(set(pairs.values())) > 1 or diverged:
            lines += ['- pairs per baseline (seeds where both runs finished): '
                      + ', '.join(f'{label[m]} {n}' for m, n in pairs.items()), '']
        headers = ['budget (MMACs)', 'min subnet served'] + [f'{label[base]} − {label[m]}' for m in others]
        table = [[f'{b:.2f}', marks[i]] + [format_interval(*paired_difference(acc[base][:, i], acc[m][:, i]))
                                           for m in others] for i, b in enumerate(budgets)]
        table.append(['AUC (mean top-1)', ''] + [format_interval(*paired_difference(auc[base], auc[m]))
                                                 for m in others])
        lines += [format_table(headers, table), '']
        useful = [i for i, mark in enumerate(marks) if mark != 'all']
        for m in others:
            diffs = [paired_difference(acc[base][:, i], acc[m][:, i]) for i in useful]
            above = sum(lo > 0 for _, lo, _ in diffs)
            below = sum(hi < 0 for _, _, hi in diffs)
            lines.append(f'- {label[base]} vs {label[m]}: interval above zero at {above}, below zero at {below} of '
                         f'the {len(useful)} budgets not served by the min subnet in every run')
        lines.append('')
    if 'standalone' in methods and len(methods) > 1:
        lines += standalone_section(budgets, acc, methods, marks)
    if costs:
        lines += cost_section(costs, methods)
    if diagnostics:
        lines += diagnostics_section(diagnostics, methods)
    lines.append('"min subnet served": all = every run of every method serves the min subnet at that budget; every '
                 'method trains the min subnet every step, so such a row says little about the middle-subnet rule; '
                 'k/n = k of n runs; ? = not recorded (older CSV).')
    return '\n'.join(lines)


def plot(path: Path, rows: Sequence[dict], methods: Sequence[str], seeds: Sequence[int], title: str,
         diverged: Sequence[Tuple[str, int]] = ()) -> None:
    """Top-1 at set_budget(B) against B, mean ± std over the seeds that finished, one curve per method."""
    budgets, acc, _ = accuracy_grid(rows, methods, seeds, diverged)
    curves = [AccuracyCurve(METHODS[m].label, budgets, np.nanmean(acc[m], 0), np.nanstd(acc[m], 0, ddof=1))
              for m in methods]
    plot_accuracy_vs_flops(path, curves, title, xlabel='budget (MMACs): set_budget(B)', figsize=(7, 4.5),
                           marker_size=3, legend_fontsize=8)


# data and training runs

def prepare_fashion_mnist(output: Path, source: Optional[Path], train_size: Optional[int],
                          test_size: Optional[int]) -> Path:
    """A Fashion-MNIST root for train_pss.py under `output`: the package's files gunzipped, then a fixed random
    subset of `train_size` training (and `test_size` test) images; None keeps all (`timm_pss.dataset_setup`)."""
    from timm_pss.dataset_setup import SetupError, setup_dataset, write_subset
    full = output / 'fashion-mnist-full'
    try:
        setup_dataset('fashion-mnist', full, source)
        if train_size is None and test_size is None:
            return full
        return write_subset('fashion-mnist', full, output / f'fashion-mnist-train{train_size or "all"}-test'
                            f'{test_size or "all"}', train_size, test_size)
    except SetupError as e:
        fail(f'{e}')


def run_command(method: str, seed: int, args: argparse.Namespace, subnet: Optional[Subnet] = None) -> List[str]:
    """The settings of one run, which its record is matched on: the protocol, the method's arguments, seed, epochs
    and, for a model trained alone, its architecture. Not the data folder or the device, which differ between
    machines that continue one study."""
    protocol = PROTOCOLS[args.dataset]
    cmd = [*protocol.args, *METHODS[method].args, '--seed', str(seed), '--epochs', str(args.epochs), *args.extra]
    return cmd + (['--subnet', subnet.to_json()] if subnet is not None else [])


def machine_args(args: argparse.Namespace, data_root: Optional[Path]) -> List[str]:
    """What the machine adds to a run's settings: the data folder, the device and, on a GPU, loader workers
    sharing the machine's cores between the runs on the card."""
    extra = ['--data-dir', str(data_root.resolve())] if data_root is not None else []
    extra += ['--device', args.device]
    if args.device == 'cuda':
        extra += ['--workers', str(max(1, (os.cpu_count() or 1) // args.jobs - 1)), '--pin-mem']
    return extra


RECORD_FILES = ('results.json', 'pss_diagnostics.csv', 'benchmark.json')  # benchmark.json last: it marks one done


def finished_record(folder: Path) -> Optional[dict]:
    """A finished run's benchmark.json (with results.json beside it, or a recorded divergence), else None."""
    record = folder / 'benchmark.json'
    if not record.is_file():
        return None
    done = json.loads(record.read_text())
    return done if (folder / 'results.json').is_file() or 'diverged' in done else None


def keep_record(run_dir: Path, record_dir: Path) -> None:
    """Copy a finished run's small files (no weights) into the records folder that is committed with the code."""
    record_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            write_bytes_atomic(record_dir / name, (run_dir / name).read_bytes())


def train(name: str, cmd: List[str], args: argparse.Namespace, data_root: Optional[Path],
          script: str = 'train_pss.py') -> Tuple[Path, dict]:
    """One run of `script` with settings `cmd`: reused when its record (the committed records folder first, then
    the run folder) is finished with the same settings, resumed from its last checkpoint when interrupted, else
    trained; returns (the folder holding its record, timing)."""
    run_dir, record_dir = args.output / name, args.records / name
    for folder in (record_dir, run_dir):
        done = finished_record(folder)
        if done is None:
            continue
        if done['command'] != cmd:
            fail(f'{folder} was trained with other settings; use another --output / --records or remove it')
        if folder == run_dir:  # finished before it was recorded
            keep_record(run_dir, record_dir)
        return record_dir, dict(done, reused=True)
    resume = []
    if (run_dir / 'last.pth.tar').exists():
        resume = ['--resume', str(run_dir)]
    elif run_dir.exists():  # started by this script, stopped before its first checkpoint
        shutil.rmtree(run_dir)
    full = [sys.executable, str(ROOT / ('benchmarks' if script == 'standalone.py' else '') / script), *cmd,
            *machine_args(args, data_root), '--output', str(args.output.resolve()), '--experiment', name, *resume]
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, '1')}
    start = time.perf_counter()
    log = args.output / f'{name}.log'
    with open(log, 'a') as f:
        proc = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    timing = dict(command=cmd, wall_s=time.perf_counter() - start, cpu_s=usage.ru_utime + usage.ru_stime,
                  resumed=bool(resume), device=args.device)
    if os.waitstatus_to_exitcode(status) != 0:
        why = diverged_reason(log)
        if why is None:
            raise RuntimeError(f'{" ".join(full)} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}')
        timing['diverged'] = why  # a result of the method and seed, not a failure of the benchmark: recorded
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / 'benchmark.json', json.dumps(timing, indent=2))
    keep_record(run_dir, record_dir)
    return record_dir, dict(timing, reused=False)


def diverged_reason(log: Path) -> Optional[str]:
    """The reason train_pss.py (or standalone.py) gave for stopping on a non-finite loss, from the end of its log;
    None otherwise."""
    for line in reversed(log.read_text(errors='replace').splitlines()[-20:]):
        for prefix in ('train_pss.py: error: ', 'standalone.py: error: '):
            if line.startswith(prefix) and 'training diverged' in line:
                return line[len(prefix):].split(' (--lr')[0]
    return None


def train_standalone(seed: int, args: argparse.Namespace, data_root: Optional[Path],
                     architectures: Callable[[], Dict[str, Subnet]]) -> Tuple[List[Path], dict]:
    """The models trained alone for one seed, one architecture after another; (their record folders, the timing
    summed over them, diverged if any did)."""
    folders, parts = [], {}
    for name, subnet in architectures().items():
        folder, parts[name] = train(f'standalone-{name}-seed{seed}', run_command('standalone', seed, args, subnet),
                                    args, data_root, script='standalone.py')
        folders.append(folder)
    return folders, summed_timing(parts)


def summed_timing(parts: Dict[str, dict]) -> dict:
    """One timing for the runs `parts` {name: timing}: wall and CPU time summed, reused if all were, each part's
    times, and the first divergence among them."""
    total = dict(wall_s=sum(t['wall_s'] for t in parts.values()), cpu_s=sum(t['cpu_s'] for t in parts.values()),
                 reused=all(t.get('reused', True) for t in parts.values()),
                 parts={n: dict(cpu_s=t['cpu_s'], wall_s=t['wall_s']) for n, t in parts.items()})
    diverged = [f'{n}: {t["diverged"]}' for n, t in parts.items() if 'diverged' in t]
    return dict(total, diverged=diverged[0]) if diverged else total


def train_one(method: str, seed: int, args: argparse.Namespace, data_root: Optional[Path]) -> Tuple[List[Path], dict]:
    """A supernet run of `method` and `seed` (train_pss.py); ([its record folder], timing)."""
    folder, timing = train(f'{method}-seed{seed}', run_command(method, seed, args), args, data_root)
    return [folder], timing


def run_entries(folders: Sequence[Path]) -> List[dict]:
    """The budget-table entries of a run's results.json; for the models trained alone, their entries together
    (set_budget's rule then serves, within a budget, the one with the best held-out top-1)."""
    return [e for folder in folders for e in json.loads((folder / 'results.json').read_text())['entries']]


def time_left(walls: Dict[str, List[float]], left: Sequence[str], jobs: int) -> Optional[float]:
    """Seconds left for the runs of methods `left`, `jobs` at a time, each taking its method's mean recorded wall
    time (the mean over every method where this one has none yet); None before any run was timed."""
    timed = [w for ws in walls.values() for w in ws]
    if not timed:
        return None
    return sum(np.mean(walls[m]) if walls.get(m) else np.mean(timed) for m in left) / jobs


def train_all(runs: Sequence[Tuple[str, int]], args: argparse.Namespace, data_root: Optional[Path]) -> Dict:
    """Train every (method, seed), `args.jobs` at a time, with a progress line (runs done, time left) after each.
    The models trained alone take their middle architectures from the PSS reference run of the first seed."""
    finished, walls = {}, {}
    start = time.perf_counter()
    space = space_of(PROTOCOLS[args.dataset])
    budgets = evaluation_budgets(space, args.num_pools)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {}
        for m, s in runs:
            if m == 'standalone':
                reference = next(f for f, run in futures.items() if run == ('pss', args.seeds[0]))

                def architectures(reference=reference):
                    folders, timing = reference.result()
                    if 'diverged' in timing:
                        fail(f'the PSS reference run of seed {args.seeds[0]} diverged: the models trained alone '
                             f'have no middle architectures to take')
                    return standalone_architectures(run_entries(folders), budgets, space)
                futures[pool.submit(train_standalone, s, args, data_root, architectures)] = (m, s)
            else:
                futures[pool.submit(train_one, m, s, args, data_root)] = (m, s)
        for future in as_completed(futures):
            run = futures[future]
            finished[run] = future.result()
            timing = finished[run][1]
            if not timing['reused']:
                walls.setdefault(run[0], []).append(timing['wall_s'])
            left = [m for m, s in runs if (m, s) not in finished]
            seconds = time_left(walls, left, args.jobs)
            eta = 'all done' if not left else ('time left unknown until a run is trained' if seconds is None
                                               else f'about {math.ceil(seconds / 60)} min left')
            what = 'reused' if timing['reused'] else f'{timing["wall_s"] / 60:.1f} min'
            what += ' (diverged: no accuracy)' if 'diverged' in timing else ''
            print(f'[{len(finished)}/{len(runs)} runs done, {(time.perf_counter() - start) / 60:.1f} min] '
                  f'{run[0]} seed {run[1]}: {what}; {eta}', flush=True)
    return finished


def recorded_runs(runs: Sequence[Tuple[str, int]], args: argparse.Namespace) -> Dict:
    """{(method, seed): (record folders, timing)} of the runs the records folder holds finished with this
    protocol's settings (a model trained alone: all of its architectures)."""
    space = space_of(PROTOCOLS[args.dataset])
    budgets = evaluation_budgets(space, args.num_pools)
    found = {}

    def record(name, cmd):
        done = finished_record(args.records / name)
        return done if done is not None and done['command'] == cmd else None

    reference = record(f'pss-seed{args.seeds[0]}', run_command('pss', args.seeds[0], args))
    for m, s in runs:
        if m != 'standalone':
            done = record(f'{m}-seed{s}', run_command(m, s, args))
            if done is not None:
                found[m, s] = ([args.records / f'{m}-seed{s}'], dict(done, reused=True))
            continue
        if reference is None or 'diverged' in reference:
            continue
        parts = {name: record(f'standalone-{name}-seed{s}', run_command(m, s, args, subnet)) for name, subnet in
                 standalone_architectures(run_entries([args.records / f'pss-seed{args.seeds[0]}']), budgets,
                                          space).items()}
        if all(parts.values()):
            found[m, s] = ([args.records / f'standalone-{n}-seed{s}' for n in parts], summed_timing(parts))
    return found


def finished_runs_table(rows: Sequence[dict], methods: Sequence[str]) -> str:
    """Markdown: top-1 of every finished run at each budget (one column per run), for a study with fewer than two
    seeds finished by every method; no means, no intervals."""
    runs = [(m, s) for m in methods for s in sorted({r['seed'] for r in rows if r['method'] == m})]
    budgets = sorted({r['budget_mflops'] for r in rows})
    index = {(r['method'], r['seed'], r['budget_mflops']): r['top1'] for r in rows}
    headers = ['budget (MMACs)'] + [f'{METHODS[m].label} s{s}' for m, s in runs]
    return format_table(headers, [[f'{b:.2f}'] + [f'{index[m, s, b]:.2f}' for m, s in runs] for b in budgets])


def collect(finished: Dict, runs: Sequence[Tuple[str, int]], args: argparse.Namespace):
    """(rows, diverged {run: why}, costs {method: [timing per seed]}, diagnostics {method: [csv rows per seed]})
    of the finished runs."""
    space = space_of(PROTOCOLS[args.dataset])
    budgets = evaluation_budgets(space, args.num_pools)
    rows, diverged, costs, diagnostics = [], {}, {}, {}
    for m, s in runs:
        folders, timing = finished[m, s]
        costs.setdefault(m, []).append(timing)
        if 'diverged' in timing:
            diverged[m, s] = timing['diverged']
            continue
        rows += rows_of_run(m, s, run_entries(folders), budgets, space.flops_span[0])
        path = folders[0] / 'pss_diagnostics.csv'
        if m != 'standalone' and path.is_file():
            with open(path, newline='') as f:
                diagnostics.setdefault(m, []).append(list(csv.DictReader(f)))
    return rows, diverged, costs, diagnostics


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = PROTOCOLS[args.dataset]
    title = f'pss_mobilenetv1 on {protocol.title}'
    stem = report_stem(args.dataset, args.methods)
    heading = f'# Accuracy vs FLOPs by middle-subnet rule on {protocol.title} (benchmarks/pareto.py)'
    costs = diagnostics = None
    if args.from_csv is not None:  # the machine that trained them is not this one: no machine lines
        rows, diverged = read_csv(args.from_csv), {}
        header = f'{heading}\n\n- re-reported from the per-seed rows of {args.from_csv.name} (no training)'
        print(header)
    else:
        runs = [(m, s) for s in args.seeds for m in args.methods]
        if 'standalone' in args.methods:  # the models trained alone wait for the run they take architectures from
            runs.remove(('pss', args.seeds[0]))
            runs.insert(0, ('pss', args.seeds[0]))
        settings = f'- protocol: {" ".join(protocol.args)} --epochs {args.epochs} {" ".join(args.extra)}'.rstrip()
        settings += f'; training subset {args.train_size or "all"}; seeds {args.seeds}'
        if args.report_only:
            finished = recorded_runs(runs, args)
            complete = [s for s in args.seeds if all((m, s) in finished for m in args.methods)]
            header = '\n'.join([heading, '', f'- reported from the records in {args.records} (no training): '
                                 f'{len(finished)} of {len(runs)} runs finished, seeds every method finished: '
                                 f'{complete or "none"}', settings])
            print(header)
            if len(complete) < 2:
                done = [r for r in runs if r in finished]
                rows = collect(finished, done, args)[0]
                print('\n## Finished runs: top-1 (%) at set_budget(B) (fewer than two seeds: no '
                      'means or intervals yet)\n\n' + (finished_runs_table(rows, args.methods) if rows else
                                                         '(none)'))
                return 0
            args.seeds, runs = complete, [r for r in runs if r[1] in complete]
        else:
            print(machine_lines(heading[2:]))
            data_root = None
            if args.dataset == 'fashion-mnist':  # first: a missing source leaves no output folder behind
                data_root = prepare_fashion_mnist(args.output, args.fashion_source, args.train_size,
                                                  protocol.quick_sizes[1] if args.quick else None)
            args.output.mkdir(parents=True, exist_ok=True)
            settings += f'; {args.jobs} runs at a time, one thread each, device {args.device}'
            print(settings + '\n', flush=True)
            start = time.perf_counter()
            finished = train_all(runs, args, data_root)
            wall = [finished[r][1]['wall_s'] for r in runs]
            header = '\n'.join([machine_lines(heading[2:]), settings,
                                f'- wall time: {(time.perf_counter() - start) / 60:.1f} min this invocation; '
                                f'{np.mean(wall) / 60:.1f} min per run (as recorded when each was trained)'])
        rows, diverged, costs, diagnostics = collect(finished, runs, args)
    body = report(rows, args.methods, args.seeds, title, diverged, costs=costs, diagnostics=diagnostics)
    text = '\n'.join([header, '', body])
    print('\n' + body)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / f'{stem}.md', text + '\n')
    if args.from_csv is not None:  # the rows and their plot exist already
        print(f'\n- wrote {args.results / stem}.md')
        return 0
    write_csv(args.results / f'{stem}.csv', rows)
    plot(args.results / f'{stem}.png', rows, args.methods, args.seeds,
         f'{title}, mean ± std over {len(args.seeds)} seeds', list(diverged))
    print(f'\n- wrote {args.results / stem}.csv, .png and .md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
