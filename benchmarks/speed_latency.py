"""benchmarks/speed.py's latency sections: 5. `latency`, the forward latency of the supernet, the exported subnet and
an independent dense timm model at each budget; 6. `scaling`, the exported subnet's latency along a FLOPs ladder.
Both choose a level's subnet with `level_subnet`, so a level both sections have gets the same subnet."""
from harness import (  # first: one thread
    format_table, interleaved_median_ms, max_abs_diff, percent, quartile_cell, threads_text, yes_no,
)

import argparse
from typing import List, Sequence, Tuple

import timm
import torch

import bench_models
import timm_pss
from timm_pss import Subnet

__all__ = ['level_subnet', 'subnet_lines', 'bench_budget_latency', 'report_budget_latency', 'bench_scaling',
           'report_scaling']

ATOL = bench_models.ATOL


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
    for lv, ms in zip(levels, interleaved_median_ms(fns, ns.repeats, ns.warmup)):
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
