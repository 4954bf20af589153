"""Latency lookup tables: build cost, and how well they rank and predict measured supernet latency vs FLOPs.

What it measures, per model (`pss_mobilenetv1`, `pss_mobilenetv2`, `pss_resnet50` by default):

1. Build: `timm_pss.latency.build_lut(model, threads=--threads)` with its defaults (every width and resolution of
   the space where a block's grid is small, evenly spaced widths where it is not; `--width-points` caps the
   widths per group; `--lut-warmup` / `--lut-repeats` are its warmup / repeats). Reported: wall time, blocks,
   grid points, samples retaken because the process lost the CPU, the fitted `overhead_ms`.
2. Ground truth: `--subnets` random subnets stratified by FLOPs (for evenly spaced FLOPs targets from the min to
   the max subnet, the nearest of 20,000 uniform random subnets), each timed end to end as the table defines it:
   the supernet `set_subnet(subnet)` then `model(x)`, x a batch at the subnet's resolution, eval mode,
   `torch.inference_mode`, the same threads. Interleaved: every subnet once per round in a fresh random order (an
   untimed forward, then the timed one: steady state, as the tables define it), `--warmup` untimed rounds, median
   of `--repeats`: half of them before the build and half after, averaged, so the table is judged against the
   machine's state around it; the drift between the halves and their Kendall tau (the noise floor: what any
   predictor can reach here) are reported. On one CPU thread a sample during which the process lost the CPU is
   retaken, as in the build. Measured here on a 2-core machine, other work on the second core (even when it never
   takes this process's core) slows the timings by 5-20 %: a table and its ground truth taken under different load
   disagree by that much, whatever the table.
3. Accuracy: Kendall tau (scipy) of the table's `predict_many` against the measured latencies, the mean absolute
   percentage error (MAPE), the share within +-10 %, the median signed error, and, as the baseline, the Kendall
   tau of the FLOPs proxy (`space.flops_many`) against the same measurements. Also `predict_many` throughput on
   100,000 random subnets.
4. Where the error comes from: each ground-truth forward is followed by one that times every segment in place at
   the subnet's own widths, so the table's error splits into the grid's (its interpolated segment times against
   these) and the sum-of-segments model's (these plus the overhead against end to end).
5. The machine's speed: the drift during the build (`build['speed_drift']`, the table's overhead subnets timed in
   every round of it), and the table's error once rescaled to the ground truth's speed by one factor: the median
   measured / predicted ratio of `--calibration-subnets` (default 5) other FLOPs-stratified subnets, timed in the
   same ground-truth rounds and kept out of every other figure. Rescaling leaves the ranking (tau) as it is; it
   shows how much of the +-10 % miss is one speed factor between the build and the ground truth.

Target (issue 15): the table's Kendall tau above the FLOPs tau on the same measurements, and >= 95 % of subnets
predicted within +-10 % (nn-Meter's mark: 99 % on a mobile CPU); the exit status is 0 when every model meets it
(always with --quick).

Run from the repository root:

    python benchmarks/latency.py                                  # all three models, 1 thread
    python benchmarks/latency.py --models pss_mobilenetv2 --save-dir luts/
    python benchmarks/latency.py --quick --models pss_mobilenetv2 # smoke test: a 2-resolution space, seconds

Timings on a machine shared with other work are inflated and noisy, the measured ground truth most of all.

Allocator: by default (`--malloc stable`) glibc is told, before any model exists, to keep freed memory
(`mallopt`: mmap threshold 32 MiB, trim threshold 1 GiB, also exported as MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_ so the tables record it). With glibc's defaults (`--malloc default`) activations of a few MB
are returned to the OS and page-faulted back depending on the heap's history, which makes both the tables and the
ground truth jump between runs (pss_mobilenetv2 at 224px: 30 ms instead of 18 ms here).
"""
from harness import (  # first: one thread
    benchmark_parser, format_table, parse_benchmark_args, print_header, run_parts, threads_text, yes_no,
)

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import timm
import torch
from scipy.stats import kendalltau

from timm_pss import Subnet, SubnetBatch
from timm_pss.latency import AUTO_MAX_GRID, LatencyTable, build_lut
from timm_pss.latency.build import CallTimer, speed_drift, time_in_place
from timm_pss.latency.device import synchronizer_for
from timm_pss.latency.segments import forward_segments
from timm_pss.spaces import stratified_subnets

TARGET_WITHIN = 0.95  # share of subnets predicted within +-10 % (nn-Meter reports 99 % on a mobile CPU)
QUICK_RESOLUTIONS = (64, 96, 32)
STABLE_MALLOC = {'MALLOC_MMAP_THRESHOLD_': (-3, 32 << 20), 'MALLOC_TRIM_THRESHOLD_': (-1, 1 << 30)}  # mallopt ids


