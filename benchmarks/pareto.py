"""Does prioritized sampling beat uniform sampling here? Accuracy vs FLOPs of PSS and two baselines on digits.

Three ways to pick the middle subnet of the sandwich step, everything else identical (same script, recipe,
epochs, steps, seeds, data split, buckets, pool sizes, finalisation; each step trains max + 1 middle + min):

- `prioritized`: PSS (pools drawn by softmax(score / T), p_random 1 -> 0.01).
- `uniform`: the paper's ablation, a random in-bucket subnet every step (p_random fixed at 1). Its pools only
  record scores, so finalisation has the same candidates to choose from.
- `global_width`: US-Net style, one global width level for every group (and a random resolution, as MutualNet);
  its pools record the global subnets seen per bucket.

Each (method, seed) is one `train_pss.py` run on the embedded digits data (`--sampler` below maps to
`--pss-sampler`); finalisation picks each pool's subnet on the held-out slice of the training data and the
reported accuracy is the validation top-1 of the subnet `set_budget(B)` selects, for B = each bucket's upper
edge. The area under the accuracy-vs-FLOPs curve (trapezoids over those budgets, divided by the FLOPs span) is
the mean top-1 over the range. Mean +- std over seeds; the per-seed difference to PSS shows whether a gap is
larger than seed noise (the methods share each seed's split and initial weights).

Protocol, chosen so that the small subnets are hard and the methods are not all saturated: MobileNetV1,
widths 0.25-1.0 of every group (the reference space is 0.75-1.0, where even the smallest digits subnet is
near the largest), inputs 16-32 px in steps of 4 (digits are 8x8, so 16 px still holds all the information; the
capacity is what shrinks), 0.29 .. 11.6 MMACs, 10 pools of 8, 30 epochs of SGD (about 570 steps).

Run from the repository root (one training process per core, one thread each):

    python benchmarks/pareto.py                      # 3 methods x 3 seeds: about 35 min on a 2-core CPU
    python benchmarks/pareto.py --quick              # 1 epoch of 5 big batches, 2 seeds (smoke test, ~1 min)

Writes `pareto.csv` (per method, seed and budget; plus mean/std rows) and `pareto.png` into `--output`.
"""
from common import machine_lines, format_table  # first: one thread per process

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from timm_pss import BudgetEntry, BudgetTable, Subnet
from timm_pss.files import atomic_path, atomic_write, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
METHODS = ('prioritized', 'uniform', 'global_width')
LABELS = {'prioritized': 'PSS', 'uniform': 'uniform in-bucket', 'global_width': 'US-Net global width'}
WIDTH_RANGE, RESOLUTIONS, NUM_POOLS = (0.25, 1.0), (16, 32, 4), 10
PROTOCOL = ['--model', 'pss_mobilenetv1', '--pss-width-range', *map(str, WIDTH_RANGE),
            '--pss-resolutions', *map(str, RESOLUTIONS), '--pss-num-pools', str(NUM_POOLS), '--pss-pool-size', '8']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--jobs', type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help='training runs at a time (one thread each)')
    parser.add_argument('--output', type=Path, default=Path('output/pareto'))
    parser.add_argument('--quick', action='store_true', help='1 epoch, 2 seeds: a smoke test, not a result')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: report the finished runs already in --output')
    args = parser.parse_args(argv)
    args.extra = []
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:2]
        args.extra = ['-b', '256', '--pss-calib-batches', '1', '--pss-top-k', '1']
    if len(set(args.seeds)) < 2:
        parser.error('--seeds needs at least two different seeds for a standard deviation')
    for name in ('epochs', 'jobs'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    return args


def train(method: str, seed: int, args: argparse.Namespace) -> Tuple[Path, float, float]:
    """One train_pss.py run; returns (its output folder, wall seconds, CPU seconds)."""
    name = f'{method}-seed{seed}'
    cmd = [sys.executable, str(ROOT / 'train_pss.py'), *PROTOCOL, '--pss-sampler', method, '--seed', str(seed),
           '--epochs', str(args.epochs), '--output', str(args.output), '--experiment', name, *args.extra]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1'}
    start = time.perf_counter()
    log = args.output / f'{name}.log'
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}')
    wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
    write_text_atomic(args.output / name / 'timing.json', json.dumps({'wall_s': wall, 'cpu_s': cpu}))
    return args.output / name, wall, cpu


