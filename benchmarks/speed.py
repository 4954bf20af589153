"""Speed of timm_pss against the baselines, one run: every ratio measured against a baseline in the same process.

What it measures, per model (`--models`, default `pss_mobilenetv1`, `pss_mobilenetv2`, `pss_resnet50`), in eight
sections (`--sections`, default all but `compile`, in this order). The first four reuse the other benchmarks'
functions and print their tables; see those scripts for the details.

1. `flops` (bench_models.py, 1 thread): vectorised `space.flops_many(batch)` on 1,000,000 random subnets vs the
   scalar `space.flops(subnet)` loop; subnets/s, speed-up, identical FLOPs.
2. `sampling` (bench_pss.py, 1 thread): in-bucket sampling `space.sample_many(k, rng, flops_range=bucket)` over 47
   FLOPs buckets vs the reference's rejection sampling from N uniform subnets (N = 30,000, its FLOPs map, and
   1,000,000); in-bucket draws/s, ratio ours / baseline, buckets reached (ours must reach all).
3. `step` (bench_pss.py): one PSS training step (prioritized pools, max + 1 middle + min subnet, SGD) vs the
   uniform sandwich step, 64px batch 32; median ms, ratio PSS / uniform.
4. `budget` (bench_budget.py): `model.set_budget(flops)` vs `set_subnet` + `calibrate_bn` (the reference's BN
   recalibration) at three budgets; median ms, speed-up, logits equal to the recalibrated ones, no forward pass.
   Here the baseline calibrates on `--calib-batches` (default 4) x 32 images, `--calib-repeats` (default 1) run
   per budget, fewer than bench_budget.py's 8 x 32 x 3, to keep the run short; the speed-up scales with them.
5. `latency`: forward latency (eval, `torch.no_grad`, each batch size of `--batch-sizes`, default 1 and 32; above
   batch 1 `--large-batch-repeats` rounds, default 5, after at most 2 warm-up) at three budgets,
   `--budgets` (default 25, 50 and 100 % of the max subnet's FLOPs), of
     a. the supernet with that subnet active (`set_subnet`),
     b. the exported model `timm_pss.export_subnet(model)`,
     c. the baseline: a dense timm model of the same widths built independently with timm's pruning helper
        (bench_models.build_dense_baseline), loaded with the exported weights,
   each fed an input at the subnet's own resolution, interleaved (one forward each per round, `--repeats` rounds
   after `--warmup`), median ms, with the ratios supernet/dense and exported/dense, the per-round supernet/dense
   ratio's median and quartiles (its spread), and the memory of the supernet's inference cache (copies of the
   input-cut conv/linear weights, `timm_pss.slimmable.inference_cache_bytes`). Outputs are checked first
   (supernet == exported, dense == exported, `torch.allclose` atol 1e-5). The subnet of a budget: the max subnet
   at 100 %, else `space.sample(rng=<level>, flops_range=level x (1 -+ --tolerance))` (default +-3 %), or the min
   subnet where that range lies below the space's smallest subnet.
6. `scaling`: latency of the exported subnet along a ladder of FLOPs levels, `--levels` (default 10, 25, 50,
   75, 100 % of the max subnet's FLOPs; 100 % is always included, it is the reference), subnets chosen as in 5
   (the same subnet for a level both sections have), all levels timed interleaved in the same rounds. Reported:
   FLOPs / max, latency / max, the speed-up over the max subnet, and latency ratio / FLOPs ratio (1: latency
   proportional to FLOPs; above 1: the small subnet saves less time than FLOPs). Checked: exported == supernet at
   every level, every sampled subnet's FLOPs inside its level's range.

7. `train`: one training step (forward in train mode + cross-entropy + backward, grads set to None first) of the
   supernet at a fixed subnet vs the dense timm model of the same widths (5c), at the widths of each budget of 5,
   the space's smallest resolution, batch `--train-batch` (default 8), interleaved, median of `--train-repeats`
   (default 7) rounds after 1 warm-up; the loss and every gradient are checked equal first. Two variants of the
   supernet's step run in the same rounds: its old slicing views, and leaf cuts (`leaf_cut`: all its costs but the
   full-size gradients). The supernet/dense and supernet/slicing-views per-round ratios also get the sign test's
   95 % interval of their median (distribution-free; it needs 6 rounds or more).
8. `compile` (only when asked for; 6-21 s of compilation per budget on a quiet 2-core CPU, minutes on a loaded
   one): `torch.compile(supernet)` (default inductor backend, needs a C++ compiler on CPU) on `--compile-models`
   (default the first of `--models`): the first call after switching to each budget of 5 (compilation; graphs
   compiled and recompilations counted from torch._dynamo's counters), then `--compile-rounds` (default 10) rounds
   that switch through all budgets, timing set_subnet + compiled forward, set_subnet + eager forward and the dense
   model at each. A failed compile is reported, not fatal.

`--output FILE` also writes the report to FILE atomically (a temporary in the same folder, fsynced and renamed);
an existing FILE is refused unless `--force`.

The run ends with a summary table of the headline ratios per model and the wall time of every section. The
exit status is 1 if any correctness check fails (the ones the other benchmarks enforce, plus those of 5 and 6);
throughput and latency targets are reported, not enforced.

Run from the repository root:

    python benchmarks/speed.py                  # full settings, three models: estimated ~10 min on a 2-core VM
    python benchmarks/speed.py --sections compile --models pss_mobilenetv1  # torch.compile: ~40 s here, cold
    python benchmarks/speed.py --quick --models pss_mobilenetv2          # tiny settings, ~20 s (smoke test)
    python benchmarks/speed.py --sections latency scaling --models pss_resnet50 --batch-size 8 --threads 4

(The full-run estimate adds up per-section costs measured on a 2-core AMD EPYC VM at one thread, dominated by the
training steps and the BN calibration of pss_resnet50; it was not measured end to end.)
"""
from harness import (  # first: one thread
    benchmark_parser, format_table, max_abs_diff, parse_benchmark_args, print_header, threads_text, yes_no,
)

