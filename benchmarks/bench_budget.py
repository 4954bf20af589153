"""Benchmark switching to a FLOPs budget: `model.set_budget(flops)` against recalibrating BN from data.

What it measures, per model (`pss_mobilenetv1`, `pss_mobilenetv2`, `pss_resnet50` by default), in eval mode:

0. Setup, not a result: a budget table of about 10 subnets spread over the FLOPs range (the min and max subnets,
   plus `space.sample(rng=i, flops_range=bucket_i)` in evenly spaced FLOPs buckets between them), filled with
   `timm_pss.fill_budget_table` on a fixed, non-shuffled DataLoader of random 224px images (a couple of small
   batches, `--fill-batches` x `--fill-batch-size`). That stores per-entry BN statistics in the model.
1. Switch time at three budgets, 25%, 50% and 90% of the way from the min to the max subnet's FLOPs:
     a. ours: `model.set_budget(budget)`, which picks the entry with the highest FLOPs <= budget and uses its
        stored BN statistics (no data, no forward pass). Called `--switch-calls` times per budget, cycling
        through the three budgets so every call really switches; median wall time (`time.perf_counter`) in ms.
     b. the baseline, the reference implementation's way: `model.set_subnet(entry.subnet)` followed by
        `timm_pss.calibrate_bn(model, loader, num_batches=--calib-batches)` with a DataLoader of
        `--calib-batch-size` random 224px images (the model resizes them to the subnet's resolution), which is
        what the reference does before every evaluation. Median of `--calib-repeats` runs, in ms.
   Reported with the speed-up, baseline / ours.
2. Correctness, per budget: after `set_budget`, the eval logits on a fixed input equal (`torch.allclose`,
   atol 1e-5) those after `set_subnet(entry.subnet)` + `calibrate_bn` on the same loader and batch count that
   filled the table; the chosen entry is the one with the highest FLOPs <= budget; and `set_budget` ran no
   forward pass (a forward pre-hook on the model counts calls, over the check and all timed calls: must be 0).
   For contrast, the table also shows how far the logits are off with the model's shared BN statistics (which
   `fill_budget_table` leaves as they were: here, a freshly built model's) instead of the entry's own.

Run from the repository root:

    python benchmarks/bench_budget.py                      # full settings (about 8 min on a 2-core VM)
    python benchmarks/bench_budget.py --quick              # tiny settings, about 10 s (smoke test)
    python benchmarks/bench_budget.py --models pss_mobilenetv2 --calib-batch-size 64 --threads 4

The tables are markdown, ready to paste into the README. The exit status is 1 if any correctness check fails.
"""
from harness import (  # first: one thread
    benchmark_parser, format_table, max_abs_diff, parse_benchmark_args, print_header, quick_note, run_parts,
    threads_text, yes_no,
)

import argparse
import statistics
import sys
import time
from functools import partial
from typing import List, Sequence

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from timm_pss import Subnet

BUDGET_FRACTIONS = (0.25, 0.5, 0.9)  # of the way from the min to the max subnet's FLOPs
IMAGE_SIZE = 224
ATOL = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split('\n', 1)[0])
    parser.add_argument('--entries', type=int, default=10,
                        help='subnets in the budget table (min, max and one per FLOPs bucket between them)')
    parser.add_argument('--fill-batches', type=int, default=2,
                        help='calibration batches per entry when filling the table (and in the check)')
    parser.add_argument('--fill-batch-size', type=int, default=16, help='images per table-filling batch')
    parser.add_argument('--switch-calls', type=int, default=1000,
                        help='timed set_budget calls per budget (the three budgets interleaved)')
    parser.add_argument('--calib-batches', type=int, default=8,
                        help='calibrate_bn batches of the baseline (num_batches)')
    parser.add_argument('--calib-batch-size', type=int, default=32, help='images per baseline calibration batch')
    parser.add_argument('--calib-repeats', type=int, default=3, help='timed baseline runs per budget (median)')
    args = parse_benchmark_args(parser, argv, positive=(
        'fill_batches', 'fill_batch_size', 'switch_calls', 'calib_batches', 'calib_batch_size', 'calib_repeats'),
        quick_limits=dict(entries=4, fill_batches=1, fill_batch_size=2, switch_calls=100, calib_batches=2,
                          calib_batch_size=4, calib_repeats=1))
    if args.entries < 3:
        parser.error('--entries must be at least 3 (min, max and one sampled subnet)')
    return args


