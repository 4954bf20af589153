"""benchmarks/speed.py's section 8, `compile`: `torch.compile(supernet)` with budget switching, against the eager
supernet and the dense model of each budget."""
from harness import (  # first: one thread
    format_table, interleaved_times_ms, percent, quartile_cell, ratio_quartiles, threads_text, yes_no,
)

import argparse
import statistics
import time
from typing import Sequence, Tuple

import timm
import torch

import bench_models
import timm_pss
from timm_pss.slimmable import INFERENCE_CACHE_SUBNETS
from speed_latency import level_subnet

__all__ = ['compile_counters', 'bench_compile', 'report_compile']


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
    times = interleaved_times_ms(fns, args.compile_rounds, warmup=1)
    after = compile_counters()
    steady = [dict(ms_compiled=statistics.median(times[3 * i]), ms_eager=statistics.median(times[3 * i + 1]),
                   ms_dense=statistics.median(times[3 * i + 2]),
                   quartiles=ratio_quartiles(times[3 * i], times[3 * i + 2])) for i in range(len(subnets))]
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