import argparse
import contextlib
import io
import statistics
import sys
import time
from typing import Dict, List, Sequence, Tuple
from unittest import mock

import timm
import torch
import torch.nn.functional as F

import bench_budget
import bench_models
import bench_pss
import timm_pss
from timm_pss import Subnet
from timm_pss.files import check_new_file, write_text_atomic
from timm_pss import slimmable
from timm_pss.slimmable import INFERENCE_CACHE_SUBNETS

SECTIONS = ('flops', 'sampling', 'step', 'budget', 'latency', 'scaling', 'train', 'compile')
DEFAULT_SECTIONS = SECTIONS[:-1]
ATOL = bench_models.ATOL
FULL_RUN_ESTIMATE = 'about 10 min on a 2-core VM at 1 thread for the three default models (estimated)'


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split('\n', 1)[0])
    parser.add_argument('--sections', nargs='+', default=list(DEFAULT_SECTIONS),
                        help=f'sections to run (space or comma separated), of: {" ".join(SECTIONS)}; default all but '
                             f'compile (seconds to minutes of compilation per budget)')
    parser.add_argument('--batch-size', type=int, default=1, help='batch size of the scaling forward passes (6)')
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 32],
                        help='batch sizes of the latency forward passes (5)')
    parser.add_argument('--large-batch-repeats', type=int, default=5,
                        help='timed latency rounds (5) at batch sizes above 1, median kept')
    parser.add_argument('--train-batch', type=int, default=8, help='batch size of the training steps (7)')
    parser.add_argument('--train-repeats', type=int, default=7, help='timed training-step rounds (7), median kept')
    parser.add_argument('--compile-models', nargs='+',
                        help='supernets of the compile section (8); default the first of --models')
    parser.add_argument('--compile-rounds', type=int, default=10,
                        help='timed rounds of budget switching with the compiled model (8), median kept')
    parser.add_argument('--output', help='also write the report to this file (atomically); it must not exist '
                                         'unless --force')
    parser.add_argument('--force', action='store_true', help='let --output replace an existing file')
    parser.add_argument('--repeats', type=int, default=50, help='timed latency rounds (5, 6), median kept')
    parser.add_argument('--warmup', type=int, default=5, help='untimed latency rounds first (5, 6)')
    parser.add_argument('--budgets', nargs='+', type=float, default=[25, 50, 100],
                        help='latency budgets (5), %% of the max subnet\'s FLOPs')
    parser.add_argument('--levels', nargs='+', type=float, default=[10, 25, 50, 75, 100],
                        help='FLOPs ladder (6), %% of the max subnet\'s FLOPs (100 is always added)')
    parser.add_argument('--tolerance', type=float, default=0.03,
                        help='subnets of a level have FLOPs within level x (1 -+ tolerance)')
    parser.add_argument('--train-steps', type=int, default=20, help='timed training steps per variant (3)')
    parser.add_argument('--calib-batches', type=int, default=4, help='calibrate_bn batches of the baseline (4)')
    parser.add_argument('--calib-repeats', type=int, default=1, help='timed baseline runs per budget (4)')
    args = parse_benchmark_args(parser, argv, positive=(
        'batch_size', 'repeats', 'train_steps', 'calib_batches', 'calib_repeats', 'large_batch_repeats',
        'train_batch', 'train_repeats', 'compile_rounds'),
        quick_limits=dict(batch_sizes=4, large_batch_repeats=3, train_batch=2, train_repeats=2, compile_rounds=2))
    if any(b < 1 for b in args.batch_sizes):
        parser.error('--batch-sizes must be at least 1')
    if args.output is not None:
        try:
            check_new_file(args.output, force=args.force)
        except ValueError as e:
            parser.error(str(e))
    args.batch_sizes = sorted(set(args.batch_sizes))
    args.compile_models = args.compile_models or args.models[:1]
    unknown = [m for m in args.compile_models if m not in timm.list_models('pss_*')]
    if unknown:
        parser.error(f'unknown --compile-models {unknown}; available: {timm.list_models("pss_*")}')
    args.sections = [s for item in args.sections for s in item.split(',') if s]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f'unknown sections {unknown}; available: {" ".join(SECTIONS)}')
    args.sections = [s for s in SECTIONS if s in args.sections]  # the documented order, each once
    if args.warmup < 0:
        parser.error('--warmup must be >= 0')
    if not 0 < args.tolerance < 1:
        parser.error('--tolerance must lie in (0, 1)')
    if any(not 0 < p <= 100 for p in args.budgets + args.levels):
        parser.error('--budgets and --levels are percentages in (0, 100]')
    args.budgets = sorted(set(p / 100 for p in args.budgets))
    args.levels = sorted(set(p / 100 for p in args.levels) | {1.0})

    # the other benchmarks' settings: their own parsers (defaults, --quick limits) with this run's overrides
    shared = ['--models', *args.models, '--threads', str(args.threads)] + (['--quick'] if args.quick else [])
    args.models_args = bench_models.parse_args(shared + [
        '--batch-size', str(args.batch_size), '--repeats', str(args.repeats), '--warmup', str(args.warmup)])
    args.pss_args = bench_pss.parse_args(shared + ['--steps', str(args.train_steps)])
    args.budget_args = bench_budget.parse_args(shared + [
        '--calib-batches', str(args.calib_batches), '--calib-repeats', str(args.calib_repeats)])
    return args


