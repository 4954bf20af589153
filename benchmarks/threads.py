"""train_pss.py on a busy CPU: the same short run with torch's default threads (one per core) and with
`--threads 1`, on a quiet machine and under a background load of busy processes, as ratios.

Why: torch's OpenMP threads spin while they wait for each other; when other processes hold the cores, a thread
that is descheduled keeps the others spinning, and a run can take many times its quiet time. One thread per
process does not wait on anyone. The load is `--load` pure-Python busy loops (default: twice the cores, load
average about 2 x cores), started before and stopped after each loaded run; the runs alternate policies so a
drift of the machine's speed hits both alike.

    python benchmarks/threads.py [--repeats 2] [--load N] [--epochs 2]

Prints each run's wall time (process start to exit, what a user waits), the median per condition and policy,
loaded / quiet per policy, and default / --threads 1 per condition.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ['--model', 'pss_mobilenetv1', '-b', '128', '--pss-num-pools', '3', '--pss-pool-size', '2', '--pss-top-k', '1',
       '--pss-calib-batches', '1', '--pss-resolutions', '16', '24', '8', '-j', '0']
BUSY_LOOP = 'while True:\n    pass\n'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    cores = os.cpu_count() or 1
    parser.add_argument('--repeats', type=int, default=2, help='runs per condition and policy')
    parser.add_argument('--load', type=int, default=2 * cores, help='busy background processes in the loaded runs')
    parser.add_argument('--epochs', type=int, default=2, help='epochs of each training run')
    args = parser.parse_args(argv)
    for name in ('repeats', 'load', 'epochs'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
    return args


def run_once(threads, epochs: int) -> float:
    """Wall seconds of one train_pss.py run in a fresh temporary folder (threads None: torch's default)."""
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    extra = [] if threads is None else ['--threads', str(threads)]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / 'train_pss.py'), *RUN, '--epochs', str(epochs), *extra,
                        '--output', out], check=True, capture_output=True, env=env, cwd=ROOT)
        return time.perf_counter() - start


def with_load(count: int, fn):
    """fn() while `count` busy-loop processes run."""
    burners = [subprocess.Popen([sys.executable, '-c', BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(1.0)  # let them take the cores
        return fn()
    finally:
        for p in burners:
            p.kill()
        for p in burners:
            p.wait()


def main(argv=None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    policies = {f'default ({cores} threads)': None, '--threads 1': 1}
    times = {(c, p): [] for c in ('quiet', 'loaded') for p in policies}
    print(f'train_pss.py {" ".join(RUN)} --epochs {args.epochs}; {cores} cores; load: {args.load} busy processes; '
          f'{args.repeats} run(s) each')
    for repeat in range(args.repeats):
        for condition in ('quiet', 'loaded'):
            order = list(policies) if repeat % 2 == 0 else list(reversed(policies))
            for policy in order:
                def one():
                    return run_once(policies[policy], args.epochs)
                seconds = one() if condition == 'quiet' else with_load(args.load, one)
                times[(condition, policy)].append(seconds)
                print(f'  run {repeat + 1}: {condition:6s} {policy:22s} {seconds:7.1f} s', flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    print('\nmedian wall seconds')
    print(f'{"policy":24s} {"quiet":>8s} {"loaded":>8s} {"loaded/quiet":>13s}')
    for policy in policies:
        q, l = median[('quiet', policy)], median[('loaded', policy)]
        print(f'{policy:24s} {q:8.1f} {l:8.1f} {l / q:12.2f}x')
    default, one_thread = policies
    for condition in ('quiet', 'loaded'):
        ratio = median[(condition, default)] / median[(condition, one_thread)]
        print(f'{condition}: default / --threads 1 = {ratio:.2f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