# ---------------------------------------------------------------------------------------------- reporting

def settings_line(args: argparse.Namespace) -> str:
    """Table size, calibration images and timing repeats, one line for the header (here and in speed.py)."""
    return (f'table of {args.entries} subnets filled with {args.fill_batches} x {args.fill_batch_size} '
            f'images; set_budget median of {args.switch_calls} calls per budget; baseline calibrate_bn on '
            f'{args.calib_batches} x {args.calib_batch_size} images at {IMAGE_SIZE}px, median of '
            f'{args.calib_repeats}{quick_note(args)}')


def format_ms(ms: float) -> str:
    return f'{ms:.4f}' if ms < 1 else f'{ms:,.1f}'


# ---------------------------------------------------------------------------------------------- setup

def image_loader(num_batches: int, batch_size: int, seed: int) -> DataLoader:
    """A fixed, non-shuffled DataLoader of `num_batches` batches of random 224px images."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(num_batches * batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    return DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=False, num_workers=0)


def table_subnets(space, n: int) -> List[Subnet]:
    """The min and max subnets and one random subnet in each of n - 2 evenly spaced FLOPs buckets between them."""
    lo, hi = space.flops(space.min_subnet()), space.flops(space.max_subnet())
    edges = np.linspace(lo, hi, n - 1)
    sampled = [space.sample(rng=i, flops_range=(edges[i], edges[i + 1])) for i in range(n - 2)]
    return [space.min_subnet()] + sampled + [space.max_subnet()]


class ForwardCounter:
    """Counts forward calls of a module with a forward pre-hook."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.count += 1

    def remove(self) -> None:
        self.handle.remove()


# ---------------------------------------------------------------------------------------------- benchmark

