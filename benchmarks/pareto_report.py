"""The report of benchmarks/pareto.py: its per-seed CSV (and the older digits format), the accuracy grid, the
markdown sections (per-method means, paired differences, supernet − trained alone, training cost, pool diagnostics)
and the plot."""
import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from harness import format_interval, format_table, mean_std, normalised_auc, paired_difference
from pareto_protocol import LEGACY_METHOD_NAMES, METHODS, fail, standalone_budget_indices
from timm_pss.reporting import AccuracyCurve, plot_accuracy_vs_flops, write_csv as write_csv_rows


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


def finished_runs_table(rows: Sequence[dict], methods: Sequence[str]) -> str:
    """Markdown: top-1 of every finished run at each budget (one column per run), for a study with fewer than two
    seeds finished by every method; no means, no intervals."""
    runs = [(m, s) for m in methods for s in sorted({r['seed'] for r in rows if r['method'] == m})]
    budgets = sorted({r['budget_mflops'] for r in rows})
    index = {(r['method'], r['seed'], r['budget_mflops']): r['top1'] for r in rows}
    headers = ['budget (MMACs)'] + [f'{METHODS[m].label} s{s}' for m, s in runs]
    return format_table(headers, [[f'{b:.2f}'] + [f'{index[m, s, b]:.2f}' for m, s in runs] for b in budgets])
