"""Benchmark timm_pss supernets against plain baselines, printed side by side as ratios.

What it measures, per model (`pss_mobilenetv1`, `pss_mobilenetv2`, `pss_resnet50` by default):

1. FLOPs throughput, on one thread (torch, numpy/BLAS): `space.flops_many(batch)` on N random subnets from
   `space.sample_many(N, rng=0)` (default N = 1,000,000) against the baseline, the scalar `space.flops(subnet)`
   called in a Python loop on the first few thousand of them. Both are best-of-repeats wall time
   (`time.perf_counter`), reported in subnets/s with the speed-up, whether the vectorised path meets the
   target of at least 1M subnets/s, and whether both paths give identical FLOPs.
2. Forward latency (eval mode, `torch.no_grad`, batch 1 by default) at the "mid" subnet (the middle width
   choice of every group, the middle resolution) of
     a. the supernet with that subnet active, fed an input at the subnet's resolution,
     b. the exported model `timm_pss.export_subnet(model)` (a plain timm EfficientNet / ResNet),
     c. the baseline: a dense timm model of the same widths built independently, with timm's pruning helper
        `adapt_model_from_string(timm.create_model(model.dense_architecture), shapes)` and the exported weights.
   Outputs are checked first (supernet == exported and dense == exported, `torch.allclose`, atol 1e-5); then
   the three run interleaved, one forward each per round, after warm-up, and the median latency in ms is
   reported with the ratios supernet/dense and exported/dense.

Run from the repository root:

    python benchmarks/bench_models.py                      # full settings (about 25 s on a 2-core VM)
    python benchmarks/bench_models.py --quick              # tiny settings, under 10 s (smoke test)
    python benchmarks/bench_models.py --models pss_resnet50 --batch-size 8 --threads 4

The tables are markdown, ready to paste into the README. The exit status is 1 if any correctness check fails.
"""
from harness import (  # first: one thread
    benchmark_parser, best_time, format_table, interleaved_times_ms, max_abs_diff, parse_benchmark_args, print_header,
    quick_note, ratio_quartiles, run_parts, threads_text, yes_no,
)

import argparse
import statistics
import sys
from functools import partial
from typing import List, Sequence

import numpy as np
import timm
import torch
from timm.models import adapt_model_from_string

import timm_pss
from timm_pss import Subnet
from timm_pss.slimmable import inference_cache_bytes
from timm_pss.supernet import quiet_forwards

TARGET_SUBNETS_PER_S = 1_000_000
ATOL = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split('\n', 1)[0])
    parser.add_argument('--num-subnets', type=int, default=1_000_000,
                        help='random subnets for the vectorised flops_many timing')
    parser.add_argument('--scalar-subnets', type=int, default=2_000,
                        help='subnets for the scalar space.flops loop (the baseline)')
    parser.add_argument('--flops-repeats', type=int, default=5, help='FLOPs timings, best one kept')
    parser.add_argument('--batch-size', type=int, default=1, help='batch size of the latency forward passes')
    parser.add_argument('--repeats', type=int, default=50, help='timed forward passes per model variant')
    parser.add_argument('--warmup', type=int, default=5, help='untimed forward passes per variant first')
    args = parse_benchmark_args(parser, argv, positive=(
        'num_subnets', 'scalar_subnets', 'flops_repeats', 'batch_size', 'repeats'),
        quick_limits=dict(num_subnets=20_000, scalar_subnets=200, flops_repeats=2, repeats=3, warmup=1))
    args.scalar_subnets = min(args.scalar_subnets, args.num_subnets)
    return args


# ---------------------------------------------------------------------------------------------- reporting

def settings_line(args: argparse.Namespace) -> str:
    """Subnet counts, FLOPs repeats and latency rounds, one line for the header (here and in speed.py)."""
    return (f'{args.num_subnets:,} subnets (scalar baseline {args.scalar_subnets:,}), FLOPs best of '
            f'{args.flops_repeats}; latency batch {args.batch_size}, median of {args.repeats} after '
            f'{args.warmup} warm-up{quick_note(args)}')


# ---------------------------------------------------------------------------------------------- 1. FLOPs

def bench_flops(name: str, args: argparse.Namespace) -> dict:
    """Vectorised flops_many on N subnets vs the scalar flops loop on the first few thousand of them."""
    space = timm.create_model(name).space
    batch = space.sample_many(args.num_subnets, rng=0)
    scalar_subnets = [batch.subnet(i) for i in range(args.scalar_subnets)]
    many = space.flops_many(batch)
    scalar = [space.flops(s) for s in scalar_subnets]
    t_many, _ = best_time(lambda: space.flops_many(batch), args.flops_repeats)
    t_scalar, _ = best_time(lambda: [space.flops(s) for s in scalar_subnets], args.flops_repeats)
    return dict(
        model=name, groups=space.num_groups, n=len(batch), t_many=t_many,
        many_per_s=len(batch) / t_many, scalar_per_s=len(scalar_subnets) / t_scalar,
        match=bool(np.array_equal(many[:len(scalar)], np.asarray(scalar, dtype=np.int64))),
    )


def report_flops(results: Sequence[dict]) -> bool:
    print('## Vectorised FLOPs: space.flops_many(batch) vs scalar space.flops(subnet) loop, 1 thread')
    print()
    headers = ['model', 'groups', 'subnets', 'flops_many (ms)', 'flops_many subnets/s', 'scalar subnets/s',
               'speed-up', '>= 1M/s', 'equal to scalar']
    rows = [[r['model'], str(r['groups']), f'{r["n"]:,}', f'{1e3 * r["t_many"]:.1f}',
             f'{r["many_per_s"]:,.0f}', f'{r["scalar_per_s"]:,.0f}', f'{r["many_per_s"] / r["scalar_per_s"]:.0f}x',
             yes_no(r['many_per_s'] >= TARGET_SUBNETS_PER_S), yes_no(r['match'])] for r in results]
    print(format_table(headers, rows))
    met = all(r['many_per_s'] >= TARGET_SUBNETS_PER_S for r in results)
    print()
    print(f'Target >= {TARGET_SUBNETS_PER_S:,} subnets/s on one thread: {"met" if met else "NOT met"} '
          f'for {"all" if met else "some"} models (slowest {min(r["many_per_s"] for r in results):,.0f}/s).')
    print()
    return all(r['match'] for r in results)


