"""What the benchmarks share: one-thread set-up, the machine header, markdown tables, yes/no checks."""
import os

# One thread for numpy's BLAS and torch's OpenMP; importing this module first sets it before either is imported.
for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '1')

import argparse  # noqa: E402
import platform  # noqa: E402
from typing import Sequence  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import timm_pss  # noqa: E402
from timm_pss.latency import cpu_name  # noqa: E402

DEFAULT_MODELS = ('pss_mobilenetv1', 'pss_mobilenetv2', 'pss_resnet50')


def machine_lines(title: str) -> str:
    """The header every benchmark prints: title, machine, library versions."""
    return '\n'.join([
        f'# {title}',
        '',
        f'- machine: {cpu_name()} ({platform.machine()}), {os.cpu_count()} logical CPUs, {platform.system()}',
        f'- python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, '
        f'numpy {np.__version__}, timm_pss {timm_pss.__version__}',
    ])


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


def benchmark_parser(description: str, default_models=DEFAULT_MODELS) -> argparse.ArgumentParser:
    """An argparse parser with the options every benchmark has: --models, --threads, --quick."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--models', nargs='+', default=list(default_models),
                        help='supernets to benchmark (space or comma separated)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads for the timed model runs')
    parser.add_argument('--quick', action='store_true', help='tiny settings, for a smoke test')
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv=None,
                         positive: Sequence[str] = ()) -> argparse.Namespace:
    """Parse, split comma-separated --models, refuse names that are not timm_pss supernets and values of the
    `positive` options (and --threads) below 1 (exit 2)."""
    args = parser.parse_args(argv)
    args.models = [m for item in args.models for m in item.split(',') if m]
    unknown = [m for m in args.models if m not in timm.list_models('pss_*')]
    if unknown:
        parser.error(f'unknown models {unknown}; available: {timm.list_models("pss_*")}')
    for name in (*positive, 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    return args
