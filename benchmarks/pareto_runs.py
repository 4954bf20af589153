"""The runs of benchmarks/pareto.py: the data, one training run (reused from its record, resumed, or trained),
the runs of a study several at a time with a progress line, the records committed under benchmarks/results, and
the rows, costs and diagnostics collected from finished runs."""
from one_thread import THREAD_VARIABLES  # first: one thread per process

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pareto_protocol import (PROTOCOLS, ROOT, evaluation_budgets, fail, rows_of_run, run_command, space_of,
                             standalone_architectures)
from timm_pss import Subnet
from timm_pss.files import write_bytes_atomic, write_text_atomic


def prepare_fashion_mnist(output: Path, source: Optional[Path], train_size: Optional[int],
                          test_size: Optional[int]) -> Path:
    """A Fashion-MNIST root for train_pss.py under `output`: the package's files gunzipped, then a fixed random
    subset of `train_size` training (and `test_size` test) images; None keeps all (`timm_pss.dataset_setup`)."""
    from timm_pss.dataset_setup import SetupError, setup_dataset, write_subset
    full = output / 'fashion-mnist-full'
    try:
        setup_dataset('fashion-mnist', full, source)
        if train_size is None and test_size is None:
            return full
        return write_subset('fashion-mnist', full, output / f'fashion-mnist-train{train_size or "all"}-test'
                            f'{test_size or "all"}', train_size, test_size)
    except SetupError as e:
        fail(f'{e}')


def machine_args(args: argparse.Namespace, data_root: Optional[Path]) -> List[str]:
    """What the machine adds to a run's settings: the data folder, the device and, on a GPU, loader workers
    sharing the machine's cores between the runs on the card."""
    extra = ['--data-dir', str(data_root.resolve())] if data_root is not None else []
    extra += ['--device', args.device]
    if args.device == 'cuda':
        extra += ['--workers', str(max(1, (os.cpu_count() or 1) // args.jobs - 1)), '--pin-mem']
    return extra


RECORD_FILES = ('results.json', 'pss_diagnostics.csv', 'benchmark.json')  # benchmark.json last: it marks one done


def finished_record(folder: Path) -> Optional[dict]:
    """A finished run's benchmark.json (with results.json beside it, or a recorded divergence), else None."""
    record = folder / 'benchmark.json'
    if not record.is_file():
        return None
    done = json.loads(record.read_text())
    return done if (folder / 'results.json').is_file() or 'diverged' in done else None


def keep_record(run_dir: Path, record_dir: Path) -> None:
    """Copy a finished run's small files (no weights) into the records folder that is committed with the code."""
    record_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            write_bytes_atomic(record_dir / name, (run_dir / name).read_bytes())


def train(name: str, cmd: List[str], args: argparse.Namespace, data_root: Optional[Path],
          script: str = 'train_pss.py') -> Tuple[Path, dict]:
    """One run of `script` with settings `cmd`: reused when its record (the committed records folder first, then
    the run folder) is finished with the same settings, resumed from its last checkpoint when interrupted, else
    trained; returns (the folder holding its record, timing)."""
    run_dir, record_dir = args.output / name, args.records / name
    for folder in (record_dir, run_dir):
        done = finished_record(folder)
        if done is None:
            continue
        if done['command'] != cmd:
            fail(f'{folder} was trained with other settings; use another --output / --records or remove it')
        if folder == run_dir:  # finished before it was recorded
            keep_record(run_dir, record_dir)
        return record_dir, dict(done, reused=True)
    resume = []
    if (run_dir / 'last.pth.tar').exists():
        resume = ['--resume', str(run_dir)]
    elif run_dir.exists():  # started by this script, stopped before its first checkpoint
        shutil.rmtree(run_dir)
    full = [sys.executable, str(ROOT / ('benchmarks' if script == 'standalone.py' else '') / script), *cmd,
            *machine_args(args, data_root), '--output', str(args.output.resolve()), '--experiment', name, *resume]
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, '1')}
    start = time.perf_counter()
    log = args.output / f'{name}.log'
    with open(log, 'a') as f:
        proc = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    timing = dict(command=cmd, wall_s=time.perf_counter() - start, cpu_s=usage.ru_utime + usage.ru_stime,
                  resumed=bool(resume), device=args.device)
    if os.waitstatus_to_exitcode(status) != 0:
        why = diverged_reason(log)
        if why is None:
            raise RuntimeError(f'{" ".join(full)} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}')
        timing['diverged'] = why  # a result of the method and seed, not a failure of the benchmark: recorded
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / 'benchmark.json', json.dumps(timing, indent=2))
    keep_record(run_dir, record_dir)
    return record_dir, dict(timing, reused=False)


