"""Run-time adaptation: the latency controller (timm_pss.adapt) against every fixed budget-table entry, on this
machine, while a load schedule of the benchmark's own changes how fast it is.

    python benchmarks/adapt.py RUN                        # RUN: a train_pss.py run folder
    python benchmarks/adapt.py RUN --output benchmarks/results/adapt.txt --plot benchmarks/results/adapt.png

What it does:

1. Loads RUN (`timm.create_model('local-dir:RUN', pretrained=True)`, then `set_budget_entry(-1)`), one torch
   thread, and makes `--requests` requests per phase from the digits images (the data the embedded runs train on),
   each resized in advance to every entry's resolution (a request is served at the active entry's resolution, so
   no call pays for a resize).
2. Measures every entry's median latency here, before any load (`timm_pss.adapt.measure_latency`); the target is
   `--target-ms` (default: `--target-factor` x the measured latency of the most accurate entry), as the
   `--percentile` of recent calls; a call over the target is a deadline miss.
3. The controller and each fixed entry (the policies) serve the same requests, back to back at batch 1, through the
   phases `idle`, `1 busy`, `2 busy`, `idle`: during a busy phase that many processes of the benchmark's own spin
   on the CPU (each stops itself after `--max-busy-s` at the latest, and is stopped at the end of its phase, also
   on error or Ctrl-C). Phases are counted in requests, and within a phase the policies take turns in blocks of
   `--block` requests (the order rotating), so a change in the machine's speed (other work on a shared machine)
   falls on all policies alike. Each block starts with the shared model put on the policy's entry and one untimed
   call (the benchmark's switch, not the policy's); the controller keeps its state across blocks.
4. Reports per policy: deadline-miss rate (overall and per phase), mean served accuracy (the validation top-1 of the
   entry that served each request, from the table), p50 / p99, switches and their cost; and plots the controller's
   latency over time with the phases and the active entry (`--plot`).

Goal (issue 28), the exit status: the controller's miss rate <= `--max-miss` (5 %) over the whole schedule, and its
mean served accuracy at least that of the best fixed entry whose miss rate is also <= `--max-miss` (always 0 with
`--quick`, a smoke test).
"""
import one_thread  # noqa: F401  (first: one thread for BLAS and OpenMP before numpy and torch load)

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F

import timm_pss  # noqa: F401  (registers the models)
from harness import format_table, machine_lines, yes_no
from timm_pss.adapt import (AdaptiveServer, ControlSettings, LatencyTarget, SupernetEntries, measure_latency,
                            serving_report)
from timm_pss.files import check_new_file, write_text_atomic

PHASES = (('idle', 0), ('1 busy', 1), ('2 busy', 2), ('idle', 0))


def spin(until: float) -> None:
    """A background load: keep one CPU busy until `until` (time.time()), then stop on its own."""
    while time.time() < until:
        pass


class BusyLoad:
    """`with BusyLoad(n, max_s):` n spinning processes for the block (each also stops by itself after max_s)."""

    def __init__(self, processes: int, max_s: float):
        self.processes, self.max_s, self.running = processes, max_s, []

    def __enter__(self):
        context = multiprocessing.get_context('fork')
        try:
            for _ in range(self.processes):
                p = context.Process(target=spin, args=(time.time() + self.max_s,), daemon=True)
                p.start()
                self.running.append(p)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for p in self.running:
            p.terminate()
        for p in self.running:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        self.running = []


def digits_requests(count: int, resolutions: Sequence[int], mean, std, seed: int) -> List[Dict[int, torch.Tensor]]:
    """`count` digits images (batch 1, RGB, normalised) resized to each resolution, in a fixed random order."""
    from sklearn.datasets import load_digits
    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1).repeat(1, 3, 1, 1) / 16.0
    order = np.random.default_rng(seed).integers(0, len(images), count)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    out = []
    for i in order:
        x = images[i:i + 1]
        out.append({r: ((F.interpolate(x, size=(r, r), mode='bilinear', align_corners=False) - mean) / std)
                    for r in resolutions})
    return out