# ---------------------------------------------------------------------------------------------- reporting

def percent(p: float) -> str:
    return f'{100 * p:g}%'


def print_run_header(args: argparse.Namespace) -> None:
    facts = {'models': f'{", ".join(args.models)}; sections: {" ".join(args.sections)}',
             'threads': f'flops and sampling 1 (torch + BLAS), the other sections {args.threads} (torch), BLAS 1'}
    if {'flops', 'latency', 'scaling'} & set(args.sections):
        facts['settings, flops / latency (bench_models)'] = bench_models.settings_line(args.models_args)
    if {'sampling', 'step'} & set(args.sections):
        facts['settings, sampling / step (bench_pss)'] = bench_pss.settings_line(args.pss_args)
    if 'budget' in args.sections:
        facts['settings, budget (bench_budget)'] = bench_budget.settings_line(args.budget_args)
    if {'latency', 'scaling'} & set(args.sections):
        facts['settings, latency / scaling'] = (
            f'budgets {", ".join(percent(p) for p in args.budgets)} and ladder '
            f'{", ".join(percent(p) for p in args.levels)} of the max subnet\'s FLOPs, subnets within '
            f'+-{percent(args.tolerance)} of a level; batch {args.models_args.batch_size}, median of '
            f'{args.models_args.repeats} interleaved rounds after {args.models_args.warmup} warm-up')
    facts['full run (no --quick, all sections)'] = FULL_RUN_ESTIMATE
    print_header('timm_pss speed: ours vs the baselines, one run', facts)


# ---------------------------------------------------------------------------------------------- subnets at a level

def level_subnet(space, fraction: float, tolerance: float) -> Tuple[Subnet, str, Tuple[float, float]]:
    """The subnet at `fraction` of the max subnet's FLOPs, how it was chosen, and the level's FLOPs range.

    The max subnet at 100 %; the min subnet where the range lies at or below the space's smallest subnet; else a
    random subnet with FLOPs in [level x (1 - tolerance), level x (1 + tolerance)), seeded by the level (the same
    subnet for the same level, in every section)."""
    f_min, f_max = space.flops_span
    level = fraction * f_max
    lo, hi = level * (1 - tolerance), level * (1 + tolerance)
    if fraction >= 1:
        return space.max_subnet(), 'max subnet', (lo, hi)
    if hi <= f_min:
        return space.min_subnet(), 'min subnet', (lo, hi)
    return space.sample(rng=round(fraction * 10_000), flops_range=(lo, hi)), 'sampled', (lo, hi)


def subnet_lines(results: Sequence[dict]) -> None:
    for r in results:
        print(f'- {r["model"]} {percent(r["fraction"])} ({r["how"]}): {r["subnet"].resolution}px, '
              f'{list(r["subnet"].widths)}')


# ---------------------------------------------------------------------------------------------- 5. latency

def latency_settings(args: argparse.Namespace, batch: int) -> argparse.Namespace:
    """bench_models' latency settings at `batch`: --repeats rounds at batch 1, --large-batch-repeats above."""
    ns = argparse.Namespace(**vars(args.models_args))
    ns.batch_size = batch
    if batch > 1:
        ns.repeats, ns.warmup = min(ns.repeats, args.large_batch_repeats), min(ns.warmup, 2)
    return ns