def diverged_reason(log: Path) -> Optional[str]:
    """The reason train_pss.py (or standalone.py) gave for stopping on a non-finite loss, from the end of its log;
    None otherwise."""
    for line in reversed(log.read_text(errors='replace').splitlines()[-20:]):
        for prefix in ('train_pss.py: error: ', 'standalone.py: error: '):
            if line.startswith(prefix) and 'training diverged' in line:
                return line[len(prefix):].split(' (--lr')[0]
    return None


def train_standalone(seed: int, args: argparse.Namespace, data_root: Optional[Path],
                     architectures: Callable[[], Dict[str, Subnet]]) -> Tuple[List[Path], dict]:
    """The models trained alone for one seed, one architecture after another; (their record folders, the timing
    summed over them, diverged if any did)."""
    folders, parts = [], {}
    for name, subnet in architectures().items():
        folder, parts[name] = train(f'standalone-{name}-seed{seed}', run_command('standalone', seed, args, subnet),
                                    args, data_root, script='standalone.py')
        folders.append(folder)
    return folders, summed_timing(parts)


def summed_timing(parts: Dict[str, dict]) -> dict:
    """One timing for the runs `parts` {name: timing}: wall and CPU time summed, reused if all were, each part's
    times, and the first divergence among them."""
    total = dict(wall_s=sum(t['wall_s'] for t in parts.values()), cpu_s=sum(t['cpu_s'] for t in parts.values()),
                 reused=all(t.get('reused', True) for t in parts.values()),
                 parts={n: dict(cpu_s=t['cpu_s'], wall_s=t['wall_s']) for n, t in parts.items()})
    diverged = [f'{n}: {t["diverged"]}' for n, t in parts.items() if 'diverged' in t]
    return dict(total, diverged=diverged[0]) if diverged else total


def train_one(method: str, seed: int, args: argparse.Namespace, data_root: Optional[Path]) -> Tuple[List[Path], dict]:
    """A supernet run of `method` and `seed` (train_pss.py); ([its record folder], timing)."""
    folder, timing = train(f'{method}-seed{seed}', run_command(method, seed, args), args, data_root)
    return [folder], timing


def run_entries(folders: Sequence[Path]) -> List[dict]:
    """The budget-table entries of a run's results.json; for the models trained alone, their entries together
    (set_budget's rule then serves, within a budget, the one with the best held-out top-1)."""
    return [e for folder in folders for e in json.loads((folder / 'results.json').read_text())['entries']]


def time_left(walls: Dict[str, List[float]], left: Sequence[str], jobs: int) -> Optional[float]:
    """Seconds left for the runs of methods `left`, `jobs` at a time, each taking its method's mean recorded wall
    time (the mean over every method where this one has none yet); None before any run was timed."""
    timed = [w for ws in walls.values() for w in ws]
    if not timed:
        return None
    return sum(np.mean(walls[m]) if walls.get(m) else np.mean(timed) for m in left) / jobs


