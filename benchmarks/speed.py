"""Speed of timm_pss against the baselines, one run: every ratio measured against a baseline in the same process.

What it measures, per model (`--models`, default `pss_mobilenetv1`, `pss_mobilenetv2`, `pss_resnet50`), in eight
sections (`--sections`, default all but `compile`, in this order). The first four reuse the other benchmarks'
functions and print their tables; see those scripts for the details. The other four are this run's own modules,
`speed_latency.py` (5, 6), `speed_train.py` (7) and `speed_compile.py` (8); this file runs the sections and sums up.

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
    benchmark_parser, format_table, parse_benchmark_args, percent, print_header,
)

import argparse
import contextlib
import io
import sys
import time
from typing import Dict, List

import timm
import torch

import bench_budget
import bench_models
import bench_pss
import speed_compile
import speed_latency
import speed_train
from timm_pss.files import check_new_file, write_text_atomic

SECTIONS = ('flops', 'sampling', 'step', 'budget', 'latency', 'scaling', 'train', 'compile')
DEFAULT_SECTIONS = SECTIONS[:-1]
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
        results = [r for name in args.models for r in speed_latency.bench_budget_latency(name, args)]
        return results, speed_latency.report_budget_latency(results, args)
    if section == 'train':
        results = [r for name in args.models for r in speed_train.bench_train_step(name, args)]
        return results, speed_train.report_train_step(results, args)
    if section == 'compile':
        results = [speed_compile.bench_compile(name, args) for name in args.compile_models]
        return results, speed_compile.report_compile(results, args)
    results = [r for name in args.models for r in speed_latency.bench_scaling(name, args)]
    return results, speed_latency.report_scaling(results, args)


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