def load_finished(method: str, seed: int, args: argparse.Namespace) -> Tuple[Path, float, float]:
    """A run train() finished earlier: (its folder, wall seconds, CPU seconds) from its timing file."""
    run_dir = args.output / f'{method}-seed{seed}'
    timing = run_dir / 'timing.json'
    if not (run_dir / 'results.json').exists() or not timing.exists():
        raise SystemExit(f'--report-only: {run_dir} holds no finished run (results.json and timing.json)')
    with open(timing) as f:
        t = json.load(f)
    return run_dir, t['wall_s'], t['cpu_s']


def accuracy_at_budgets(entries: Sequence[dict], budgets: np.ndarray) -> np.ndarray:
    """Validation top-1 of the entry `set_budget(B)` picks for each B (timm_pss.BudgetTable.select's rule)."""
    table = BudgetTable(['g'], [BudgetEntry(int(e['flops']), Subnet(1, (1,)), {
        k: float(e[k]) for k in ('heldout_top1', 'top1') if e.get(k) is not None}) for e in entries])
    return np.array([table.select(float(b))[1].metrics['top1'] for b in budgets])


def normalised_auc(budgets: np.ndarray, accuracy: np.ndarray) -> float:
    """Area under accuracy vs FLOPs divided by the FLOPs span: the mean accuracy over the range."""
    return float(np.trapezoid(accuracy, budgets) / (budgets[-1] - budgets[0]))


def evaluation_budgets() -> np.ndarray:
    """The min subnet's FLOPs, then each pool's upper edge (clipped to the max subnet): where set_budget is read."""
    import timm
    from timm_pss.pss import bucket_targets
    space = timm.create_model('pss_mobilenetv1', num_classes=10, width_range=WIDTH_RANGE,
                              resolution_range=RESOLUTIONS).space
    targets, step = bucket_targets(space, num_pools=NUM_POOLS)
    f_min, f_max = space.flops_span
    return np.clip(np.concatenate([[f_min], targets + step / 2]), f_min, f_max)


def mean_std(values: np.ndarray) -> str:
    return f'{values.mean():.2f} ± {values.std(ddof=1):.2f}'


def report(results: Dict[Tuple[str, int], np.ndarray], budgets: np.ndarray, aucs: Dict[Tuple[str, int], float],
           times: Dict[Tuple[str, int], float], args: argparse.Namespace) -> str:
    methods, seeds = args.methods, args.seeds
    headers = ['budget (MMACs)'] + [LABELS[m] for m in methods]
    base = methods[0]
    others = [m for m in methods if m != base]
    headers += [f'{LABELS[base]} − {LABELS[m]}' for m in others]
    rows = []
    for i, b in enumerate(budgets):
        acc = {m: np.array([results[m, s][i] for s in seeds]) for m in methods}
        rows.append([f'{b / 1e6:.2f}'] + [mean_std(acc[m]) for m in methods]
                    + [mean_std(acc[base] - acc[m]) for m in others])
    auc = {m: np.array([aucs[m, s] for s in seeds]) for m in methods}
    rows.append(['AUC (mean top-1)'] + [mean_std(auc[m]) for m in methods]
                + [mean_std(auc[base] - auc[m]) for m in others])
    for label, k in (('wall min / run', 0), ('CPU min / run', 1)):
        minutes = {m: [times[m, s][k] for s in seeds] for m in methods}
        rows.append([label] + [f'{np.mean(minutes[m]) / 60:.1f}' if None not in minutes[m] else 'n/a'
                               for m in methods] + ['' for _ in others])
    wins = {m: int(sum(np.mean([results[base, s][i] for s in seeds]) > np.mean([results[m, s][i] for s in seeds])
                       for i in range(len(budgets)))) for m in others}
    lines = [format_table(headers, rows), '']
    for m in others:
        lines.append(f'- {LABELS[base]} above {LABELS[m]} at {wins[m]}/{len(budgets)} budgets (mean over seeds)')
    return '\n'.join(lines)