class Policy:
    """One contender: the controller (`server` given) or one fixed entry. It serves the requests of its blocks and
    keeps what happened: latency (ms), entry and phase of each call, and its switch times (ms)."""

    def __init__(self, name: str, entries, fixed: int = None, server: AdaptiveServer = None):
        self.name, self.entries, self.fixed, self.server = name, entries, fixed, server
        self.latency, self.served, self.phase, self.switch_ms = [], [], [], []

    def begin_block(self, warm_request) -> None:
        """Put the shared model on this policy's entry and run one untimed call there: the first call after a
        switch may be slower, and that switch is the benchmark's (its interleaving), not the policy's."""
        entry = self.fixed if self.server is None else self.server.entry
        with self.entries.lock:
            self.entries.activate(entry)
            self.entries(warm_request[self.entries.infos[entry].resolution])

    def serve(self, request, phase: int) -> None:
        if self.server is not None:
            call = self.server.serve(lambda resolution: request[resolution])
            latency, entry = call.latency_ms, call.entry
            if call.switched_to is not None:
                self.switch_ms.append(self.server.history()[-1][3])
        else:  # timed exactly as the server times a call: arrival to output, the lock included
            arrived = time.perf_counter()
            with self.entries.lock:
                self.entries(request[self.entries.infos[self.fixed].resolution])
            latency, entry = (time.perf_counter() - arrived) * 1e3, self.fixed
        self.latency.append(latency)
        self.served.append(entry)
        self.phase.append(phase)


def run_schedule(policies: Sequence[Policy], requests, per_phase: int, block: int, max_busy_s: float) -> None:
    """Every policy serves every request across the phases, back to back, interleaved in blocks of `block`
    requests (the policies' order rotating from block to block), so a change in the machine's speed during a phase
    falls on all of them alike; each phase's load runs for the whole phase."""
    turn = 0
    for number, (_, busy) in enumerate(PHASES):
        phase_requests = requests[number * per_phase:(number + 1) * per_phase]
        with BusyLoad(busy, max_busy_s):
            for first in range(0, per_phase, block):
                chunk = phase_requests[first:first + block]
                for k in range(len(policies)):
                    policy = policies[(turn + k) % len(policies)]
                    policy.begin_block(chunk[0])
                    for request in chunk:
                        policy.serve(request, number)
                turn += 1


def plot(path: Path, latency, served, phase, target_ms, infos, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    t = np.arange(len(latency))  # the controller's requests in order (the other policies' blocks in between)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = ('white', '#fde0c5', '#f7a35c', 'white')
    for number, (name, _) in enumerate(PHASES):
        inside = np.flatnonzero(np.asarray(phase) == number)
        later = np.flatnonzero(np.asarray(phase) > number)
        lo, hi = t[inside[0]] - 0.5, (t[later[0]] if len(later) else t[-1]) - 0.5
        ax.axvspan(lo, hi, color=colors[number], alpha=0.6, lw=0)
        ax.text((lo + hi) / 2, 0.98, name, transform=ax.get_xaxis_transform(), ha='center', va='top', fontsize=9)
    ax.scatter(t, latency, s=3, color='tab:blue', label='latency of each call (ms)')
    ax.axhline(target_ms, color='tab:red', lw=1, ls='--', label=f'target {target_ms:.3g} ms')
    ax.set_xlabel('request (the controller\'s own, in order; the fixed entries\' blocks interleaved)')
    ax.set_ylabel('latency (ms)')
    ax.set_ylim(0, max(np.percentile(latency, 99.5) * 1.2, target_ms * 1.5))
    ax2 = ax.twinx()
    ax2.step(t, served, where='post', color='black', lw=1.2, label='active entry')
    ax2.set_ylabel('active budget-table entry')
    ax2.set_yticks(sorted(set(served)))
    ax2.set_yticklabels([f'{infos[i].name} ({infos[i].accuracy:.1f} %)' for i in sorted(set(served))], fontsize=8)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc='upper right', fontsize=8, bbox_to_anchor=(1, 0.9))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp.png')
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('run', type=Path, help='a train_pss.py run folder (model.safetensors + config.json)')
    parser.add_argument('--requests', type=int, default=300, help='requests per phase')
    parser.add_argument('--block', type=int, default=25, help='requests a policy serves before the next one\'s turn')
    parser.add_argument('--target-ms', type=float, help='latency target (ms); default --target-factor x the '
                                                        'measured latency of the most accurate entry')
    parser.add_argument('--target-factor', type=float, default=3.0)
    parser.add_argument('--percentile', type=float, default=95.0, help='the percentile the target holds for')
    parser.add_argument('--max-miss', type=float, default=0.05, help='the goal\'s deadline-miss rate')
    parser.add_argument('--max-busy-s', type=float, default=120.0, help='a load process stops itself after this')
    parser.add_argument('--seed', type=int, default=0, help='order of the request images')
    parser.add_argument('--output', type=Path, help='also write the report here (refused if it exists)')
    parser.add_argument('--plot', type=Path, help='write the controller\'s latency-over-time plot here (PNG)')
    parser.add_argument('--force', action='store_true', help='let --output / --plot replace existing files')
    parser.add_argument('--quick', action='store_true', help='a smoke test: at most 20 requests per phase, 3 '
                                                             'measuring rounds; the exit status ignores the goal')
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 20)
    for name in ('requests', 'block', 'target_factor', 'max_busy_s'):
        if getattr(args, name) <= 0:
            parser.error(f'--{name.replace("_", "-")} must be positive')
    if args.target_ms is not None and args.target_ms <= 0:
        parser.error('--target-ms must be positive')
    if not (args.run / 'config.json').is_file():
        parser.error(f'{args.run}: not a run folder (no config.json); give a train_pss.py output folder')
    for path in (args.output, args.plot):
        if path is not None:
            try:
                check_new_file(path, force=args.force)
            except ValueError as e:
                parser.error(str(e))
    return args


