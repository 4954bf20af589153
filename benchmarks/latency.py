"""Latency lookup tables: build cost, and how well they rank and predict measured supernet latency vs FLOPs.

What it measures, per model (`pss_mobilenetv1`, `pss_mobilenetv2`, `pss_resnet50` by default):

1. Build: `timm_pss.latency.build_lut(model, threads=--threads)` with its defaults (every width and resolution of
   the space where a block's grid is small, evenly spaced widths where it is not; `--width-points` caps the
   widths per group; `--lut-warmup` / `--lut-repeats` are its warmup / repeats). Reported: wall time, blocks,
   grid points, samples retaken because the process lost the CPU, the fitted `overhead_ms`.
2. Ground truth: `--subnets` random subnets stratified by FLOPs (for evenly spaced FLOPs targets from the min to
   the max subnet, the nearest of 20,000 uniform random subnets), each timed end to end as the table defines it:
   the supernet `set_subnet(subnet)` then `model(x)`, x a batch at the subnet's resolution, eval mode,
   `torch.inference_mode`, the same threads. Interleaved: every subnet once per round (an untimed forward, then
   the timed one: steady state, as the tables define it), `--warmup` untimed rounds, median of `--repeats`. Plain
   wall time: unlike the table's build, nothing is retaken on a busy machine.
3. Accuracy: Kendall tau (scipy) of the table's `predict_many` against the measured latencies, the mean absolute
   percentage error (MAPE), and, as the baseline, the Kendall tau of the FLOPs proxy (`space.flops_many`) against
   the same measurements. Also `predict_many` throughput on 100,000 random subnets.

Target: Kendall tau >= 0.8 for every model; the exit status is 0 when all meet it (always with --quick).

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
from typing import Sequence

import numpy as np
import timm
import torch
from scipy.stats import kendalltau

from timm_pss import Subnet, SubnetBatch
from timm_pss.latency import AUTO_MAX_GRID, LatencyTable, build_lut
from timm_pss.spaces import stratified_subnets

TARGET_TAU = 0.8
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
    parser.add_argument('--subnets', type=int, default=30, help='random subnets, evenly spread over the FLOPs span')
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
    parser.add_argument('--seed', type=int, default=0, help='seed of the subnet draws and inputs')
    parser.add_argument('--malloc', choices=('stable', 'default'), default='stable',
                        help="'stable': glibc keeps freed memory (no page faults from the heap's history); "
                             "'default': leave the allocator alone")
    args = parse_benchmark_args(parser, argv, positive=('subnets', 'repeats', 'batch_size', 'lut_repeats'),
                                quick_limits=dict(subnets=12, repeats=3, warmup=1, lut_repeats=2))
    if args.width_points is not None and args.width_points < 2:
        parser.error('--width-points must be at least 2 (the two ends of each group)')
    if args.quick:
        args.lut_warmup = 0
        args.width_points = args.width_points or 2
    return args


def measure(model, subnets: Sequence[Subnet], batch_size: int, device: torch.device, warmup: int,
            repeats: int, seed: int) -> np.ndarray:
    """Median end-to-end ms of each subnet, interleaved: every subnet once per round, each timed forward right
    after an untimed one of the same subnet (steady state, as the tables define latency: after a switch the
    first forward may compile kernels for new shapes)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {r: torch.randn(batch_size, model.in_chans, r, r, generator=gen).to(device)
              for r in sorted({s.resolution for s in subnets})}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    times = [[] for _ in subnets]
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for i, s in enumerate(subnets):
                model.set_subnet(s)
                x = inputs[s.resolution]
                model(x)
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                if round_ >= warmup:
                    times[i].append(time.perf_counter() - t0)
    return np.array([1e3 * statistics.median(t) for t in times])


def bench_model(name: str, args: argparse.Namespace) -> dict:
    kwargs = dict(resolution_range=QUICK_RESOLUTIONS) if args.quick else {}
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = timm.create_model(name, **kwargs).to(device).eval()
    space = model.space
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

    subnets = stratified_subnets(space, args.subnets, rng=args.seed)
    batch = SubnetBatch.from_subnets(subnets)
    torch.set_num_threads(args.threads)
    measured = measure(model, subnets, args.batch_size, device, args.warmup, args.repeats, args.seed + 1)
    predicted = table.predict_many(batch)
    flops = space.flops_many(batch)

    many = space.sample_many(100_000, rng=args.seed)
    t0 = time.perf_counter()
    table.predict_many(many)
    per_s = len(many) / (time.perf_counter() - t0)
    return dict(
        model=name, space=space, table=table, build_s=build_s, n=len(subnets), measured=measured,
        tau_lut=float(kendalltau(predicted, measured)[0]), tau_flops=float(kendalltau(flops, measured)[0]),
        mape=float(np.mean(np.abs(predicted - measured) / measured)), predict_per_s=per_s,
    )


def report(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Latency lookup tables vs measured supernet latency ({args.device}, batch {args.batch_size}, '
          f'{threads_text(args.threads)})')
    print()
    headers = ['model', 'resolutions', 'build (s)', 'blocks', 'grid points', 'retaken', 'overhead (ms)', 'subnets',
               'measured (ms)', 'LUT tau', 'FLOPs tau', 'LUT MAPE', 'predict_many /s', f'tau >= {TARGET_TAU}']
    rows = []
    for r in results:
        t, res = r['table'], r['space'].resolutions
        rows.append([r['model'], f'{res[0]}-{res[-1]} ({len(res)})', f'{r["build_s"]:.1f}', str(len(t.blocks)),
                     f'{t.grid_size:,}', f'{t.build["retaken_samples"]:,}', f'{t.overhead_ms:.2f}', str(r['n']),
                     f'{r["measured"].min():.2f}-{r["measured"].max():.2f}', f'{r["tau_lut"]:.3f}',
                     f'{r["tau_flops"]:.3f}', f'{100 * r["mape"]:.1f}%', f'{r["predict_per_s"]:,.0f}',
                     yes_no(r['tau_lut'] >= TARGET_TAU)])
    print(format_table(headers, rows))
    print()
    met = all(r['tau_lut'] >= TARGET_TAU for r in results)
    print(f'Target Kendall tau >= {TARGET_TAU} (LUT prediction vs measured): {"met" if met else "NOT met"} for '
          f'{"all" if met else "some"} models. FLOPs tau is the baseline proxy on the same measurements.')
    print('Grids (resolutions x widths per group):')
    for r in results:
        t = r['table']
        biggest = max(t.blocks, key=lambda b: b.grid_size)
        print(f'- {r["model"]}: largest block {biggest.name} {"x".join(map(str, biggest.ms.shape))}; table '
              f'{len(t.to_json()) / 1024:.0f} KiB of JSON; overhead fitted on {len(t.build["overhead_fit"])} subnets')
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
                     f'Kendall tau below {TARGET_TAU} for some model.')


if __name__ == '__main__':
    sys.exit(main())
