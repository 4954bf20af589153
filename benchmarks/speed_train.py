"""benchmarks/speed.py's section 7, `train`: one training step of the supernet at a fixed subnet vs the dense timm
model of the same widths, with the supernet's slicing-view and leaf-cut variants timed in the same rounds."""
from harness import (  # first: one thread
    format_table, interleaved_times_ms, interval_cell, median_interval, per_round_ratios, percent, quartile_cell,
    ratio_quartiles, threads_text, yes_no,
)

import argparse
import statistics
from typing import List, Sequence
from unittest import mock

import timm
import torch
import torch.nn.functional as F

import bench_models
import timm_pss
from timm_pss import Subnet, slimmable
from speed_latency import level_subnet

__all__ = ['leaf_cut', 'bench_train_step', 'report_train_step']


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
        times = interleaved_times_ms(
            [lambda: step(supernet),
             # the layers' training path before `cut_weight`: chained slicing views, whose backward fills twice
             lambda: step_cutting_with(lambda weight, cout, cin: weight[:cout, :cin], supernet),
             # every cost of the supernet's step but its full-size gradients (the weights learn nothing)
             lambda: step_cutting_with(leaf_cut, supernet),
             lambda: step(dense)],
            args.train_repeats, warmup=1)
        vs_views = per_round_ratios(times[0], times[1])
        results.append(dict(model=name, fraction=p, how=how, subnet=subnet, mmacs=space.flops(subnet) / 1e6,
                            ms_super=statistics.median(times[0]), ms_views=statistics.median(times[1]),
                            ms_leaf=statistics.median(times[2]), ms_dense=statistics.median(times[3]),
                            quartiles=ratio_quartiles(times[0], times[3]),
                            interval=median_interval(per_round_ratios(times[0], times[3])),
                            vs_views=(statistics.median(vs_views), median_interval(vs_views)),
                            views_quartiles=ratio_quartiles(times[1], times[3]),
                            leaf_quartiles=ratio_quartiles(times[2], times[3]),
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
          f'median (harness.median_interval; n/a below 6 rounds); supernet/slicing views: does cut_weight beat '
          f'the path it replaced, per round, with the same interval. '
          f'Equal: loss and every gradient (the supernet\'s cut to the dense shape) torch.allclose(atol=1e-4).')
    print()
    return all(r['equal'] for r in results)