def write_csv(path: Path, results, budgets: np.ndarray, aucs, args: argparse.Namespace) -> None:
    with atomic_write(path, newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['method', 'seed', 'budget_flops', 'top1'])
        for m in args.methods:
            for s in args.seeds:
                for b, a in zip(budgets, results[m, s]):
                    writer.writerow([m, s, int(b), f'{a:.4f}'])
                writer.writerow([m, s, 'auc', f'{aucs[m, s]:.4f}'])
            stacked = np.stack([results[m, s] for s in args.seeds])
            for stat, values in (('mean', stacked.mean(0)), ('std', stacked.std(0, ddof=1))):
                for b, a in zip(budgets, values):
                    writer.writerow([m, stat, int(b), f'{a:.4f}'])


def plot(path: Path, results, budgets: np.ndarray, args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = budgets / 1e6
    for m in args.methods:
        stacked = np.stack([results[m, s] for s in args.seeds])
        mean, std = stacked.mean(0), stacked.std(0, ddof=1)
        ax.plot(x, mean, 'o-', ms=3, label=LABELS[m])
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel('budget (MMACs): set_budget(B)')
    ax.set_ylabel('validation top-1 (%)')
    ax.set_title(f'pss_mobilenetv1 on digits, {args.epochs} epochs, mean ± std over {len(args.seeds)} seeds')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format='png')
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    print(machine_lines('PSS vs uniform sampling: accuracy vs FLOPs on digits (benchmarks/pareto.py)'))
    print(f'- protocol: {" ".join(PROTOCOL)} --epochs {args.epochs}; seeds {args.seeds}; {args.jobs} runs at a '
          f'time, one thread each\n', flush=True)
    runs = [(m, s) for s in args.seeds for m in args.methods]
    start = time.perf_counter()
    if args.report_only:
        finished = {r: load_finished(*r, args) for r in runs}
    else:
        taken = [str(args.output / f'{m}-seed{s}') for m, s in runs if (args.output / f'{m}-seed{s}').exists()]
        if taken:  # train_pss.py would write to NAME-1 instead, and the report reads NAME
            raise SystemExit(f'{taken[0]} exists from an earlier run; use another --output, or --report-only')
        with ThreadPoolExecutor(args.jobs) as pool:
            finished = dict(zip(runs, pool.map(lambda r: train(*r, args), runs)))
    results, aucs, times = {}, {}, {}
    budgets = evaluation_budgets()
    for run, (run_dir, seconds, cpu_seconds) in finished.items():
        with open(run_dir / 'results.json') as f:
            entries = json.load(f)['entries']
        results[run] = accuracy_at_budgets(entries, budgets)
        aucs[run] = normalised_auc(budgets, results[run])
        times[run] = seconds, cpu_seconds
    print(report(results, budgets, aucs, times, args))
    write_csv(args.output / 'pareto.csv', results, budgets, aucs, args)
    plot(args.output / 'pareto.png', results, budgets, args)
    cpu = [t[1] for t in times.values()]
    cpu = f'{sum(cpu) / 60:.1f} min' if None not in cpu else 'n/a'
    total = 'n/a (--report-only)' if args.report_only else f'{(time.perf_counter() - start) / 60:.1f} min'
    print(f'\n- total wall time {total}, CPU time of the runs {cpu}; wrote {args.output / "pareto.csv"} '
          f'and {args.output / "pareto.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
