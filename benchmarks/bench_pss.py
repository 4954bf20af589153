"""Benchmark PSS sampling: in-bucket subnet sampling vs rejection sampling, and the PSS step vs a uniform sandwich.

What it measures, per model (`--models`, default `pss_mobilenetv1` only), on one thread:

0. Setup, not a result: the one-off cost of a space's candidate bank. `space.sample_many(..., flops_range=...)`
   builds the bank (`space.candidate_bank`, up to `bank_size` distinct subnets sorted by FLOPs) lazily on its first
   call; the first and the second in-bucket `space.sample` call of a cold space are timed separately.
1. In-bucket sampling over PSS's FLOPs buckets. For `pss_mobilenetv1` these are the reference's buckets, centres
   110 .. 570 MMACs in 10M steps (47 buckets, each centre +- 5M, [lo, hi)); for other models 47 buckets spread
   evenly from the min to the max subnet (`bucket_targets(space, num_pools=47)`).
     a. ours: `space.sample_many(k, rng, flops_range=bucket)` for every bucket (`--per-bucket` k draws each),
        best wall time of `--repeats` passes over all buckets, reported as in-bucket draws/s overall; then, on
        the drawn subnets (untimed), the share of buckets reached (must be all), distinct subnets per bucket
        (min / median), and whether every draw's `flops_many` lies in its bucket (must be all). Also the
        training loop's use, single draws `space.sample(generator, flops_range=bucket)` cycling through the
        buckets (`--single-draws` calls), per second.
     b. the baseline, the reference implementation's approach: rejection sampling from uniform random subnets.
        Draw N uniform subnets (`space.sample_many(N, rng)`), compute `flops_many`, and count the subnets in
        each bucket; N = 30,000 (the size of the reference's FLOPs map) and 1,000,000 (`--baseline-sizes`).
        In-bucket draws/s = subnets that landed in any bucket / seconds of generating + FLOPs + counting (best
        of `--repeats`). The buckets each N leaves empty are listed.
   Target: >= 20,000 in-bucket draws/s for ours (vectorised), every bucket reached. Ratios: ours / baseline.
2. Training step time: `PSSTask` with a `PrioritizedSubnetSampler` (47 buckets spread evenly over the training space,
   pools of `--pool-size`, default 50, 10 with --quick) vs `PSSTask` with a `SpaceUniformSampler` (the plain
   sandwich rule), both max + 1 middle + min subnet, same initial weights (a deep copy), SGD (lr 0.01, momentum 0.9)
   step included. The model is built with `num_classes=10` and `resolution_range=(S, S, 8)` where S is `--image-size`
   (default 64), so the batch (`--batch-size`, default 32, random images and labels, one fixed batch) runs at its own
   size rather than being resized to 128..224 px; the search space is then the widths at that resolution. The PSS
   pools are pre-filled to steady state (propose/update with random scores until every pool is full, or none has
   grown in 5,000 calls: a bucket with fewer candidates than the pool size never fills) and progress is set to
   `--progress` (default 0.5: p_random 0.1, so 90 % of middle subnets come from the pools). After `--warmup` rounds,
   `--steps` rounds each run one step of both variants, the order alternating per round so load hits both alike;
   median ms per step, ratio PSS / uniform (target <= 1.05x). The middle subnets differ by design (PSS: uniform over
   FLOPs buckets; uniform: uniform over width choices), so their mean MMACs are shown too. The sampler's own cost,
   `sampler.propose()` + `sampler.update(...)` per step, is timed alone (`--overhead-calls` calls, same steady state,
   mean ms) for both samplers.

Run from the repository root:

    python benchmarks/bench_pss.py                          # full settings (about 40 s on a 2-core VM)
    python benchmarks/bench_pss.py --quick                  # tiny settings, about 10 s (smoke test)
    python benchmarks/bench_pss.py --models pss_mobilenetv1 pss_mobilenetv2 pss_resnet50 --image-size 96

The tables are markdown, ready to paste into the README. The exit status is 1 if any correctness check fails
(a bucket our sampler does not reach, a draw outside its bucket, a PSS pool that changed size during the timing,
a non-finite loss); the
throughput and step-time targets are reported, not enforced.
"""
from harness import (  # first: one thread
    benchmark_parser, best_time, format_table, parse_benchmark_args, print_header, quick_note, run_parts,
    threads_text, yes_no,
)