def bench_budget_latency(name: str, args: argparse.Namespace) -> List[dict]:
    """Supernet vs exported vs dense baseline (bench_models.bench_subnet_latency) at each of args.budgets and
    args.batch_sizes."""
    torch.manual_seed(0)
    supernet = timm.create_model(name).eval()
    space = supernet.space
    results = []
    for batch in args.batch_sizes:
        ns = latency_settings(args, batch)
        for p in args.budgets:
            subnet, how, _ = level_subnet(space, p, args.tolerance)
            r = bench_models.bench_subnet_latency(supernet, subnet, ns)
            results.append(dict(model=name, batch=batch, repeats=ns.repeats, warmup=ns.warmup, fraction=p, how=how,
                                flops_ratio=1e6 * r['mmacs'] / space.flops_span[1], **r))
    return results


def quartile_cell(q: Sequence[float]) -> str:
    return f'{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]'


def interval_cell(interval) -> str:
    return 'n/a' if interval is None else f'[{interval[0]:.3f}, {interval[1]:.3f}]'


def report_budget_latency(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Forward latency at {len(args.budgets)} budgets: supernet (set_subnet) vs exported (export_subnet) '
          f'vs dense timm baseline (batch {", ".join(map(str, args.batch_sizes))}, {threads_text(args.threads)}, '
          f'median ms)')
    print()
    headers = (['model', 'batch', 'budget', 'FLOPs / max'] + bench_models.LATENCY_HEADERS[1:]
               + ['supernet/dense per round: median [q1, q3]', 'cache (MB)', 'subnet weights (MB)'])
    rows = [[r['model'], str(r['batch']), percent(r['fraction']), f'{r["flops_ratio"]:.3f}']
            + bench_models.latency_cells(r)[1:]
            + [quartile_cell(r['super_dense_quartiles']), f'{r["cache_mb"]:.2f}', f'{r["weights_mb"]:.2f}']
            for r in results]
    print(format_table(headers, rows))
    print()
    rounds = '; '.join(f'batch {b}: median of {r["repeats"]} rounds after {r["warmup"]} warm-up'
                       for b, r in {r['batch']: r for r in results}.items())
    print(f'Budget: % of the max subnet\'s FLOPs (MACs); FLOPs / max: the chosen subnet\'s. Supernet: the supernet '
          f'with the subnet active (eval, torch.no_grad: its inference cache serves the sliced weights); exported: '
          f'timm_pss.export_subnet; dense: an independent timm model of the same widths (adapt_model_from_string) '
          f'with the exported weights; all fed the batch at the subnet\'s resolution, interleaved ({rounds}). '
          f'Ratios: < 1x is faster than the dense model; per round: the supernet/dense ratio of each round, median '
          f'and quartiles (the spread on this machine). Cache: bytes the supernet\'s inference cache holds after the '
          f'run (copies of the input-cut conv/linear weights; timm_pss.slimmable.inference_cache_bytes); subnet '
          f'weights: the exported model\'s parameters. Equality: torch.allclose(atol={ATOL:g}) on the logits, max '
          f'|difference| in brackets.')
    print('Subnets (resolution, widths per group):')
    subnet_lines([r for r in results if r['batch'] == results[0]['batch']])
    print()
    return all(r['super_eq_export'] and r['dense_eq_export'] for r in results)


# ---------------------------------------------------------------------------------------------- 6. scaling

@torch.no_grad()
def bench_scaling(name: str, args: argparse.Namespace) -> List[dict]:
    """The exported subnet at every ladder level, checked against the supernet, then timed interleaved."""
    ns = args.models_args
    torch.manual_seed(0)
    supernet = timm.create_model(name).eval()
    space = supernet.space
    f_max = space.flops_span[1]
    levels, fns = [], []
    for p in args.levels:
        subnet, how, (lo, hi) = level_subnet(space, p, args.tolerance)
        supernet.set_subnet(subnet)
        exported = timm_pss.export_subnet(supernet)
        x = torch.randn(ns.batch_size, 3, subnet.resolution, subnet.resolution)
        y_super, y_export = supernet(x), exported(x)
        flops = space.flops(subnet)
        levels.append(dict(
            model=name, fraction=p, how=how, subnet=subnet, mmacs=flops / 1e6, flops_ratio=flops / f_max,
            in_level=how != 'sampled' or lo <= flops < hi,
            equal=torch.allclose(y_super, y_export, atol=ATOL), diff=max_abs_diff(y_super, y_export)))
        fns.append(lambda m=exported, x=x: m(x))
    for lv, ms in zip(levels, bench_models.interleaved_median_ms(fns, ns.repeats, ns.warmup)):
        lv['ms'] = ms
    ms_max = levels[-1]['ms']  # args.levels is sorted and ends with 1.0, the max subnet
    for lv in levels:
        lv['latency_ratio'] = lv['ms'] / ms_max
    return levels