def train_all(runs: Sequence[Tuple[str, int]], args: argparse.Namespace, data_root: Optional[Path]) -> Dict:
    """Train every (method, seed), `args.jobs` at a time, with a progress line (runs done, time left) after each.
    The models trained alone take their middle architectures from the PSS reference run of the first seed."""
    finished, walls = {}, {}
    start = time.perf_counter()
    space = space_of(PROTOCOLS[args.dataset])
    budgets = evaluation_budgets(space, args.num_pools)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {}
        for m, s in runs:
            if m == 'standalone':
                reference = next(f for f, run in futures.items() if run == ('pss', args.seeds[0]))

                def architectures(reference=reference):
                    folders, timing = reference.result()
                    if 'diverged' in timing:
                        fail(f'the PSS reference run of seed {args.seeds[0]} diverged: the models trained alone '
                             f'have no middle architectures to take')
                    return standalone_architectures(run_entries(folders), budgets, space)
                futures[pool.submit(train_standalone, s, args, data_root, architectures)] = (m, s)
            else:
                futures[pool.submit(train_one, m, s, args, data_root)] = (m, s)
        for future in as_completed(futures):
            run = futures[future]
            finished[run] = future.result()
            timing = finished[run][1]
            if not timing['reused']:
                walls.setdefault(run[0], []).append(timing['wall_s'])
            left = [m for m, s in runs if (m, s) not in finished]
            seconds = time_left(walls, left, args.jobs)
            eta = 'all done' if not left else ('time left unknown until a run is trained' if seconds is None
                                               else f'about {math.ceil(seconds / 60)} min left')
            what = 'reused' if timing['reused'] else f'{timing["wall_s"] / 60:.1f} min'
            what += ' (diverged: no accuracy)' if 'diverged' in timing else ''
            print(f'[{len(finished)}/{len(runs)} runs done, {(time.perf_counter() - start) / 60:.1f} min] '
                  f'{run[0]} seed {run[1]}: {what}; {eta}', flush=True)
    return finished


def recorded_runs(runs: Sequence[Tuple[str, int]], args: argparse.Namespace) -> Dict:
    """{(method, seed): (record folders, timing)} of the runs the records folder holds finished with this
    protocol's settings (a model trained alone: all of its architectures)."""
    space = space_of(PROTOCOLS[args.dataset])
    budgets = evaluation_budgets(space, args.num_pools)
    found = {}

    def record(name, cmd):
        done = finished_record(args.records / name)
        return done if done is not None and done['command'] == cmd else None

    reference = record(f'pss-seed{args.seeds[0]}', run_command('pss', args.seeds[0], args))
    for m, s in runs:
        if m != 'standalone':
            done = record(f'{m}-seed{s}', run_command(m, s, args))
            if done is not None:
                found[m, s] = ([args.records / f'{m}-seed{s}'], dict(done, reused=True))
            continue
        if reference is None or 'diverged' in reference:
            continue
        parts = {name: record(f'standalone-{name}-seed{s}', run_command(m, s, args, subnet)) for name, subnet in
                 standalone_architectures(run_entries([args.records / f'pss-seed{args.seeds[0]}']), budgets,
                                          space).items()}
        if all(parts.values()):
            found[m, s] = ([args.records / f'standalone-{n}-seed{s}' for n in parts], summed_timing(parts))
    return found


def collect(finished: Dict, runs: Sequence[Tuple[str, int]], args: argparse.Namespace):
    """(rows, diverged {run: why}, costs {method: [timing per seed]}, diagnostics {method: [csv rows per seed]})
    of the finished runs."""
    space = space_of(PROTOCOLS[args.dataset])
    budgets = evaluation_budgets(space, args.num_pools)
    rows, diverged, costs, diagnostics = [], {}, {}, {}
    for m, s in runs:
        folders, timing = finished[m, s]
        costs.setdefault(m, []).append(timing)
        if 'diverged' in timing:
            diverged[m, s] = timing['diverged']
            continue
        rows += rows_of_run(m, s, run_entries(folders), budgets, space.flops_span[0])
        path = folders[0] / 'pss_diagnostics.csv'
        if m != 'standalone' and path.is_file():
            with open(path, newline='') as f:
                diagnostics.setdefault(m, []).append(list(csv.DictReader(f)))
    return rows, diverged, costs, diagnostics