# ---------------------------------------------------------------------------------------------- 2. latency

def mid_subnet(space) -> Subnet:
    """The middle width choice of every group and the middle resolution."""
    return Subnet(space.resolutions[len(space.resolutions) // 2],
                  tuple(choices[len(choices) // 2] for choices in space.width_choices))


def build_dense_baseline(supernet, exported: torch.nn.Module) -> torch.nn.Module:
    """A dense timm model of the exported widths, built independently with timm's pruning helper."""
    state = exported.state_dict()
    shapes = '***'.join(f'{k}:[{",".join(str(d) for d in v.shape)}]' for k, v in state.items() if v.dim())
    dense = timm.create_model(supernet.dense_architecture, num_classes=supernet.num_classes)
    dense = adapt_model_from_string(dense, shapes)
    dense.load_state_dict(state, strict=True)
    return dense.eval()


@torch.no_grad()
def bench_latency(name: str, args: argparse.Namespace) -> dict:
    """Supernet at the mid subnet vs its export vs an independent dense timm baseline: checks, then latency."""
    torch.manual_seed(0)
    supernet = timm.create_model(name).eval()
    return dict(model=name, **bench_subnet_latency(supernet, mid_subnet(supernet.space), args))


@torch.no_grad()
def bench_subnet_latency(supernet, subnet: Subnet, args: argparse.Namespace) -> dict:
    """`supernet` (eval mode) set to `subnet` vs its export vs an independent dense timm baseline: outputs checked,
    then interleaved median latency (`args.batch_size`, `args.repeats`, `args.warmup`) at the subnet's resolution."""
    subnet = supernet.set_subnet(subnet)
    exported = timm_pss.export_subnet(supernet)
    dense = build_dense_baseline(supernet, exported)
    x = torch.randn(args.batch_size, 3, subnet.resolution, subnet.resolution)
    with quiet_forwards(supernet):  # random weights, uncalibrated statistics on purpose: outputs compared, timed
        y_super, y_export, y_dense = supernet(x), exported(x), dense(x)
        times = interleaved_times_ms(
            [lambda: supernet(x), lambda: exported(x), lambda: dense(x)], args.repeats, args.warmup)
    ms_super, ms_export, ms_dense = (statistics.median(ts) for ts in times)
    return dict(
        subnet=subnet, mmacs=supernet.space.flops(subnet) / 1e6,
        params=sum(p.numel() for p in exported.parameters()) / 1e6,
        ms_super=ms_super, ms_export=ms_export, ms_dense=ms_dense,
        super_dense_quartiles=ratio_quartiles(times[0], times[2]),
        cache_mb=inference_cache_bytes(supernet) / 2 ** 20,
        weights_mb=sum(p.nbytes for p in exported.parameters()) / 2 ** 20,
        super_eq_export=torch.allclose(y_super, y_export, atol=ATOL), diff_super=max_abs_diff(y_super, y_export),
        dense_eq_export=torch.allclose(y_dense, y_export, atol=ATOL), diff_dense=max_abs_diff(y_dense, y_export),
    )


LATENCY_HEADERS = ['model', 'res', 'MMACs', 'params (M)', 'supernet', 'exported', 'dense', 'supernet/dense',
                   'exported/dense', 'supernet == exported', 'dense == exported']


def latency_cells(r: dict) -> List[str]:
    """One latency table row (LATENCY_HEADERS) of a bench_latency / bench_subnet_latency result with its model."""
    return [r['model'], str(r['subnet'].resolution), f'{r["mmacs"]:.1f}', f'{r["params"]:.2f}',
            f'{r["ms_super"]:.2f}', f'{r["ms_export"]:.2f}', f'{r["ms_dense"]:.2f}',
            f'{r["ms_super"] / r["ms_dense"]:.2f}x', f'{r["ms_export"] / r["ms_dense"]:.2f}x',
            f'{yes_no(r["super_eq_export"])} ({r["diff_super"]:.1e})',
            f'{yes_no(r["dense_eq_export"])} ({r["diff_dense"]:.1e})']


def report_latency(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Forward latency at the mid subnet: supernet vs exported vs dense timm baseline '
          f'(batch {args.batch_size}, {threads_text(args.threads)}, median ms)')
    print()
    print(format_table(LATENCY_HEADERS, [latency_cells(r) for r in results]))
    print()
    print(f'Equality: torch.allclose(atol={ATOL:g}) on the logits, max |difference| in brackets.')
    print('Mid subnets (resolution, widths per group):')
    for r in results:
        print(f'- {r["model"]}: {r["subnet"].resolution}px, {list(r["subnet"].widths)}')
    print()
    return all(r['super_eq_export'] and r['dense_eq_export'] for r in results)


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    print_header('timm_pss benchmark', {
        'threads': f'FLOPs part 1 (torch + BLAS), latency part {args.threads} (torch)',
        'settings': settings_line(args)})
    return run_parts(args.models, [
        (1, partial(bench_flops, args=args), report_flops),
        (args.threads, partial(bench_latency, args=args), partial(report_latency, args=args)),
    ], 'FAILED: a correctness check above says NO.')


if __name__ == '__main__':
    sys.exit(main())
