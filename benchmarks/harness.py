"""What every benchmark shares: one thread (imported first), the command line (--models, --threads, --quick and its
limits), the header (machine, versions, settings), markdown tables and yes/no cells, timing, and the run of the
measured parts with the exit status, and the statistics of interleaved timings (per-round ratios, their
quartiles, the sign test's interval of a median), and the statistics of paired seeds (t-intervals of paired
differences, the mean accuracy over a FLOPs span)."""
import one_thread  # noqa: F401  (first: one thread for BLAS and OpenMP before numpy and torch load)

import argparse
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import timm
import torch

import timm_pss
from timm_pss.latency import cpu_name

DEFAULT_MODELS = ('pss_mobilenetv1', 'pss_mobilenetv2', 'pss_resnet50')

# (torch threads or None to leave them, measure(model name) -> result, report(results) -> checks passed)
Part = Tuple[Optional[int], Callable[[str], dict], Callable[[List[dict]], bool]]


# ---------------------------------------------------------------------------------------------- command line

def benchmark_parser(description: str, default_models=DEFAULT_MODELS) -> argparse.ArgumentParser:
    """An argparse parser with the options every benchmark has: --models, --threads, --quick."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--models', nargs='+', default=list(default_models),
                        help='supernets to benchmark (space or comma separated)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads for the timed model runs')
    parser.add_argument('--quick', action='store_true', help='tiny settings, for a smoke test')
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv=None, positive: Sequence[str] = (),
                         quick_limits: Mapping[str, int] = None) -> argparse.Namespace:
    """Parse, split comma-separated --models, refuse names that are not timm_pss supernets and values of the
    `positive` options (and --threads) below 1 (exit 2); with --quick, cap each option of `quick_limits` at its
    limit (every element of a list option)."""
    args = parser.parse_args(argv)
    args.models = [m for item in args.models for m in item.split(',') if m]
    unknown = [m for m in args.models if m not in timm.list_models('pss_*')]
    if unknown:
        parser.error(f'unknown models {unknown}; available: {timm.list_models("pss_*")}')
    for name in (*positive, 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.quick:
        for name, limit in (quick_limits or {}).items():
            value = getattr(args, name)
            setattr(args, name, [min(v, limit) for v in value] if isinstance(value, list) else min(value, limit))
    return args


# ---------------------------------------------------------------------------------------------- header and cells

def machine_lines(title: str) -> str:
    """The header every benchmark prints: title, machine, library versions."""
    return '\n'.join([
        f'# {title}',
        '',
        f'- machine: {cpu_name()} ({platform.machine()}), {os.cpu_count()} logical CPUs, {platform.system()}',
        f'- python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, '
        f'numpy {np.__version__}, timm_pss {timm_pss.__version__}',
    ])


def print_header(title: str, facts: Mapping[str, str]) -> None:
    """`machine_lines(title)`, then one `- name: text` line per fact (threads, settings, ...), then a blank line."""
    print(machine_lines(title))
    for name, text in facts.items():
        print(f'- {name}: {text}')
    print()


def quick_note(args: argparse.Namespace) -> str:
    """' (--quick)' at the end of a settings line when the tiny settings are in force."""
    return ' (--quick)' if args.quick else ''


def threads_text(n: int) -> str:
    return f'{n} thread{"s" if n > 1 else ""}'


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with padded columns; columns whose cells all start with a digit are right-aligned."""
    cols = list(zip(headers, *rows))
    widths = [max(len(c) for c in col) for col in cols]
    right = [all(c[:1].isdigit() for c in col[1:]) for col in cols]

    def line(cells):
        return '| ' + ' | '.join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + ' |'

    rule = '|' + '|'.join('-' * (w + 1) + ':' if r else '-' * (w + 2) for w, r in zip(widths, right)) + '|'
    return '\n'.join([line(headers), rule] + [line(r) for r in rows])


def yes_no(ok: bool) -> str:
    return 'yes' if ok else 'NO'


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------- timing and running

def best_time(fn: Callable[[], object], repeats: int) -> Tuple[float, object]:
    """Shortest wall time (s) of `repeats` calls of `fn`, and the last call's result."""
    best, out = float('inf'), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_parts(models: Sequence[str], parts: Sequence[Part], failure: str) -> int:
    """A benchmark's measurements: each part in turn sets torch's threads, measures every model and prints its
    report. Exit status 0 when every report's checks passed, else 1 with `failure` on stderr."""
    ok = True
    for threads, measure, report in parts:
        if threads is not None:
            torch.set_num_threads(threads)
        ok = report([measure(name) for name in models]) and ok
    if not ok:
        print(failure, file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- interleaved timing

def interleaved_times_ms(fns: Sequence[Callable[[], object]], repeats: int, warmup: int) -> List[List[float]]:
    """Wall times (ms) of each fn per round; each round calls every fn once, so drift hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(1e3 * (time.perf_counter() - t0))
    return times


def interleaved_median_ms(fns: Sequence[Callable[[], object]], repeats: int, warmup: int) -> List[float]:
    """Median wall time (ms) of each fn, timed interleaved (`interleaved_times_ms`)."""
    return [statistics.median(ts) for ts in interleaved_times_ms(fns, repeats, warmup)]


def per_round_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> List[float]:
    """The ratio of two interleaved timings in each round (a slow round slows both, so the ratio keeps steady)."""
    return [a / b for a, b in zip(numerators, denominators)]


def ratio_quartiles(numerators: Sequence[float], denominators: Sequence[float]) -> List[float]:
    """Quartiles (q1, median, q3) of the per-round ratios of two interleaved timings: the ratio with its spread."""
    ratios = per_round_ratios(numerators, denominators)
    if len(ratios) < 2:
        return ratios * 3
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return [q1, median, q3]


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Optional[Tuple[float, float]]:
    """Distribution-free interval for the median of `values` (the sign test's): the order statistics x(k) and
    x(n+1-k), 1-based, with the largest k whose coverage P(k <= B <= n-k), B ~ Binomial(n, 1/2), is at least
    `confidence`; None when even (min, max) covers less (fewer than 6 values at 95 %)."""
    x, n = sorted(values), len(values)
    best = None
    for k in range(1, n // 2 + 1):
        if sum(math.comb(n, j) for j in range(k, n - k + 1)) / 2 ** n < confidence:
            break
        best = (x[k - 1], x[n - k])
    return best


def percent(p: float) -> str:
    """A fraction as a percentage cell: 0.25 -> '25%'."""
    return f'{100 * p:g}%'


def quartile_cell(q: Sequence[float]) -> str:
    """(q1, median, q3) as 'median [q1, q3]'."""
    return f'{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]'


def interval_cell(interval) -> str:
    """A `median_interval` as '[low, high]', or 'n/a' (too few rounds)."""
    return 'n/a' if interval is None else f'[{interval[0]:.3f}, {interval[1]:.3f}]'


# ---------------------------------------------------------------------------------------------- paired seeds

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
