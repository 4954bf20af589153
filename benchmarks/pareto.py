"""Does one supernet training give each budget a subnet as good as a model trained alone, and does prioritized
sampling help? Accuracy vs FLOPs of PSS, simpler samplers and models trained alone, paired by seed.

Every supernet method is one `train_pss.py` run per seed with everything identical (script, recipe, epochs, steps,
data split, initial weights, buckets, pool sizes, finalisation) except the extra arguments of its row in `METHODS`:

- `pss`: PSS, the reference (pools drawn by softmax(score / T), p_random 1 -> 0.01).
- `pss_refresh`: PSS whose pool scores are re-measured on a fixed training batch every epoch (the ablations' candidate).
- `uniform`: the paper's ablation, a random in-bucket subnet every step (p_random fixed at 1); its pools only record
  scores, so finalisation has the same candidates to choose from.
- `mutualnet`: one global width level for every group and a random resolution (MutualNet-style; `global_width`).
- `usnet`: US-Net, width only at the fixed max resolution (`--pss-sampler usnet`).
- `standalone`: the yardstick, not a sampler: four architectures, each re-initialised and trained alone with
  cross-entropy only on the same data, recipe and epochs (`benchmarks/standalone.py`): the min subnet, the max subnet
  and the two entries the PSS reference run of the first seed serves nearest 1/3 and 2/3 of the FLOPs span (chosen
  on the held-out slice, before any test accuracy is read). Served like a budget table: at B, the one of them
  with the best held-out top-1 that fits.
- ablations of PSS: `pss_bw_global`, `pss_zscore`, `pss_rank`, `pss_shuffled` (select with --methods).
  A method whose options this version of train_pss.py lacks is refused up front, naming the missing option.

The main comparison is `pss standalone pss_refresh uniform mutualnet usnet`. Runs of one seed share the data split
and the initial weights (train_pss.py seeds both from --seed), so differences are paired by seed. Finalisation
chooses each pool's subnet on a held-out slice of the training data; the reported accuracy is the top-1 on the
validation split (Fashion-MNIST: the full 10,000-image test split, on which nothing is selected) of the entry
`set_budget(B)` picks, for B = the min subnet's FLOPs and each pool's upper edge. AUC: the area under that curve
over the FLOPs span divided by the span (the mean top-1 over the range). The report gives mean +- std per method,
PSS - baseline as the mean paired difference with a 95% t-interval over seeds, each supernet - the models trained
alone at the four budgets whose architecture was trained alone, each method's training cost (CPU-seconds of its
runs per seed) and the pool diagnostics (pss_diagnostics.csv: top member's draw probability, effective members,
Spearman of pool score vs fresh -CE, first and last epoch); budgets where runs serve the min subnet (every method
trains it every step, so they say nothing about the middle-subnet rule) are marked.

Protocols (both pss_mobilenetv1, widths 0.25-1.0 of every group, inputs 16-32 px in steps of 4, so the small subnets
are hard and the methods do not all saturate):

- digits: the embedded scikit-learn digits (8x8 scans), 10 pools of 8, 30 epochs of SGD (about 570 steps).
- fashion-mnist: grayscale 28x28 (in_chans=1, the data's own mean/std), a training subset of --train-size images
  (10% of it held out for selection), random-resized crops of scale 0.5-1 and horizontal flips, 8 pools of 8,
  SGD lr 0.05 with a 1-epoch linear warm-up (per update) and cosine decay, 12 epochs, the p_random / temperature
  schedules advanced per step.

  The recipe was fixed once, before any comparison, on the held-out slice with one method-neutral run: the max
  architecture trained alone (standalone.py, seed 0). Held-out top-1 (600 images) at the end of training: 12
  epochs 77.7 (epochs 9-11: 77.3, 77.5, 77.7); 20 epochs 77.7 (epochs 15-19: 78.3, 79.0, 77.7, 78.8, 77.7, mean
  78.3). 12 epochs is within about 1 point of the longer run's plateau, so 12 epochs it is. The earlier recipe
  (lr 0.1, no warm-up, 4 epochs) started fresh models at a cross-entropy of 6-7, diverged in two runs and left
  the max architecture trained alone near 68 %: its results measured which sampler survives it, and are gone.

  Time budget: the sandwich step trains at about 115 images per CPU-second, so one supernet run (0.9 x 6,000 x 12
  images, evaluation and finalisation) is about 10 CPU-minutes; the four models trained alone of one seed about
  8 (the max architecture alone: about 240 img/s). 5 methods x 5 seeds + 5 x 4 standalone runs: about 4.8
  CPU-hours, about 2.5 hours two at a time on a 2-core CPU; the progress line after each run gives the time left
  from each method's own recorded run times.

Run from the repository root (one training process per core, one thread each):

    python -m timm_pss.dataset_setup fashion-mnist data/   # optional: the script sets up its own copy
    python benchmarks/pareto.py --dataset fashion-mnist    # the main comparison, 6 methods x 5 seeds
    python benchmarks/pareto.py --dataset fashion-mnist --report-only   # report what the records hold, train nothing
    python benchmarks/pareto.py --dataset fashion-mnist --device cuda --jobs 8   # on a GPU: 8 runs share the card
    python benchmarks/pareto.py --dataset fashion-mnist --quick --methods pss mutualnet   # smoke test
    python benchmarks/pareto.py --dataset digits --seeds 0 1 2 --methods pss uniform mutualnet   # the digits study
    python benchmarks/pareto.py --dataset digits --from-csv benchmarks/results/pareto.csv  # re-report stored runs
    python benchmarks/pareto.py --seeds 0 1 2 --methods pss pss_bw_global pss_refresh pss_zscore pss_shuffled

Runs survive the machine: each finished run's small record (results.json, benchmark.json with its settings, CPU
and wall time and device, pss_diagnostics.csv; no weights) is copied into --records (default
benchmarks/results/runs_<dataset>, committed with the code), and every invocation reuses the records whose
settings match (the data folder and device are not settings), so a study continues on any machine; an interrupted
run resumes from its last checkpoint in --output. With --device cuda the runs train on the GPU, --jobs at a time
on one card, each with loader workers sharing the machine's cores (timm's prefetcher normalises on the card).
Writes `pareto_<dataset>.csv` (one row per method, seed and budget), `pareto_<dataset>.png` and `pareto_<dataset>.md`
into --results (default benchmarks/results; with --quick the --output folder); `pareto_<dataset>_ablations.*` when
PSS is compared with its ablations, `pareto_<dataset>_<method>.*` when another method comes first, so that the main
report is kept; --from-csv writes the report (.md) only.

This file is the command line; the protocol (methods, datasets, budgets, architectures trained alone) is in
pareto_protocol.py, the training runs and their records in pareto_runs.py, the report in pareto_report.py, and
the paired statistics in harness.py.
"""
from harness import machine_lines  # first: one thread per process

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pareto_protocol import MAIN_METHODS, METHODS, PROTOCOLS, QUICK_ARGS, ROOT, unsupported_methods
from pareto_report import finished_runs_table, plot, read_csv, report, write_csv
from pareto_runs import collect, prepare_fashion_mnist, recorded_runs, train_all
from timm_pss.files import write_text_atomic


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', choices=sorted(PROTOCOLS), default='fashion-mnist')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS), default=None,
                        help=f'methods; the first is compared with the others (default: {" ".join(MAIN_METHODS)})')
    parser.add_argument('--seeds', nargs='+', type=int, default=None,
                        help='default: 0 1 2 for digits (the stored results), 0..4 for fashion-mnist')
    parser.add_argument('--epochs', type=int, default=None, help='default: 30 (digits), 12 (fashion-mnist)')
    parser.add_argument('--train-size', type=int, default=None,
                        help='fashion-mnist: training images used, a fixed random subset (default 6000)')
    parser.add_argument('--fashion-source', type=Path, default=None,
                        help='folder with the four Fashion-MNIST .gz files (default: Debian\'s package folder)')
    parser.add_argument('--jobs', type=int, default=None,
                        help='training runs at a time, one thread each (default: 2 on a CPU, 4 on a GPU)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='where the runs train; cuda: --jobs runs share one card, loader workers share the cores')
    parser.add_argument('--output', type=Path, default=None, help='run folders (default output/pareto_<dataset>)')
    parser.add_argument('--records', type=Path, default=None,
                        help='each finished run\'s results.json, benchmark.json and pss_diagnostics.csv, reused by '
                             'later invocations on any machine (default benchmarks/results/runs_<dataset>; with '
                             '--quick: under --output)')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: report the runs the records folder holds (the seeds that every method '
                             'finished; with fewer than two, a table of the finished runs)')
    parser.add_argument('--results', type=Path, default=None,
                        help='where the csv, plot and report go (default benchmarks/results; --quick: --output)')
    parser.add_argument('--quick', action='store_true', help='a smoke test (tiny data, 1 epoch, 2 seeds), not a result')
    parser.add_argument('--from-csv', type=Path, default=None,
                        help='train nothing: report the per-seed rows of this CSV (this script\'s or the older '
                             'method,seed,budget_flops,top1 format)')
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.dataset]
    if args.train_size is not None and protocol.train_size is None:
        parser.error(f'--train-size applies to fashion-mnist only, not {args.dataset}')
    if args.from_csv is not None:  # default: the methods and seeds the CSV holds
        if not args.from_csv.is_file():
            parser.error(f'--from-csv {args.from_csv}: no such file')
        rows = read_csv(args.from_csv)
        present = {r['method'] for r in rows}
        args.methods = args.methods or [m for m in METHODS if m in present]
        args.seeds = args.seeds or sorted({r['seed'] for r in rows})
    args.methods = args.methods or list(MAIN_METHODS)
    args.seeds = args.seeds or list(protocol.seeds)
    args.epochs = args.epochs or protocol.epochs
    args.train_size = args.train_size or protocol.train_size
    args.output = args.output or Path('output') / f'pareto_{args.dataset.replace("-", "_")}'
    args.extra = []
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:2]
        args.extra = [*protocol.quick_args, *QUICK_ARGS]
        args.train_size = protocol.quick_sizes[0] or None
    args.results = args.results or (args.output if args.quick else ROOT / 'benchmarks' / 'results')
    args.records = args.records or (args.output / 'records' if args.quick else
                                    ROOT / 'benchmarks' / 'results' / f'runs_{args.dataset.replace("-", "_")}')
    args.jobs = args.jobs or (4 if args.device == 'cuda' else max(1, min(2, os.cpu_count() or 1)))
    args.num_pools = int(QUICK_ARGS[1]) if args.quick else protocol.num_pools
    if args.device == 'cuda' and args.from_csv is None and not args.report_only:
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda: torch sees no CUDA device here; leave out --device to train on the CPU')
    if 'standalone' in args.methods and 'pss' not in args.methods:
        parser.error('method standalone takes its middle architectures from the PSS reference run: add pss to '
                     '--methods')
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error('--seeds needs at least two different seeds, each once (for a standard deviation)')
    if len(set(args.methods)) != len(args.methods):
        parser.error('--methods lists a method twice')
    for name in ('epochs', 'jobs', 'train_size'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.from_csv is None:
        unsupported = unsupported_methods(args.methods)
        if unsupported:
            parser.error('; '.join(f'method {m} needs {reason}' for m, reason in unsupported.items()))
    return args


def report_stem(dataset: str, methods: Sequence[str]) -> str:
    """File name of the csv/png/md, so that no run overwrites another's report: the main comparison's own,
    `_ablations` when PSS is compared with its ablations, `_<method>` when another method is compared with the rest."""
    stem = f'pareto_{dataset.replace("-", "_")}'
    if methods[0] == 'pss' and set(methods) <= set(MAIN_METHODS):
        return stem
    return f'{stem}_ablations' if methods[0] == 'pss' else f'{stem}_{methods[0]}'


def main(argv=None) -> int:
    args = parse_args(argv)
    protocol = PROTOCOLS[args.dataset]
    title = f'pss_mobilenetv1 on {protocol.title}'
    stem = report_stem(args.dataset, args.methods)
    heading = f'# Accuracy vs FLOPs by middle-subnet rule on {protocol.title} (benchmarks/pareto.py)'
    costs = diagnostics = None
    if args.from_csv is not None:  # the machine that trained them is not this one: no machine lines
        rows, diverged = read_csv(args.from_csv), {}
        header = f'{heading}\n\n- re-reported from the per-seed rows of {args.from_csv.name} (no training)'
        print(header)
    else:
        runs = [(m, s) for s in args.seeds for m in args.methods]
        if 'standalone' in args.methods:  # the models trained alone wait for the run they take architectures from
            runs.remove(('pss', args.seeds[0]))
            runs.insert(0, ('pss', args.seeds[0]))
        settings = f'- protocol: {" ".join(protocol.args)} --epochs {args.epochs} {" ".join(args.extra)}'.rstrip()
        settings += f'; training subset {args.train_size or "all"}; seeds {args.seeds}'
        if args.report_only:
            finished = recorded_runs(runs, args)
            complete = [s for s in args.seeds if all((m, s) in finished for m in args.methods)]
            header = '\n'.join([heading, '', f'- reported from the records in {args.records} (no training): '
                                 f'{len(finished)} of {len(runs)} runs finished, seeds every method finished: '
                                 f'{complete or "none"}', settings])
            print(header)
            if len(complete) < 2:
                done = [r for r in runs if r in finished]
                rows = collect(finished, done, args)[0]
                print('\n## Finished runs: top-1 (%) at set_budget(B) (fewer than two seeds: no '
                      'means or intervals yet)\n\n' + (finished_runs_table(rows, args.methods) if rows else
                                                         '(none)'))
                return 0
            args.seeds, runs = complete, [r for r in runs if r[1] in complete]
        else:
            print(machine_lines(heading[2:]))
            data_root = None
            if args.dataset == 'fashion-mnist':  # first: a missing source leaves no output folder behind
                data_root = prepare_fashion_mnist(args.output, args.fashion_source, args.train_size,
                                                  protocol.quick_sizes[1] if args.quick else None)
            args.output.mkdir(parents=True, exist_ok=True)
            settings += f'; {args.jobs} runs at a time, one thread each, device {args.device}'
            print(settings + '\n', flush=True)
            start = time.perf_counter()
            finished = train_all(runs, args, data_root)
            wall = [finished[r][1]['wall_s'] for r in runs]
            header = '\n'.join([machine_lines(heading[2:]), settings,
                                f'- wall time: {(time.perf_counter() - start) / 60:.1f} min this invocation; '
                                f'{np.mean(wall) / 60:.1f} min per run (as recorded when each was trained)'])
        rows, diverged, costs, diagnostics = collect(finished, runs, args)
    body = report(rows, args.methods, args.seeds, title, diverged, costs=costs, diagnostics=diagnostics)
    text = '\n'.join([header, '', body])
    print('\n' + body)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / f'{stem}.md', text + '\n')
    if args.from_csv is not None:  # the rows and their plot exist already
        print(f'\n- wrote {args.results / stem}.md')
        return 0
    write_csv(args.results / f'{stem}.csv', rows)
    plot(args.results / f'{stem}.png', rows, args.methods, args.seeds,
         f'{title}, mean ± std over {len(args.seeds)} seeds', list(diverged))
    print(f'\n- wrote {args.results / stem}.csv, .png and .md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