import argparse
import copy
import statistics
import sys
import time
from functools import partial
from typing import Sequence, Tuple

import numpy as np
import timm
import torch

from timm_pss import SearchSpace  # (importing timm_pss registers the pss_* models)
from timm_pss.pss import PrioritizedSubnetSampler, PSSTask, SpaceUniformSampler, bucket_targets

REFERENCE_BUCKETS = {'pss_mobilenetv1': (110e6, 570e6, 10e6)}  # the reference implementation's (lo, hi, step)
NUM_BUCKETS = 47  # as many as the reference's, for the other models and for the training space
REFERENCE_MAP_SIZE = 30_000  # uniform subnets in the reference's FLOPs map
TARGET_DRAWS_PER_S = 20_000
TARGET_STEP_RATIO = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split('\n', 1)[0], default_models=('pss_mobilenetv1',))
    parser.add_argument('--per-bucket', type=int, default=2000, help='in-bucket draws per bucket (ours, vectorised)')
    parser.add_argument('--baseline-sizes', nargs='+', type=int, default=[REFERENCE_MAP_SIZE, 1_000_000],
                        help='uniform subnets drawn by the rejection-sampling baseline, one run per size')
    parser.add_argument('--single-draws', type=int, default=5000, help='timed single space.sample calls')
    parser.add_argument('--repeats', type=int, default=3, help='throughput timings, best one kept')
    parser.add_argument('--image-size', type=int, default=64, help='training resolution (the space\'s only one)')
    parser.add_argument('--batch-size', type=int, default=32, help='images per training step')
    parser.add_argument('--steps', type=int, default=20, help='timed training steps per variant (median)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed training steps per variant first')
    parser.add_argument('--overhead-calls', type=int, default=2000, help='timed propose + update calls per sampler')
    parser.add_argument('--progress', type=float, default=0.5, help='PSS schedule progress during the timing')
    parser.add_argument('--pool-size', type=int, default=50, help='subnets per PSS pool in the training part')
    args = parse_benchmark_args(parser, argv, positive=(
        'per_bucket', 'single_draws', 'repeats', 'image_size', 'batch_size', 'steps', 'overhead_calls', 'pool_size'),
        quick_limits=dict(per_bucket=200, baseline_sizes=100_000, single_draws=500, repeats=2, image_size=32,
                          batch_size=8, steps=3, warmup=1, overhead_calls=300, pool_size=10))
    if args.warmup < 0 or any(n < 1 for n in args.baseline_sizes):
        parser.error('--warmup must be >= 0 and every --baseline-sizes entry >= 1')
    if not 0.0 <= args.progress <= 1.0:
        parser.error('--progress must lie in [0, 1]')
    return args


# ---------------------------------------------------------------------------------------------- reporting

def settings_line(args: argparse.Namespace) -> str:
    """Draws, rejection sizes, training-step size and rounds, one line for the header (here and in speed.py)."""
    return (f'{args.per_bucket:,} draws per bucket, rejection baseline N = '
            f'{", ".join(f"{n:,}" for n in args.baseline_sizes)}, best of {args.repeats}; '
            f'{args.single_draws:,} single draws; training {args.image_size}px batch {args.batch_size}, median of '
            f'{args.steps} steps after {args.warmup} warm-up, progress {args.progress:g}'
            f'{quick_note(args)}')


def mmacs(flops: float) -> str:
    return f'{flops / 1e6:.0f}' if flops >= 1e8 else f'{flops / 1e6:.1f}'


# ---------------------------------------------------------------------------------------------- 1. sampling