def stable_malloc() -> str:
    """Keep freed memory in this process (glibc mallopt); returns what was done, for the header."""
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        ok = all(libc.mallopt(param, value) == 1 for param, value in STABLE_MALLOC.values())
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        return 'default (mallopt unavailable: not glibc?)'
    for var, (_, value) in STABLE_MALLOC.items():
        os.environ[var] = str(value)
    return 'stable (glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB)'


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split('\n', 1)[0])
    parser.add_argument('--subnets', type=int, default=120, help='random subnets, evenly spread over the FLOPs span')
    parser.add_argument('--repeats', type=int, default=15, help='timed rounds of the end-to-end measurement')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward')
    parser.add_argument('--device', default='cpu', help="torch device, e.g. 'cpu' or 'cuda:0'")
    parser.add_argument('--width-points', type=int, default=None,
                        help=f'at most this many widths per group in every block (default: all where a block has '
                             f'<= {AUTO_MAX_GRID} width combinations, else evenly spaced to fit)')
    parser.add_argument('--lut-repeats', type=int, default=5, help='samples per grid point (build_lut repeats)')
    parser.add_argument('--lut-warmup', type=int, default=0, help='untimed rounds of the build (build_lut warmup)')
    parser.add_argument('--save-dir', type=Path, default=None, help='write each table there as JSON')
    parser.add_argument('--calibration-subnets', type=int, default=5,
                        help='other stratified subnets whose measured / predicted ratio rescales the table (5)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the subnet draws and inputs')
    parser.add_argument('--malloc', choices=('stable', 'default'), default='stable',
                        help="'stable': glibc keeps freed memory (no page faults from the heap's history); "
                             "'default': leave the allocator alone")
    args = parse_benchmark_args(parser, argv, positive=('subnets', 'repeats', 'batch_size', 'lut_repeats',
                                                                'calibration_subnets'),
                                quick_limits=dict(subnets=12, repeats=3, warmup=1, lut_repeats=2, calibration_subnets=2))
    if args.width_points is not None and args.width_points < 2:
        parser.error('--width-points must be at least 2 (the two ends of each group)')
    if args.quick:
        args.lut_warmup = 0
        args.width_points = args.width_points or 2
    return args