def report_scaling(results: Sequence[dict], args: argparse.Namespace) -> bool:
    ns = args.models_args
    print(f'## Latency scaling with the FLOPs budget: the exported subnet along a FLOPs ladder '
          f'(batch {ns.batch_size}, {threads_text(args.threads)}, median ms)')
    print()
    headers = ['model', 'level', 'subnet', 'res', 'MMACs', 'FLOPs / max', 'exported (ms)', 'latency / max',
               'speed-up vs max', 'latency ratio / FLOPs ratio', 'in level', 'exported == supernet']
    rows = [[r['model'], percent(r['fraction']), r['how'], str(r['subnet'].resolution), f'{r["mmacs"]:.1f}',
             f'{r["flops_ratio"]:.3f}', f'{r["ms"]:.2f}', f'{r["latency_ratio"]:.3f}',
             f'{1 / r["latency_ratio"]:.2f}x', f'{r["latency_ratio"] / r["flops_ratio"]:.2f}', yes_no(r['in_level']),
             f'{yes_no(r["equal"])} ({r["diff"]:.1e})'] for r in results]
    print(format_table(headers, rows))
    print()
    print(f'Level: % of the max subnet\'s FLOPs; subnet: sampled with FLOPs within +-{percent(args.tolerance)} of '
          f'the level (in level: it is), or the min subnet where the level lies below the space, or the max '
          f'subnet. Exported (ms): timm_pss.export_subnet of that subnet at its own resolution, all levels of a '
          f'model interleaved in the same {ns.repeats} rounds after {ns.warmup} warm-up, median. Latency / max and '
          f'FLOPs / max: relative to the max subnet; speed-up vs max: its inverse of latency / max. Latency ratio / '
          f'FLOPs ratio: 1 when latency is proportional to FLOPs, above 1 when a smaller subnet saves less time '
          f'than FLOPs. Equality: torch.allclose(atol={ATOL:g}) of the exported and supernet logits.')
    for name in dict.fromkeys(r['model'] for r in results):
        ladder = [r for r in results if r['model'] == name]
        smaller = [r for r in ladder if r['fraction'] < 1]
        monotone = all(a['ms'] < b['ms'] for a, b in zip(ladder, ladder[1:]) if a['flops_ratio'] < b['flops_ratio'])
        line = f'- {name}: latency falls with every step down the ladder: {yes_no(monotone)}'
        if smaller:
            r = min(smaller, key=lambda r: abs(r['fraction'] - 0.25))
            line += (f'; the {percent(r["fraction"])} level ({r["flops_ratio"]:.2f}x the FLOPs) runs in '
                     f'{r["latency_ratio"]:.2f}x the max subnet\'s time, {1 / r["latency_ratio"]:.2f}x faster')
        print(line)
    print('Subnets (resolution, widths per group):')
    subnet_lines(results)
    print()
    return all(r['equal'] and r['in_level'] for r in results)


# ---------------------------------------------------------------------------------------------- 7. train