def buckets_for(name: str, space: SearchSpace) -> Tuple[np.ndarray, float, str]:
    """Bucket centres, width and a description: the reference's for pss_mobilenetv1, else 47 over the span."""
    if name in REFERENCE_BUCKETS:
        lo, hi, step = REFERENCE_BUCKETS[name]
        targets, step = bucket_targets(space, (lo, hi, step))
        return targets, step, f'reference {lo / 1e6:.0f}..{hi / 1e6:.0f}M step {step / 1e6:.0f}M'
    targets, step = bucket_targets(space, num_pools=NUM_BUCKETS)
    return targets, step, f'{len(targets)} over the span, step {step / 1e6:.2f}M'


def count_in_buckets(flops: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Subnets per bucket [edges[i], edges[i + 1])."""
    idx = np.searchsorted(edges, flops, side='right') - 1
    ok = (idx >= 0) & (idx < edges.size - 1)
    return np.bincount(idx[ok], minlength=edges.size - 1)


def bench_sampling(name: str, args: argparse.Namespace) -> dict:
    space = timm.create_model(name, device='meta').space
    targets, step, described = buckets_for(name, space)
    ranges = [(t - step / 2, t + step / 2) for t in targets]
    edges = np.append(targets - step / 2, targets[-1] + step / 2)
    nb = len(targets)

    # 0. setup: a cold space's first in-bucket call builds the bank; a second call is the steady cost.
    cold = space if not hasattr(space, '_bank_cache') else SearchSpace(
        space.group_names, space.width_choices, space.resolutions, space.mac_terms)
    t0 = time.perf_counter()
    cold.sample(0, flops_range=ranges[0])
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold.sample(1, flops_range=ranges[0])
    second_s = time.perf_counter() - t0
    bank_flops, _ = space.candidate_bank
    bank_per_bucket = count_in_buckets(bank_flops, edges)

    # 1a. ours, vectorised: k draws in every bucket.
    k = args.per_bucket
    rng = np.random.default_rng(0)
    t_ours, batches = best_time(lambda: [space.sample_many(k, rng, flops_range=r) for r in ranges], args.repeats)
    in_bucket, reached, distinct = True, 0, []
    for (lo, hi), batch in zip(ranges, batches):
        f = space.flops_many(batch)
        inside = bool(((f >= lo) & (f < hi)).all()) and len(batch) == k
        in_bucket &= inside
        reached += int(inside and len(batch) > 0)
        rows = np.concatenate([batch.resolutions[:, None], batch.widths], axis=1)
        distinct.append(np.unique(rows, axis=0).shape[0])
    ours = dict(method=f'ours: sample_many(k={k:,}, flops_range) per bucket', draws=k * nb,
                in_bucket_draws=k * nb, seconds=t_ours, reached=reached,
                per_bucket=(k, k), distinct=(min(distinct), statistics.median(distinct)), all_in_bucket=in_bucket)

    # 1a'. ours, single draws as the training loop makes them (one bucket per call, cycling).
    gen = np.random.default_rng(1)
    t0 = time.perf_counter()
    for i in range(args.single_draws):
        space.sample(gen, flops_range=ranges[i % nb])
    single_per_s = args.single_draws / (time.perf_counter() - t0)

    # 1b. the baseline: rejection sampling from N uniform subnets.
    baselines = []
    for n in args.baseline_sizes:
        rng_b = np.random.default_rng(2)

        def reject(n=n, rng_b=rng_b):
            batch = space.sample_many(n, rng_b)
            return count_in_buckets(space.flops_many(batch), edges)

        t_base, counts = best_time(reject, args.repeats)
        baselines.append(dict(method=f'baseline: rejection from N={n:,} uniform', draws=n,
                              in_bucket_draws=int(counts.sum()), seconds=t_base, reached=int((counts > 0).sum()),
                              per_bucket=(int(counts.min()), statistics.median(counts.tolist())),
                              distinct=None, all_in_bucket=None,
                              empty=[t for t, c in zip(targets, counts) if c == 0]))
    return dict(model=name, space=space, buckets=nb, described=described, step=step, first_s=first_s,
                second_s=second_s, bank=len(bank_flops), bank_per_bucket=bank_per_bucket, ours=ours,
                baselines=baselines, single_per_s=single_per_s, span=space.flops_span)


def report_sampling(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print('## In-bucket subnet sampling: vectorised bank sampling vs rejection from uniform subnets, 1 thread')
    print()
    headers = ['model', 'method', 'draws', 'time (ms)', 'in-bucket draws/s', 'ours / this',
               'rarest-bucket draws/s', 'buckets reached',
               'per bucket min / median', 'distinct per bucket min / median', 'all draws in bucket']
    rows = []
    for r in results:
        ours_rate = r['ours']['in_bucket_draws'] / r['ours']['seconds']
        for m in [r['ours']] + r['baselines']:
            rate = m['in_bucket_draws'] / m['seconds']
            rows.append([
                r['model'], m['method'], f'{m["draws"]:,}', f'{1e3 * m["seconds"]:,.1f}', f'{rate:,.0f}',
                '-' if m is r['ours'] else f'{ours_rate / rate:,.1f}x',
                f'{m["per_bucket"][0] / m["seconds"]:,.0f}',
                f'{m["reached"]}/{r["buckets"]}', f'{m["per_bucket"][0]:,} / {m["per_bucket"][1]:,.0f}',
                '-' if m['distinct'] is None else f'{m["distinct"][0]:,} / {m["distinct"][1]:,.0f}',
                '-' if m['all_in_bucket'] is None else yes_no(m['all_in_bucket']),
            ])
    print(format_table(headers, rows))
    print()
    print('In-bucket draws/s: subnets with FLOPs inside a bucket per second (ours: all k x buckets draws over the '
          'time of the sample_many calls; baseline: uniform subnets that landed in any bucket over the time of '
          'sample_many(N) + flops_many + counting), best of '
          f'{args.repeats}. Ours / this: ratio of in-bucket draws/s. Rarest-bucket draws/s: draws that landed in '
          'the bucket that got fewest, per second (what balanced coverage of every bucket runs at; 0 where a bucket '
          'stays empty). Per bucket: draws per bucket. Distinct: distinct subnets among the k draws of a bucket. '
          'All draws in bucket: flops_many of every draw lies in [centre - step/2, centre + step/2).')
    print()
    headers = ['model', 'buckets', 'FLOPs span (MMACs)', 'bank (distinct subnets)', 'bank per bucket min / median',
               'bank build, first call (ms)', 'second call (ms)', 'single space.sample draws/s']
    rows = [[r['model'], f'{r["buckets"]} ({r["described"]})', f'{mmacs(r["span"][0])}..{mmacs(r["span"][1])}',
             f'{r["bank"]:,}', f'{int(r["bank_per_bucket"].min()):,} / {statistics.median(r["bank_per_bucket"]):,.0f}',
             f'{1e3 * r["first_s"]:,.0f}', f'{1e3 * r["second_s"]:.2f}', f'{r["single_per_s"]:,.0f}']
            for r in results]
    print(format_table(headers, rows))
    print()
    print('Bank build: one-off setup, the first in-bucket sample call of a cold space (builds the candidate bank); '
          'second call: the next one. Bank per bucket: bank members in each bucket (a bucket with none is served '
          'by the random-walk fallback). Single draws: space.sample(generator, flops_range=bucket), cycling '
          'through the buckets, the training loop\'s one draw per step.')
    print('Buckets the rejection baseline leaves empty (centres, MMACs):')
    for r in results:
        for b in r['baselines']:
            empty = ', '.join(mmacs(t) for t in b['empty']) or 'none'
            print(f'- {r["model"]}, N={b["draws"]:,}: {len(b["empty"])} empty: {empty}')
    met = all(r['ours']['in_bucket_draws'] / r['ours']['seconds'] >= TARGET_DRAWS_PER_S
              and r['ours']['reached'] == r['buckets'] for r in results)
    slowest = min(r['ours']['in_bucket_draws'] / r['ours']['seconds'] for r in results)
    print()
    print(f'Target >= {TARGET_DRAWS_PER_S:,} in-bucket draws/s with every bucket reached: '
          f'{"met" if met else "NOT met"} (slowest {slowest:,.0f}/s).')
    print()
    return all(r['ours']['all_in_bucket'] and r['ours']['reached'] == r['buckets'] for r in results)


# ---------------------------------------------------------------------------------------------- 2. training

def fill_pools(sampler: PrioritizedSubnetSampler, rng: np.random.Generator, patience: int = 5000) -> int:
    """propose/update with random scores until every pool is full, or until no pool grew in `patience` calls
    (a bucket whose candidates number fewer than the pool size can never fill); returns the number of calls."""
    calls, since_growth, total = 0, 0, sum(sampler.fill())
    while not all(p.full for p in sampler.pools) and since_growth < patience:
        p = sampler.propose()
        sampler.update(p.bucket, p.subnet, -float(rng.uniform(0.5, 2.5)))
        calls += 1
        grown = sum(len(pool) for pool in sampler.pools)
        since_growth = 0 if grown > total else since_growth + 1
        total = grown
    return calls


def sampler_overhead_ms(sampler, calls: int, rng: np.random.Generator) -> float:
    """Mean ms of one propose() + update() (random score), the sampler's own cost per training step."""
    scores = -rng.uniform(0.5, 2.5, size=calls)
    t0 = time.perf_counter()
    for i in range(calls):
        p = sampler.propose()
        sampler.update(p.bucket, p.subnet, float(scores[i]))
    return 1e3 * (time.perf_counter() - t0) / calls


def bench_training(name: str, args: argparse.Namespace) -> dict:
    s = args.image_size
    torch.manual_seed(0)
    model_p = timm.create_model(name, num_classes=10, resolution_range=(s, s, 8)).train()
    model_u = copy.deepcopy(model_p)
    space = model_p.space

    pss = PrioritizedSubnetSampler(space, num_pools=NUM_BUCKETS, pool_size=args.pool_size, seed=0)
    fill_calls = fill_pools(pss, np.random.default_rng(3))
    pss.set_progress(args.progress)
    uniform = SpaceUniformSampler(space, seed=0)
    uniform.set_progress(args.progress)
    fill_before = pss.fill()

    # the sampler's own cost, in the same steady state (pools stay full: updates only replace entries)
    over_pss = sampler_overhead_ms(pss, args.overhead_calls, np.random.default_rng(4))
    over_uni = sampler_overhead_ms(uniform, args.overhead_calls, np.random.default_rng(4))
    steady = pss.fill() == fill_before  # pools neither grew nor shrank during the timing

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(args.batch_size, 3, s, s, generator=gen)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    variants = []
    for model, sampler in ((model_p, pss), (model_u, uniform)):
        task = PSSTask(model, sampler, num_middle=1, verbose=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        variants.append(dict(task=task, opt=opt, times=[], middle=[], from_pool=[], finite=True))

    def step(v: dict, timed: bool) -> None:
        t0 = time.perf_counter()
        v['opt'].zero_grad(set_to_none=True)
        out = v['task'](x, y)
        out['loss'].backward()
        v['opt'].step()
        dt = time.perf_counter() - t0
        v['finite'] &= bool(torch.isfinite(out['loss']))
        if timed:
            v['times'].append(dt)
            v['middle'].extend(space.flops(p.subnet) for p in v['task'].last_proposals)
            v['from_pool'].extend(p.from_pool for p in v['task'].last_proposals)

    for i in range(args.warmup + args.steps):
        order = variants if i % 2 == 0 else variants[::-1]
        for v in order:
            step(v, timed=i >= args.warmup)
    ms_p, ms_u = (1e3 * statistics.median(v['times']) for v in variants)
    fill_after = pss.fill()
    steady &= fill_after == fill_before
    full_pools = sum(n >= args.pool_size for n in fill_after)
    not_full = [(pss.targets[i], n) for i, n in enumerate(fill_after) if n < args.pool_size]
    return dict(model=name, resolution=s, span=space.flops_span, fill_calls=fill_calls, full_pools=full_pools,
                pools=len(fill_after), partial=not_full, steady=steady,
                ms_pss=ms_p, ms_uni=ms_u, over_pss=over_pss, over_uni=over_uni,
                mid_pss=float(np.mean(variants[0]['middle'])), mid_uni=float(np.mean(variants[1]['middle'])),
                from_pool=float(np.mean(variants[0]['from_pool'])),
                finite=variants[0]['finite'] and variants[1]['finite'])


def report_training(results: Sequence[dict], args: argparse.Namespace) -> bool:
    print(f'## Training step: PSS (prioritized pools) vs uniform sandwich, max + 1 middle + min subnet, SGD step '
          f'included (batch {args.batch_size}, {threads_text(args.threads)}, median ms)')
    print()
    headers = ['model', 'res', 'PSS step', 'uniform step', 'PSS/uniform', f'<= {TARGET_STEP_RATIO:g}x',
               'middle MMACs PSS / uniform', 'sampler ms PSS', 'sampler ms uniform', 'sampler diff % of step',
               'PSS middles from pools', 'pools full', 'pools steady', 'losses finite']
    rows = [[r['model'], str(r['resolution']), f'{r["ms_pss"]:.1f}', f'{r["ms_uni"]:.1f}',
             f'{r["ms_pss"] / r["ms_uni"]:.3f}x', yes_no(r['ms_pss'] / r['ms_uni'] <= TARGET_STEP_RATIO),
             f'{mmacs(r["mid_pss"])} / {mmacs(r["mid_uni"])}', f'{r["over_pss"]:.3f}', f'{r["over_uni"]:.3f}',
             f'{100 * (r["over_pss"] - r["over_uni"]) / r["ms_uni"]:.3f}%', f'{100 * r["from_pool"]:.0f}%',
             f'{r["full_pools"]}/{r["pools"]}', yes_no(r['steady']),
             yes_no(r['finite'])] for r in results]
    print(format_table(headers, rows))
    print()
    print(f'Model: num_classes=10, resolution_range=({args.image_size}, {args.image_size}, 8), random images and '
          f'labels; PSS: {NUM_BUCKETS} buckets over the FLOPs span, pools of {args.pool_size} pre-filled, '
          f'progress {args.progress:g} (p_random {0.01 ** args.progress:.3g}); steps: median of {args.steps} after '
          f'{args.warmup} warm-up, variants interleaved, order alternating per round. Middle MMACs: mean FLOPs of '
          f'the middle subnets trained in the timed steps (they differ by design, so the step ratio includes '
          f'that compute difference). Sampler ms: mean propose() + update() per step over {args.overhead_calls:,} '
          f'calls; diff %: (PSS - uniform) sampler ms / uniform step ms.')
    print('Pools full: pools holding pool_size subnets after the pre-fill; pools steady: no pool changed size '
          'during the overhead and step timings (steady state). Pool pre-fill (setup, stops when every pool is '
          'full or none grew in 5,000 calls):')
    for r in results:
        not_full = ', '.join(f'{t / 1e6:.2f}M holds {n}' for t, n in r['partial'])
        print(f'- {r["model"]}: {r["fill_calls"]:,} propose/update calls, span {mmacs(r["span"][0])}..'
              f'{mmacs(r["span"][1])} MMACs; pools not full: {not_full or "none"}')
    met = all(r['ms_pss'] / r['ms_uni'] <= TARGET_STEP_RATIO for r in results)
    print()
    print(f'Target PSS/uniform <= {TARGET_STEP_RATIO:g}x: {"met" if met else "NOT met"} '
          f'(highest {max(r["ms_pss"] / r["ms_uni"] for r in results):.3f}x).')
    print()
    return all(r['steady'] and r['finite'] for r in results)


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    print_header('timm_pss PSS sampling and training-step benchmark', {
        'threads': f'sampling part 1 (torch + BLAS), training part {args.threads} (torch), BLAS 1',
        'settings': settings_line(args)})
    return run_parts(args.models, [
        (1, partial(bench_sampling, args=args), partial(report_sampling, args=args)),
        (args.threads, partial(bench_training, args=args), partial(report_training, args=args)),
    ], 'FAILED: a correctness check above says NO (or a bucket was not reached).')


if __name__ == '__main__':
    sys.exit(main())