def measure(model, subnets: Sequence[Subnet], batch_size: int, device: torch.device, warmup: int,
            repeats: int, seed: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Median end-to-end ms of each subnet, and the median ms of each of its segments timed in place (the way
    `build_lut` times them, but at this subnet's own widths: no grid, no interpolation).

    Interleaved: every subnet once per round in a fresh random order, as an untimed forward, then the timed
    `model(x)` (steady state, as the tables define latency), then a forward that times each segment between its
    neighbours. On one CPU thread a sample during which the process lost the CPU (wall time above CPU time) is
    retaken, as `build_lut` does, so the ground truth is the latency undisturbed: rounds go on until every subnet
    has `repeats` clean samples of both, at most 3 x `repeats` rounds (then the median of all). Returns
    (end-to-end ms (N,), segment ms (N, S), spoiled samples)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = {r: torch.randn(batch_size, model.in_chans, r, r, generator=gen).to(device)
              for r in sorted({s.resolution for s in subnets})}
    segments = forward_segments(model, model.channel_plan())
    timer = CallTimer(synchronizer_for(device), retake=device.type == 'cpu' and torch.get_num_threads() == 1)
    e2e = [([], []) for _ in subnets]  # (clean, spoiled) samples
    parts = [([], []) for _ in subnets]
    pending = list(range(len(subnets)))
    with torch.inference_mode():
        for round_ in range(warmup + (3 * repeats if timer.retake else repeats)):
            for i in rng.permutation(pending):
                s = subnets[i]
                model.set_subnet(s)
                x = inputs[s.resolution]
                model(x)
                _, ms, ok = timer(model, x)
                timed = time_in_place(segments, x, timer)
                samples, parts_ok = [ms for ms, _ in timed], all(seg_ok for _, seg_ok in timed)
                if round_ >= warmup:
                    e2e[i][0 if ok else 1].append(ms)
                    parts[i][0 if parts_ok else 1].append(samples)
            if round_ >= warmup:
                pending = [i for i in pending if min(len(e2e[i][0]), len(parts[i][0])) < repeats]
            if not pending:
                break
    spoiled = sum(len(e[1]) + len(p[1]) for e, p in zip(e2e, parts))
    return (np.array([statistics.median(c or d) for c, d in e2e]),
            np.array([np.median(np.array(c or d), axis=0) for c, d in parts]), spoiled)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    kwargs = dict(resolution_range=QUICK_RESOLUTIONS) if args.quick else {}
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = timm.create_model(name, **kwargs).to(device).eval()
    space = model.space
    subnets = stratified_subnets(space, args.subnets, rng=args.seed)
    batch = SubnetBatch.from_subnets(subnets)
    calibration = stratified_subnets(space, args.calibration_subnets, rng=args.seed + 100)
    timed = subnets + calibration  # the calibration subnets are timed in the same rounds, then set apart
    # the ground truth is measured half before and half after the build, so a table is judged against the
    # machine's state around it, and a drift of that state (other work starting or stopping) shows
    torch.set_num_threads(args.threads)
    before = measure(model, timed, args.batch_size, device, args.warmup, (args.repeats + 1) // 2, args.seed + 1)
    t0 = time.perf_counter()
    table = build_lut(model, device=device, batch_size=args.batch_size, threads=args.threads,
                      width_points=args.width_points, warmup=args.lut_warmup, repeats=args.lut_repeats,
                      seed=args.seed)
    build_s = time.perf_counter() - t0
    if args.save_dir is not None:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        path = args.save_dir / f'{name}_{table.device.replace(":", "")}_{table.threads}t_b{table.batch_size}.json'
        table.save(path)
        assert LatencyTable.load(path).to_dict() == table.to_dict()

    torch.set_num_threads(args.threads)
    after = measure(model, timed, args.batch_size, device, args.warmup, args.repeats // 2 or 1, args.seed + 2)
    n = len(subnets)
    measured, segment_ms = (before[0][:n] + after[0][:n]) / 2, (before[1][:n] + after[1][:n]) / 2
    predicted = table.predict_many(batch)
    calibration_ms = (before[0][n:] + after[0][n:]) / 2
    speed_factor = float(np.median(calibration_ms / table.predict_many(SubnetBatch.from_subnets(calibration))))
    rescaled = predicted * speed_factor
    flops = space.flops_many(batch)
    # where the error comes from: the grid (table blocks vs the same segments timed at the subnet's own widths)
    # and the sum-of-segments model (segments timed in place + the table's overhead vs end to end)
    looked_up = np.stack([b.lookup(batch.resolutions, batch.widths) for b in table.blocks], axis=1)
    in_place = segment_ms.sum(axis=1) + table.overhead_ms

    many = space.sample_many(100_000, rng=args.seed)
    t0 = time.perf_counter()
    table.predict_many(many)
    per_s = len(many) / (time.perf_counter() - t0)
    return dict(
        model=name, space=space, table=table, build_s=build_s, n=len(subnets), measured=measured,
        tau_lut=float(kendalltau(predicted, measured)[0]), tau_flops=float(kendalltau(flops, measured)[0]),
        mape=float(np.mean(np.abs(predicted - measured) / measured)), predict_per_s=per_s,
        within10=float(np.mean(np.abs(predicted - measured) <= 0.1 * measured)),
        bias=float(np.median((predicted - measured) / measured)), spoiled=before[2] + after[2],
        drift=speed_drift(np.stack([before[0][:n], after[0][:n]], axis=1)),  # median(after / before) - 1
        tau_repeat=float(kendalltau(before[0][:n], after[0][:n])[0]),
        build_drift=table.build.get('speed_drift'), speed_factor=speed_factor,
        rescaled_mape=float(np.mean(np.abs(rescaled - measured) / measured)),
        rescaled_within10=float(np.mean(np.abs(rescaled - measured) <= 0.1 * measured)),
        grid_mape=float(np.mean(np.abs(looked_up.sum(axis=1) - segment_ms.sum(axis=1)) / measured)),
        sum_mape=float(np.mean(np.abs(in_place - measured) / measured)),
        tau_in_place=float(kendalltau(in_place, measured)[0]),
        worst_blocks=_worst_blocks(table, looked_up, segment_ms, measured),
    )


def _worst_blocks(table: LatencyTable, looked_up: np.ndarray, segment_ms: np.ndarray, measured: np.ndarray) -> str:
    """The three segments whose grid error (table vs in place) adds most to the error, as % of the latency."""
    err = np.mean(np.abs(looked_up - segment_ms) / measured[:, None], axis=0)
    order = np.argsort(err)[::-1][:3]
    return ', '.join(f'{table.blocks[k].name} {100 * err[k]:.1f}%' for k in order)


def meets_target(r: dict) -> bool:
    """The goal: the table ranks subnets better than FLOPs do, and predicts >= 95 % of them within +-10 %."""
    return r['tau_lut'] > r['tau_flops'] and r['within10'] >= TARGET_WITHIN


def report(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Latency lookup tables vs measured supernet latency ({args.device}, batch {args.batch_size}, '
          f'{threads_text(args.threads)})')
    print()
    headers = ['model', 'resolutions', 'build (s)', 'grid points', 'retaken', 'overhead (ms)', 'subnets',
               'measured (ms)', 'LUT tau', 'FLOPs tau', 'LUT MAPE', 'within +-10%', 'median error',
               'predict_many /s', 'target met']
    rows = []
    for r in results:
        t, res = r['table'], r['space'].resolutions
        rows.append([r['model'], f'{res[0]}-{res[-1]} ({len(res)})', f'{r["build_s"]:.1f}', f'{t.grid_size:,}',
                     f'{t.build["retaken_samples"]:,}', f'{t.overhead_ms:.2f}', str(r['n']),
                     f'{r["measured"].min():.2f}-{r["measured"].max():.2f}', f'{r["tau_lut"]:.3f}',
                     f'{r["tau_flops"]:.3f}', f'{100 * r["mape"]:.1f}%', f'{100 * r["within10"]:.0f}%',
                     f'{100 * r["bias"]:+.1f}%', f'{r["predict_per_s"]:,.0f}', yes_no(meets_target(r))])
    print(format_table(headers, rows))
    print()
    met = all(meets_target(r) for r in results)
    print(f'Target: LUT tau above FLOPs tau (both against the same measurements) and >= {100 * TARGET_WITHIN:.0f}% '
          f'of subnets within +-10%: {"met" if met else "NOT met"} for {"all" if met else "some"} models.')
    print()
    print('### Where the error comes from')
    print()
    print(format_table(
        ['model', 'grid MAPE', 'sum-of-segments MAPE', 'in-place tau', 'largest grid errors', 'drift', 'repeat tau',
         'spoiled samples'],
        [[r['model'], f'{100 * r["grid_mape"]:.1f}%', f'{100 * r["sum_mape"]:.1f}%', f'{r["tau_in_place"]:.3f}',
          r['worst_blocks'], f'{100 * r["drift"]:+.1f}%', f'{r["tau_repeat"]:.3f}', str(r['spoiled'])]
         for r in results]))
    print()
    print('- grid MAPE: the table\'s segments against the same segments timed in place at the subnet\'s own widths '
          '(interpolation between grid widths, and grid noise), as % of the end-to-end latency')
    print('- sum-of-segments MAPE / in-place tau: those in-place segment times plus the table\'s overhead against '
          'the end-to-end latency: what a perfect grid would still miss')
    print('- drift: the ground truth measured after the build against the one before it (median ratio - 1); repeat '
          'tau: Kendall tau between the two, the most any predictor can reach on this machine\'s noise')
    print('### The machine\'s speed')
    print()
    print(format_table(
        ['model', 'drift during the build', 'drift of the ground truth across it', 'speed factor',
         'rescaled MAPE', 'rescaled within +-10%'],
        [[r['model'], '-' if r['build_drift'] is None else f'{100 * r["build_drift"]:+.1f}%',
          f'{100 * r["drift"]:+.1f}%', f'{r["speed_factor"]:.3f}', f'{100 * r["rescaled_mape"]:.1f}%',
          f'{100 * r["rescaled_within10"]:.0f}%'] for r in results]))
    print()
    print(f'- drift during the build: build_lut\'s own measure (its overhead subnets, later half / earlier half of '
          f'the build); speed factor: median measured / predicted of {args.calibration_subnets} other subnets timed '
          f'with the ground truth; rescaled: the table\'s predictions times that factor (a diagnostic, not the goal)')
    print()
    print('Grids (resolutions x widths per group):')
    for r in results:
        t = r['table']
        biggest = max(t.blocks, key=lambda b: b.grid_size)
        print(f'- {r["model"]}: {len(t.blocks)} blocks, largest {biggest.name} {"x".join(map(str, biggest.ms.shape))}; '
              f'table {len(t.to_json()) / 1024:.0f} KiB of JSON; overhead fitted on '
              f'{len(t.build["overhead_fit"])} subnets')
    print()
    return met


def main(argv=None) -> int:
    args = parse_args(argv)
    allocator = stable_malloc() if args.malloc == 'stable' else 'default'
    grid = 'default grid' if args.width_points is None else f'<= {args.width_points} widths per group'
    quick = f' (--quick: resolutions {QUICK_RESOLUTIONS[0]}-{QUICK_RESOLUTIONS[1]})' if args.quick else ''
    print_header('timm_pss latency lookup tables', {
        'settings': f'{args.subnets} FLOPs-stratified subnets, median of {args.repeats} interleaved rounds after '
                    f'{args.warmup}; tables: {grid}, median of {args.lut_repeats} rounds after {args.lut_warmup}'
                    f'{quick}',
        'allocator': allocator})
    # with --quick the target is reported, not enforced
    return run_parts(args.models, [(None, partial(bench_model, args=args),
                                    lambda results: report(results, args) or args.quick)],
                     'the latency target is not met for some model.')


if __name__ == '__main__':
    sys.exit(main())