@torch.no_grad()
def bench_budget(name: str, args: argparse.Namespace) -> dict:
    """Fill a budget table, check set_budget against recalibration, then time both at three budgets."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000).eval()
    space = model.space
    f_min, f_max = space.flops(space.min_subnet()), space.flops(space.max_subnet())

    # 0. setup: the budget table, calibrated on a fixed loader (the one the check recalibrates with).
    fill_loader = image_loader(args.fill_batches, args.fill_batch_size, seed=1)
    t0 = time.perf_counter()
    table = timm_pss.fill_budget_table(model, table_subnets(space, args.entries), fill_loader,
                                       num_batches=args.fill_batches)
    fill_s = time.perf_counter() - t0
    model.eval()
    budgets = [int(round(f_min + p * (f_max - f_min))) for p in BUDGET_FRACTIONS]
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    counter = ForwardCounter(model)
    rows = [dict(fraction=p, budget=b) for p, b in zip(BUDGET_FRACTIONS, budgets)]

    # 2a. set_budget outputs, and the outputs with the model's shared BN statistics instead of the entry's.
    for row in rows:
        before = counter.count
        entry = model.set_budget(row['budget'])
        row['forwards_ours'] = counter.count - before
        row['entry'] = entry
        row['right_entry'] = (entry.flops == max(e.flops for e in table if e.flops <= row['budget'])
                              and model.active_budget_index is not None)
        row['y_ours'] = model(x)
        model.set_subnet(entry.subnet)
        row['diff_shared'] = max_abs_diff(model(x), row['y_ours'])

    # 2b. the reference: set_subnet + calibrate_bn on the table's calibration data.
    for row in rows:
        model.set_subnet(row['entry'].subnet)
        timm_pss.calibrate_bn(model, fill_loader, num_batches=args.fill_batches)
        y_ref = model(x)
        row['equal'] = torch.allclose(row['y_ours'], y_ref, atol=ATOL)
        row['diff'] = max_abs_diff(row['y_ours'], y_ref)
        del row['y_ours']

    # 1a. ours: set_budget, cycling through the budgets so every call switches entry.
    times = [[] for _ in rows]
    for i in range(10):  # warm-up
        model.set_budget(budgets[i % len(budgets)])
    before = counter.count
    for i in range(args.switch_calls * len(rows)):
        k = i % len(rows)
        t0 = time.perf_counter()
        model.set_budget(budgets[k])
        times[k].append(time.perf_counter() - t0)
    timed_forwards = counter.count - before
    for row, ts in zip(rows, times):
        row['ms_ours'] = 1e3 * statistics.median(ts)
        row['forwards_ours'] += timed_forwards

    # 1b. the baseline: set_subnet + calibrate_bn on --calib-batches x --calib-batch-size images.
    calib_loader = image_loader(args.calib_batches, args.calib_batch_size, seed=3)
    for row in rows:
        ts = []
        before = counter.count
        for _ in range(args.calib_repeats):
            t0 = time.perf_counter()
            model.set_subnet(row['entry'].subnet)
            timm_pss.calibrate_bn(model, calib_loader, num_batches=args.calib_batches)
            ts.append(time.perf_counter() - t0)
        row['ms_base'] = 1e3 * statistics.median(ts)
        row['forwards_base'] = (counter.count - before) / args.calib_repeats
    counter.remove()
    return dict(model=name, f_min=f_min, f_max=f_max, entries=len(table), fill_s=fill_s, rows=rows)


def report(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Switching to a FLOPs budget: set_budget vs set_subnet + calibrate_bn '
          f'({threads_text(args.threads)}, median ms)')
    print()
    headers = ['model', 'budget', 'MMACs', 'entry MMACs', 'res', 'set_budget', 'set_subnet + calibrate_bn',
               'speed-up', 'forwards (ours / baseline)', 'right entry', 'outputs == recalibrated',
               'shared-stats diff']
    rows = []
    for r in results:
        for row in r['rows']:
            entry = row['entry']
            rows.append([
                r['model'], f'{100 * row["fraction"]:.0f}%', f'{row["budget"] / 1e6:.1f}', f'{entry.flops / 1e6:.1f}',
                str(entry.subnet.resolution), format_ms(row['ms_ours']), format_ms(row['ms_base']),
                f'{row["ms_base"] / row["ms_ours"]:,.0f}x',
                f'{row["forwards_ours"]} / {row["forwards_base"]:g}', yes_no(row['right_entry']),
                f'{yes_no(row["equal"])} ({row["diff"]:.1e})', f'{row["diff_shared"]:.1e}',
            ])
    print(format_table(headers, rows))
    print()
    print(f'Budget: 25/50/90% of the way from the min to the max subnet\'s FLOPs (MACs); entry: the table entry '
          f'set_budget chose (highest FLOPs <= budget), at resolution res. set_budget: median of '
          f'{args.switch_calls} calls per budget, budgets interleaved. Baseline: set_subnet + calibrate_bn on '
          f'{args.calib_batches} batches of {args.calib_batch_size} random {IMAGE_SIZE}px images, median of '
          f'{args.calib_repeats}. Speed-up: baseline / set_budget.')
    print('Forwards: model forward calls per switch (a forward pre-hook); set_budget\'s count covers the check '
          'and all timed calls and must be 0.')
    print(f'Equality: logits on a fixed input after set_budget vs after set_subnet + calibrate_bn on the '
          f'{args.fill_batches} x {args.fill_batch_size} images that filled the table, torch.allclose(atol={ATOL:g}), '
          f'max |difference| in brackets. Shared-stats diff: max |difference| with the shared BN statistics '
          'of the model (left as they were by fill_budget_table) instead, what the per-entry statistics avoid.')
    print('Budget tables (setup, not timed as a result):')
    for r in results:
        print(f'- {r["model"]}: {r["entries"]} entries over {r["f_min"] / 1e6:.1f} .. {r["f_max"] / 1e6:.1f} '
              f'MMACs, filled in {r["fill_s"]:.1f} s')
    print()
    return all(row['equal'] and row['right_entry'] and row['forwards_ours'] == 0
               for r in results for row in r['rows'])


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    print_header('timm_pss budget-switch benchmark',
                 {'threads': f'{args.threads} (torch), BLAS 1', 'settings': settings_line(args)})
    return run_parts(args.models, [(args.threads, partial(bench_budget, args=args), partial(report, args=args))],
                     'FAILED: a correctness check above says NO (or set_budget ran a forward pass).')


if __name__ == '__main__':
    sys.exit(main())
