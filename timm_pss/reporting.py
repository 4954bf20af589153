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

__all__ = ['AccuracyCurve', 'plot_accuracy_vs_flops', 'plot_results', 'write_csv', 'write_results',
           'write_summary_row']


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
    """`results.csv` and `results.json` in `output_dir`: one row per budget-table entry of `model` (FLOPs,
    resolution, widths, validation top-1 / top-5, held-out top-1, pool score); returns the rows."""
    rows = []
    for i, entry in enumerate(find_supernet(model).budget_table):
        m = entry.metrics
        rows.append(OrderedDict(
            entry=i, flops=entry.flops, mflops=round(entry.flops / 1e6, 3), resolution=entry.subnet.resolution,
            widths=' '.join(map(str, entry.subnet.widths)), top1=m.get('top1'), top5=m.get('top5'),
            heldout_top1=m.get('heldout_top1'), score=m.get('score')))
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


def plot_results(rows: Sequence[Mapping], path: Path, title: str) -> None:
    """train_pss.py's `accuracy_vs_flops.png`: the budget table's validation top-1 against its FLOPs."""
    plot_accuracy_vs_flops(path, [AccuracyCurve('budget table (val top-1)', [r['mflops'] for r in rows],
                                                [r['top1'] for r in rows])], title)
