"""Result files and accuracy-vs-FLOPs plots, as train_pss.py and the benchmarks write them.

Every file goes through `timm_pss.files` (a temporary in the same folder, fsynced and renamed), so a run killed
mid-write leaves the old file or the new one, never a part. matplotlib is imported only when a plot is drawn.
"""
from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from .files import atomic_path, atomic_write
from .supernet import find_supernet

__all__ = ['AccuracyCurve', 'format_results', 'plot_accuracy_vs_flops', 'plot_results', 'served_curve', 'write_csv',
           'write_results', 'write_summary_row']


def write_csv(path: Path, rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None,
              lineterminator: str = '\r\n') -> None:
    """`rows` as a CSV file with a header line, written atomically. Columns: `columns`, else the first row's keys;
    a cell a row lacks, or holds None, is left empty. `lineterminator` is the csv module's (default '\\r\\n')."""
    with atomic_write(path, newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0] if columns is None else columns), restval='',
                                extrasaction='ignore', lineterminator=lineterminator)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def write_results(output_dir: Path, model, space) -> List[OrderedDict]:
    """`results.csv` and `results.json` in `output_dir`: one row per budget-table entry of `model` (FLOPs, the
    budget string that `set_budget` serves it for, empty where no budget does, resolution, widths, validation
    top-1 / top-5, held-out top-1, pool score); returns the rows."""
    rows = []
    table = find_supernet(model).budget_table
    for i, (entry, budget) in enumerate(zip(table, table.serving_budgets())):
        m = entry.metrics
        rows.append(OrderedDict(
            entry=i, flops=entry.flops, mflops=round(entry.flops / 1e6, 3), budget=budget or '',
            resolution=entry.subnet.resolution, widths=' '.join(map(str, entry.subnet.widths)), top1=m.get('top1'),
            top5=m.get('top5'), heldout_top1=m.get('heldout_top1'), score=m.get('score')))
    write_csv(output_dir / 'results.csv', rows)
    with atomic_write(output_dir / 'results.json') as f:
        json.dump({'group_names': list(space.group_names), 'entries': rows}, f, indent=2)
    return rows


def write_summary_row(path: Path, epoch: int, train_metrics: dict, eval_metrics: dict, lr: float) -> None:
    """timm's summary.csv row for `epoch` (epoch, train_*, eval_*, lr), written by rewriting the file atomically;
    rows of this epoch or later (from a run killed after writing them) are replaced."""
    row = OrderedDict(epoch=epoch)
    row.update((f'train_{k}', v) for k, v in train_metrics.items())
    row.update((f'eval_{k}', v) for k, v in eval_metrics.items())
    row['lr'] = lr
    kept = []
    if path.is_file():
        with open(path, newline='') as f:
            kept = [r for r in csv.DictReader(f) if r.get('epoch') not in (None, '') and int(r['epoch']) < epoch]
    fields = dict.fromkeys([key for r in kept for key in r] + list(row))  # epochs without evaluation have fewer
    write_csv(path, kept + [row], columns=list(fields))


@dataclass(frozen=True)
class AccuracyCurve:
    """One line of an accuracy-vs-FLOPs plot: top-1 (%) at MFLOPs (MACs), with an optional ±`std` band."""
    label: str
    mflops: Sequence[float]
    top1: Sequence[float]
    std: Optional[Sequence[float]] = None


def plot_accuracy_vs_flops(path: Path, curves: Sequence[AccuracyCurve], title: str, xlabel: str = 'MFLOPs (MACs)',
                           figsize: Tuple[float, float] = (6, 4), marker_size: Optional[float] = None,
                           legend_fontsize: Optional[float] = None) -> None:
    """Top-1 against FLOPs, one line (and band) per curve, saved atomically in the format of `path`'s suffix."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    marker = {} if marker_size is None else dict(ms=marker_size)
    for curve in curves:
        ax.plot(curve.mflops, curve.top1, 'o-', label=curve.label, **marker)
        if curve.std is not None:
            top1, std = np.asarray(curve.top1), np.asarray(curve.std)
            ax.fill_between(curve.mflops, top1 - std, top1 + std, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(**({} if legend_fontsize is None else dict(fontsize=legend_fontsize)))
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format=path.suffix.lstrip('.') or 'png')
    plt.close(fig)


def format_results(rows: Sequence[Mapping]) -> str:
    """`write_results` rows as the text table train_pss.py prints: each entry with the budget that serves it."""
    def number(value, digits=2):
        return '-' if value is None else f'{value:.{digits}f}'

    head = ['entry', 'set_budget', 'MMACs', 'res', 'top-1', 'top-5', 'held-out top-1', 'widths']
    body = [[str(r['entry']), r['budget'] or 'not served', f"{r['flops'] / 1e6:.3f}", str(r['resolution']),
             number(r['top1']), number(r['top5']), number(r['heldout_top1']), r['widths']] for r in rows]
    sizes = [max(len(row[c]) for row in [head] + body) for c in range(len(head))]
    lines = ['  '.join(v.rjust(w) if c < len(head) - 1 else v for c, (v, w) in enumerate(zip(row, sizes)))
             for row in [head] + body]
    if any(not r['budget'] for r in rows):
        lines.append('not served: no budget selects the entry; a cheaper one scores at least as well on held-out data')
    return '\n'.join(lines)


def served_curve(rows: Sequence[Mapping], metric: str = 'top1') -> Tuple[List[float], List[float]]:
    """The step curve that `set_budget` delivers: (MFLOPs, `metric`) at each served entry's FLOPs, held up to
    the next served entry (then the last entry's FLOPs)."""
    served = [r for r in rows if r['budget']]
    x = [r['mflops'] for r in served] + ([max(r['mflops'] for r in rows)] if served else [])
    y = [r[metric] for r in served] + ([served[-1][metric]] if served else [])
    return x, y


def plot_results(rows: Sequence[Mapping], path: Path, title: str, val_images: Optional[int] = None) -> None:
    """train_pss.py's `accuracy_vs_flops.png`: the accuracy `set_budget` serves at each budget (a step curve: an
    entry holds until a better one fits), validation top-1 beside held-out top-1, entries no budget serves faded."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for metric, label, style in (('top1', 'validation top-1', '-'), ('heldout_top1', 'held-out top-1', '--')):
        if any(r[metric] is None for r in rows):
            continue
        x, y = served_curve(rows, metric)
        line, = ax.step(x, y, style, where='post', label=f'{label} that set_budget serves')
        ax.plot([r['mflops'] for r in rows if r['budget']], [r[metric] for r in rows if r['budget']], 'o',
                color=line.get_color())
        faded = [r for r in rows if not r['budget']]
        if faded:
            ax.plot([r['mflops'] for r in faded], [r[metric] for r in faded], 'o', color=line.get_color(), alpha=0.3,
                    label=f'{label}, entries never served')
    note = f'\n{val_images} validation images: one image is {100 / val_images:.2f} points' if val_images else ''
    ax.set_xlabel('budget: MFLOPs (MACs)' + note)
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format=path.suffix.lstrip('.') or 'png')
    plt.close(fig)