def leaf_cut(weight: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """`cut_weight`'s contiguous copy as a detached leaf: its gradient is subnet-sized and never reaches `weight`."""
    if out_channels == weight.shape[0] and in_channels == weight.shape[1]:
        return weight
    return weight[:out_channels, :in_channels].detach().contiguous().requires_grad_()


def bench_train_step(name: str, args: argparse.Namespace) -> List[dict]:
    """Forward + backward (cross-entropy, grads set to None first) of the supernet at a fixed subnet vs the dense
    timm model of the same widths, interleaved, at each of args.budgets' widths and the space's smallest resolution."""
    torch.manual_seed(0)
    supernet = timm.create_model(name).eval()
    space = supernet.space
    resolution = space.resolutions[0]
    results = []
    for p in args.budgets:
        level, how, _ = level_subnet(space, p, args.tolerance)
        subnet = supernet.set_subnet(Subnet(resolution, level.widths))
        dense = bench_models.build_dense_baseline(supernet, timm_pss.export_subnet(supernet.eval()))
        x = torch.randn(args.train_batch, 3, resolution, resolution)
        target = torch.randint(0, supernet.num_classes, (args.train_batch,))

        def step(model):
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            return loss

        def step_cutting_with(cut, model):
            with mock.patch.object(slimmable, 'cut_weight', cut):
                return step(model)

        supernet.train(), dense.train()
        equal = torch.allclose(step(supernet), step(dense), atol=1e-4)
        grads_equal = all(torch.allclose(p_s.grad[tuple(slice(0, n) for n in p_d.shape)], p_d.grad, atol=1e-4)
                          for p_s, p_d in zip(supernet.parameters(), dense.parameters()))
        times = bench_models.interleaved_times_ms(
            [lambda: step(supernet),
             # the layers' training path before `cut_weight`: chained slicing views, whose backward fills twice
             lambda: step_cutting_with(lambda weight, cout, cin: weight[:cout, :cin], supernet),
             # every cost of the supernet's step but its full-size gradients (the weights learn nothing)
             lambda: step_cutting_with(leaf_cut, supernet),
             lambda: step(dense)],
            args.train_repeats, warmup=1)
        vs_views = bench_models.per_round_ratios(times[0], times[1])
        results.append(dict(model=name, fraction=p, how=how, subnet=subnet, mmacs=space.flops(subnet) / 1e6,
                            ms_super=statistics.median(times[0]), ms_views=statistics.median(times[1]),
                            ms_leaf=statistics.median(times[2]), ms_dense=statistics.median(times[3]),
                            quartiles=bench_models.ratio_quartiles(times[0], times[3]),
                            interval=bench_models.median_interval(bench_models.per_round_ratios(times[0], times[3])),
                            vs_views=(statistics.median(vs_views), bench_models.median_interval(vs_views)),
                            views_quartiles=bench_models.ratio_quartiles(times[1], times[3]),
                            leaf_quartiles=bench_models.ratio_quartiles(times[2], times[3]),
                            equal=equal and grads_equal))
    return results


def report_train_step(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Training step (forward + backward) at a fixed subnet: supernet vs dense timm model of the same widths '
          f'(batch {args.train_batch}, {threads_text(args.threads)}, median ms)')
    print()
    headers = ['model', 'budget widths', 'res', 'MMACs', 'supernet (ms)', 'slicing views (ms)', 'leaf cuts (ms)',
               'dense (ms)', 'supernet/dense', 'per round: median [q1, q3]', '95% interval of the median',
               'slicing views/dense, per round', 'leaf cuts/dense, per round',
               'supernet/slicing views, per round: median [95% interval]', 'loss and grads equal']
    rows = [[r['model'], percent(r['fraction']), str(r['subnet'].resolution), f'{r["mmacs"]:.1f}',
             f'{r["ms_super"]:.1f}', f'{r["ms_views"]:.1f}', f'{r["ms_leaf"]:.1f}', f'{r["ms_dense"]:.1f}',
             f'{r["ms_super"] / r["ms_dense"]:.3f}x', quartile_cell(r['quartiles']), interval_cell(r['interval']),
             quartile_cell(r['views_quartiles']), quartile_cell(r['leaf_quartiles']),
             f'{r["vs_views"][0]:.3f} {interval_cell(r["vs_views"][1])}', yes_no(r['equal'])]
            for r in results]
    print(format_table(headers, rows))
    print()
    print(f'Budget widths: the widths of the latency section\'s subnet for that budget, run at the space\'s smallest '
          f'resolution. A step: zero_grad(set_to_none=True), forward in train mode (batch statistics), cross-entropy, '
          f'backward; the supernet cuts its full weights (timm_pss.slimmable.cut_weight: gradients land in full-size '
          f'.grad tensors, zero outside the subnet), the dense model has weights of the subnet\'s size; slicing '
          f'views: the supernet with plain slicing views instead of cut_weight (the path before it); leaf cuts: the '
          f'supernet with each cut weight copied into a detached leaf whose subnet-sized gradient is dropped, i.e. '
          f'every cost of its step but the full-size gradients (its weights learn nothing). Interleaved, median of '
          f'{args.train_repeats} rounds after 1 warm-up; per round: the ratio of each round, median and quartiles; '
          f'95% interval of the median: the sign test\'s distribution-free interval of the supernet/dense per-round '
          f'median (bench_models.median_interval; n/a below 6 rounds); supernet/slicing views: does cut_weight beat '
          f'the path it replaced, per round, with the same interval. '
          f'Equal: loss and every gradient (the supernet\'s cut to the dense shape) torch.allclose(atol=1e-4).')
    print()
    return all(r['equal'] for r in results)


# ---------------------------------------------------------------------------------------------- 8. compile

def compile_counters() -> Tuple[int, int]:
    """(graphs compiled, recompilations) by torch.compile so far in this process."""
    from torch._dynamo.utils import counters
    return counters['stats']['unique_graphs'], sum(counters['recompiles'].values())


@torch.no_grad()
def bench_compile(name: str, args: argparse.Namespace) -> dict:
    """torch.compile(model) with budget switching: the first call at each budget (compile), then rounds that switch
    through all budgets, timing the compiled model, the eager supernet and the dense model at each."""
    torch.manual_seed(0)
    supernet = timm.create_model(name).eval()
    space = supernet.space
    subnets = [level_subnet(space, p, args.tolerance)[0] for p in args.budgets]
    inputs = [torch.randn(1, 3, s.resolution, s.resolution) for s in subnets]
    dense = []
    for s in subnets:
        supernet.set_subnet(s)
        dense.append(bench_models.build_dense_baseline(supernet, timm_pss.export_subnet(supernet)))
    torch._dynamo.reset()
    compiled = torch.compile(supernet)
    first = []
    try:
        for s, x in zip(subnets, inputs):
            supernet.set_subnet(s)
            before = compile_counters()
            t0 = time.perf_counter()
            y = compiled(x)
            seconds = time.perf_counter() - t0
            after = compile_counters()
            first.append(dict(subnet=s, seconds=seconds, graphs=after[0] - before[0],
                              equal=torch.allclose(y, supernet(x), atol=1e-4)))
    except Exception as e:  # noqa: BLE001  e.g. no C++ compiler for the CPU inductor backend
        return dict(model=name, error=f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
    before = compile_counters()
    fns = []
    for s, x, d in zip(subnets, inputs, dense):
        fns += [lambda s=s, x=x: (supernet.set_subnet(s), compiled(x)), lambda s=s, x=x: (supernet.set_subnet(s),
                supernet(x)), lambda x=x, d=d: d(x)]
    times = bench_models.interleaved_times_ms(fns, args.compile_rounds, warmup=1)
    after = compile_counters()
    steady = [dict(ms_compiled=statistics.median(times[3 * i]), ms_eager=statistics.median(times[3 * i + 1]),
                   ms_dense=statistics.median(times[3 * i + 2]),
                   quartiles=bench_models.ratio_quartiles(times[3 * i], times[3 * i + 2])) for i in range(len(subnets))]
    return dict(model=name, first=first, steady=steady, graphs_while_switching=after[0] - before[0],
                recompiles_while_switching=after[1] - before[1])


def report_compile(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## torch.compile(model) with budget switching (batch 1, {threads_text(args.threads)})')
    print()
    rows = []
    for r in results:
        if 'error' in r:
            print(f'- {r["model"]}: torch.compile failed here: {r["error"]}')
            continue
        for p, f, st in zip(args.budgets, r['first'], r['steady']):
            rows.append([r['model'], percent(p), str(f['subnet'].resolution), f'{f["seconds"]:.1f}', str(f['graphs']),
                         f'{st["ms_compiled"]:.2f}', f'{st["ms_eager"]:.2f}', f'{st["ms_dense"]:.2f}',
                         f'{st["ms_compiled"] / st["ms_dense"]:.2f}x', f'{st["ms_eager"] / st["ms_dense"]:.2f}x',
                         quartile_cell(st['quartiles']), yes_no(f['equal'])])
    if rows:
        print(format_table(['model', 'budget', 'res', 'first call (s)', 'graphs compiled', 'compiled (ms)',
                            'eager (ms)', 'dense (ms)', 'compiled/dense', 'eager/dense',
                            'compiled/dense per round: median [q1, q3]', 'compiled == eager'], rows))
        print()
        for r in results:
            if 'error' not in r:
                print(f'- {r["model"]}: while switching through the {len(r["first"])} budgets for '
                      f'{args.compile_rounds} rounds (+1 warm-up): {r["graphs_while_switching"]} graphs compiled, '
                      f'{r["recompiles_while_switching"]} recompilations')
        print()
        print(f'First call: set_subnet then the compiled model\'s first forward at that budget, in budget order '
              f'(compilation included; graphs compiled: by torch.compile during that call). Then every round switches '
              f'through all budgets: set_subnet + compiled forward, set_subnet + eager supernet forward (its '
              f'inference cache keeps up to {INFERENCE_CACHE_SUBNETS} width settings per layer), the dense model of '
              f'that subnet; median of '
              f'{args.compile_rounds} rounds. Compiled == eager: torch.allclose(atol=1e-4).')
    print()
    return all(f['equal'] for r in results if 'error' not in r for f in r['first'])


# ---------------------------------------------------------------------------------------------- summary

def summarize(section: str, results, summary: Dict[str, Dict[str, str]]) -> None:
    """Add a section's headline ratio(s) per model to `summary` (model -> column -> cell)."""
    if section == 'flops':
        for r in results:
            summary[r['model']]['flops_many / scalar'] = f'{r["many_per_s"] / r["scalar_per_s"]:,.0f}x'
    elif section == 'sampling':
        for r in results:
            ours, base = r['ours'], min(r['baselines'], key=lambda b: b['draws'])
            ratio = (ours['in_bucket_draws'] / ours['seconds']) / (base['in_bucket_draws'] / base['seconds'])
            summary[r['model']][f'in-bucket draws/s vs rejection N={base["draws"]:,}'] = f'{ratio:,.1f}x'
            rarest_ours, rarest_base = (m['per_bucket'][0] / m['seconds'] for m in (ours, base))
            summary[r['model']]['rarest-bucket draws/s vs rejection'] = (
                f'{rarest_ours / rarest_base:,.0f}x' if rarest_base > 0 else 'inf (empty buckets)')
            summary[r['model']]['buckets reached ours / rejection'] = (
                f'{ours["reached"]} / {base["reached"]} of {r["buckets"]}')
    elif section == 'step':
        for r in results:
            summary[r['model']]['PSS / uniform step'] = f'{r["ms_pss"] / r["ms_uni"]:.3f}x'
    elif section == 'budget':
        for r in results:
            speedups = [row['ms_base'] / row['ms_ours'] for row in r['rows']]
            summary[r['model']]['set_budget vs recalibration (min)'] = f'{min(speedups):,.0f}x'
    elif section == 'latency':
        for name in dict.fromkeys(r['model'] for r in results):
            for batch in dict.fromkeys(r['batch'] for r in results):
                rs = [r for r in results if r['model'] == name and r['batch'] == batch]
                budgets = '/'.join(f'{100 * r["fraction"]:g}' for r in rs)
                at = f'at {budgets}%' + ('' if batch == 1 else f', batch {batch}')
                summary[name][f'exported / dense {at}'] = ' / '.join(
                    f'{r["ms_export"] / r["ms_dense"]:.2f}' for r in rs)
                summary[name][f'supernet / dense {at}'] = ' / '.join(
                    f'{r["ms_super"] / r["ms_dense"]:.2f}' for r in rs)
    elif section == 'train':
        for name in dict.fromkeys(r['model'] for r in results):
            rs = [r for r in results if r['model'] == name]
            budgets = '/'.join(f'{100 * r["fraction"]:g}' for r in rs)
            summary[name][f'train step supernet / dense at {budgets}% (per-round median)'] = ' / '.join(
                f'{r["quartiles"][1]:.2f}' for r in rs)
    elif section == 'compile':
        for r in results:
            if 'error' not in r:
                summary.setdefault(r['model'], {})['compiled / dense (after first calls)'] = ' / '.join(
                    f'{st["ms_compiled"] / st["ms_dense"]:.2f}' for st in r['steady'])
    elif section == 'scaling':
        for name in dict.fromkeys(r['model'] for r in results):
            smaller = [r for r in results if r['model'] == name and r['fraction'] < 1]
            if smaller:
                r = min(smaller, key=lambda r: abs(r['fraction'] - 0.25))
                summary[name][f'latency / max at {percent(r["fraction"])} FLOPs'] = (
                    f'{r["latency_ratio"]:.2f}x ({r["flops_ratio"]:.2f}x FLOPs)')


def report_summary(summary: Dict[str, Dict[str, str]], seconds: Dict[str, float], failed: List[str]) -> None:
    print('## Summary')
    print()
    columns = list(dict.fromkeys(c for cells in summary.values() for c in cells))
    print(format_table(['model'] + columns, [[name] + [cells.get(c, '-') for c in columns]
                                             for name, cells in summary.items()]))
    print()
    print('All measured in this run, ours against the baseline of the same section. Speeds, higher is better: '
          'flops_many / scalar (subnets/s), in-bucket and rarest-bucket draws/s vs rejection (ours / the smallest '
          'rejection baseline, the reference\'s 30,000-subnet map; rarest: the bucket that got fewest draws), '
          'set_budget vs recalibration (recalibration ms / set_budget ms, the lowest over the budgets). Times, '
          'lower is better: PSS / uniform step, exported / dense and supernet / dense (latency at each budget), '
          'latency / max (the exported subnet nearest 25 % of the max FLOPs, against the max subnet). '
          'Section wall times: ' + ', '.join(f'{s} {t:.1f} s' for s, t in seconds.items())
          + f' (total {sum(seconds.values()):.1f} s).')
    print(f'Correctness checks: {"all passed" if not failed else "FAILED in " + ", ".join(failed)}.')


# ---------------------------------------------------------------------------------------------- main

def run_section(section: str, args: argparse.Namespace):
    """(results, ok) of one section: measured for every model, then its tables printed."""
    if section == 'flops':
        torch.set_num_threads(1)
        results = [bench_models.bench_flops(name, args.models_args) for name in args.models]
        return results, bench_models.report_flops(results)
    if section == 'sampling':
        torch.set_num_threads(1)
        results = [bench_pss.bench_sampling(name, args.pss_args) for name in args.models]
        return results, bench_pss.report_sampling(results, args.pss_args)
    torch.set_num_threads(args.threads)
    if section == 'step':
        results = [bench_pss.bench_training(name, args.pss_args) for name in args.models]
        return results, bench_pss.report_training(results, args.pss_args)
    if section == 'budget':
        results = [bench_budget.bench_budget(name, args.budget_args) for name in args.models]
        return results, bench_budget.report(results, args.budget_args)
    if section == 'latency':
        results = [r for name in args.models for r in bench_budget_latency(name, args)]
        return results, report_budget_latency(results, args)
    if section == 'train':
        results = [r for name in args.models for r in bench_train_step(name, args)]
        return results, report_train_step(results, args)
    if section == 'compile':
        results = [bench_compile(name, args) for name in args.compile_models]
        return results, report_compile(results, args)
    results = [r for name in args.models for r in bench_scaling(name, args)]
    return results, report_scaling(results, args)


class Tee(io.TextIOBase):
    """A text stream that writes to `stream` and keeps a copy (the report for --output)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.output is None:
        return run_benchmark(args)
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        status = run_benchmark(args)
    write_text_atomic(args.output, tee.copy.getvalue() + f'rc={status}\n')
    return status


def run_benchmark(args: argparse.Namespace) -> int:
    print_run_header(args)
    summary = {name: {} for name in args.models}
    seconds, failed = {}, []
    for section in args.sections:
        t0 = time.perf_counter()
        results, ok = run_section(section, args)
        seconds[section] = time.perf_counter() - t0
        summarize(section, results, summary)
        if not ok:
            failed.append(section)
        sys.stdout.flush()
    report_summary(summary, seconds, failed)
    if failed:
        print(f'FAILED: a correctness check says NO in: {", ".join(failed)}.', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