def policy_rows(policies: Sequence[Policy], infos, target: LatencyTarget) -> Tuple[List[List[str]], Dict]:
    """One table row per policy (misses overall and per phase, p95 per phase, accuracy, latency, switches) and
    {policy name: its serving report}."""
    rows, reports = [], {}
    for policy in policies:
        report = serving_report(policy.latency, policy.served, infos, target.miss_ms, policy.switch_ms)
        reports[policy.name] = report
        phase, lat = np.asarray(policy.phase), np.asarray(policy.latency)
        per_phase = [float((lat[phase == k] > target.miss_ms).mean()) for k in range(len(PHASES))]
        p95_phase = [float(np.percentile(lat[phase == k], 95)) for k in range(len(PHASES))]
        rows.append([policy.name, f'{report.miss_rate:.1%}', ' / '.join(f'{m:.0%}' for m in per_phase),
                     ' / '.join(f'{v:.1f}' for v in p95_phase),
                     f'{report.mean_accuracy:.2f}', f'{report.p50_ms:.2f}', f'{report.p99_ms:.2f}',
                     str(report.switches), '-' if not report.switches else f'{report.switch_ms:.3f}'])
    return rows, reports


def verdict_lines(policies: Sequence[Policy], reports: Dict, max_miss: float) -> Tuple[List[str], bool, bool]:
    """The controller's time per entry and its comparison with the best fixed entry within `max_miss`; (lines,
    misses within max_miss, accuracy at least the best fixed entry's)."""
    lines = []
    adaptive = reports['adaptive']
    lines.append('Controller, time per entry: ' + ', '.join(
        f'{name} {n / adaptive.calls:.0%} of calls, {adaptive.seconds_per_entry[name]:.2f} s'
        for name, n in adaptive.calls_per_entry.items()))
    fitting = [p.name for p in policies[1:] if reports[p.name].miss_rate <= max_miss]
    ok_miss = adaptive.miss_rate <= max_miss
    if fitting:
        best_fixed = max(fitting, key=lambda p: reports[p].mean_accuracy)
        gain = adaptive.mean_accuracy - reports[best_fixed].mean_accuracy
        ok_acc = gain >= 0
        lines.append(f'Best fixed entry with misses <= {max_miss:.0%}: {best_fixed} '
                     f'({reports[best_fixed].mean_accuracy:.2f} %, {reports[best_fixed].miss_rate:.1%} missed); '
                     f'the controller: {adaptive.mean_accuracy:.2f} % ({gain:+.2f} points), '
                     f'{adaptive.miss_rate:.1%} missed')
    else:
        ok_acc = True
        lines.append(f'No fixed entry keeps its misses <= {max_miss:.0%} on this schedule')
    return lines, ok_miss, ok_acc


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model = timm.create_model(f'local-dir:{args.run}', pretrained=True).eval()
    model.set_budget_entry(-1)
    entries = SupernetEntries(model)
    infos = entries.infos
    if any(i.accuracy is None for i in infos):
        print(f'{args.run}: the budget table has no validation top-1 for some entries', file=sys.stderr)
        return 2
    cfg = model.pretrained_cfg
    requests = digits_requests(args.requests * len(PHASES), sorted({i.resolution for i in infos}),
                               cfg.get('mean', (0.5,) * 3), cfg.get('std', (0.5,) * 3), args.seed)
    load_before = os.getloadavg()
    measured = measure_latency(entries, repeats=3 if args.quick else 30, warmup=2)
    best = max(range(len(infos)), key=lambda i: (infos[i].accuracy, -measured[i]))
    target_ms = args.target_ms or args.target_factor * measured[best]
    target = LatencyTarget(ms=target_ms, percentile=args.percentile)
    target_origin = 'given' if args.target_ms else (f'{args.target_factor:g} x the measured latency of the most '
                                                    f'accurate entry, {infos[best].name}')
    settings = ControlSettings()

    try:
        server = AdaptiveServer(entries, target, settings, latency_ms=measured, history=len(requests))
    except ValueError as e:  # a target below the fastest entry's measured latency
        print(f'benchmarks/adapt.py: {e}', file=sys.stderr)
        return 2
    policies = [Policy('adaptive', entries, server=server)] + [
        Policy(f'fixed {info.name}', entries, fixed=i) for i, info in enumerate(infos)]
    started = time.time()
    run_schedule(policies, requests, args.requests, args.block, args.max_busy_s)
    elapsed = time.time() - started

    lines = [machine_lines('Run-time adaptation: latency controller vs fixed budget-table entries'), '',
             f'- run: {args.run} ({model.default_cfg.get("architecture", type(model).__name__)}, '
             f'{len(infos)} entries), 1 torch thread, batch 1, requests at each entry\'s own resolution',
             f'- load average (1, 5, 15 min) before: {", ".join(f"{v:.2f}" for v in load_before)}; '
             f'after: {", ".join(f"{v:.2f}" for v in os.getloadavg())}',
             f'- schedule: {" -> ".join(name for name, _ in PHASES)}, {args.requests} requests each, back to back, '
             f'every policy in turn in blocks of {args.block} requests (rotating order), {elapsed:.0f} s in all',
             f'- target: {target} ({target_origin}); controller settings: {settings}', '',
             'Entries (median latency measured here before the schedule, without the benchmark\'s own load):', '',
             format_table(['entry', 'MFLOPs', 'res', 'val top-1 (%)', 'measured (ms)'],
                          [[i.name, f'{i.flops / 1e6:.2f}', str(i.resolution), f'{i.accuracy:.2f}', f'{m:.3f}']
                           for i, m in zip(infos, measured)]), '']
    rows, reports = policy_rows(policies, infos, target)
    lines += [f'Per policy ({len(requests)} requests each):', '',
              format_table(['policy', 'miss rate', 'misses per phase', 'p95 per phase (ms)', 'mean served top-1 (%)',
                            'p50 (ms)', 'p99 (ms)', 'switches', 'switch (ms)'], rows), '']
    verdict, ok_miss, ok_acc = verdict_lines(policies, reports, args.max_miss)
    lines += verdict
    goal = 'Goal (not checked with --quick)' if args.quick else 'Goal'
    lines += ['', f'{goal}: controller misses <= {args.max_miss:.0%}: {yes_no(ok_miss)}; mean served accuracy >= the '
                  f'best fixed entry within that miss rate: {yes_no(ok_acc)}']
    text = '\n'.join(lines) + '\n'
    print(text, end='')
    if args.output is not None:
        write_text_atomic(args.output, text)
    if args.plot is not None:
        ctl = policies[0]
        plot(args.plot, ctl.latency, ctl.served, ctl.phase, target_ms, infos,
             f'Controller ({target}) on {args.run.name}: latency per call, phases, active entry')
    return 0 if args.quick or (ok_miss and ok_acc) else 1


if __name__ == '__main__':
    sys.exit(main())
