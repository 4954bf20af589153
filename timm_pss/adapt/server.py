"""`AdaptiveServer`: serve calls on the entry a `LatencyController` picks, timing each call, and report.

Each call, under the entries' lock (for a supernet its `switch_lock`, so calls from many threads on one shared
model are serialised and each runs, whole, on the entry active when it got the lock): run the active entry, time
it from the moment the call arrived (so waiting for the lock counts, as it does for the client), tell the
controller, and switch if it says so (the switch's own time is recorded). `report()` summarises the recent calls.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .entries import EntryInfo, ServingEntries, ladder
from .policy import ControlSettings, LatencyController, LatencyTarget, start_rung

__all__ = ['AdaptiveServer', 'AdaptReport', 'ServedCall', 'serving_report']


class ServedCall(NamedTuple):
    """One served call: its output, the entry (index into the entries) it ran on, its latency (ms), and the entry
    the controller switched to after it (None: no switch)."""
    output: Any
    entry: int
    latency_ms: float
    switched_to: Optional[int]


@dataclass(frozen=True)
class AdaptReport:
    """Served calls summarised: latency percentiles (ms), the share of calls over `deadline_ms`, switches and
    their mean cost (ms), calls and served seconds per entry name, and the mean served accuracy (the mean over
    calls of the serving entry's validation top-1; None when an entry served has no accuracy)."""
    calls: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    deadline_ms: float
    miss_rate: float
    switches: int
    switch_ms: float  # mean time of one switch (NaN without switches)
    calls_per_entry: Dict[str, int] = field(default_factory=dict)
    seconds_per_entry: Dict[str, float] = field(default_factory=dict)
    mean_accuracy: Optional[float] = None

    def __str__(self) -> str:
        acc = 'unknown' if self.mean_accuracy is None else f'{self.mean_accuracy:.2f} %'
        share = ', '.join(f'{name} {n / self.calls:.0%}' for name, n in self.calls_per_entry.items())
        switches = f'{self.switches} switches ({self.switch_ms:.3g} ms each)' if self.switches else 'no switches'
        return (f'{self.calls} calls: p50 {self.p50_ms:.3g} ms, p95 {self.p95_ms:.3g} ms, p99 {self.p99_ms:.3g} ms; '
                f'{self.miss_rate:.1%} over {self.deadline_ms:g} ms; {switches}; mean served accuracy {acc}; '
                f'calls per entry: {share}')


def serving_report(latency_ms: Sequence[float], entries: Sequence[int], infos: Sequence[EntryInfo],
                   deadline_ms: float, switch_ms: Sequence[float] = ()) -> AdaptReport:
    """The report of calls with these latencies (ms) served on these entries (indices into `infos`); also for a
    run on one fixed entry, so a controller and fixed entries are summarised alike. No calls: ValueError."""
    if not len(latency_ms):
        raise ValueError('no calls served yet: a report needs at least one call')
    if len(latency_ms) != len(entries):
        raise ValueError(f'{len(latency_ms)} latencies for {len(entries)} entries served')
    lat = np.asarray(latency_ms, dtype=np.float64)
    served = np.asarray(entries, dtype=np.int64)
    p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    used = sorted(set(served.tolist()))
    accuracies = [infos[i].accuracy for i in used]
    mean_accuracy = None
    if all(a is not None for a in accuracies):
        per_entry = np.zeros(len(infos))
        per_entry[used] = accuracies
        mean_accuracy = float(per_entry[served].mean())
    return AdaptReport(
        calls=len(lat), p50_ms=p50, p95_ms=p95, p99_ms=p99, deadline_ms=float(deadline_ms),
        miss_rate=float((lat > deadline_ms).mean()), switches=len(switch_ms),
        switch_ms=float(np.mean(switch_ms)) if len(switch_ms) else math.nan,
        calls_per_entry={infos[i].name: int((served == i).sum()) for i in used},
        seconds_per_entry={infos[i].name: float(lat[served == i].sum() / 1e3) for i in used},
        mean_accuracy=mean_accuracy)


class AdaptiveServer:
    """Serve `entries` under `target`, switching between them as the measured latency allows.

    The ladder (`timm_pss.adapt.ladder`) orders the entries by `latency_ms` (e.g. from `measure_latency`), else by
    their predicted latencies, else by FLOPs, and drops those no more accurate than a faster one. The first call
    runs on the highest rung whose latency is within `(1 - headroom)` of the target when every entry's latency is
    known (a target below the fastest entry's is a ValueError), else on the fastest rung.

    `server(x)` returns the output; `server.serve(x)` a `ServedCall` (output, entry, latency, switch). `x` may be a
    callable taking the active entry's input resolution and returning the input, called under the lock (so the
    input matches the entry that runs it; its time counts in the latency). `report()` covers the last `history`
    calls. If something else switched the entries between two calls (e.g. a bare `model.set_budget` elsewhere), the
    next call first switches back to the controller's entry. When the target is missed on the fastest entry (the
    load is too high for any), a RuntimeWarning is issued once and the report's miss rate shows it; the controller
    keeps serving the fastest entry.
    """

    def __init__(self, entries: ServingEntries, target: LatencyTarget, settings: ControlSettings = ControlSettings(),
                 *, latency_ms: Optional[Sequence[float]] = None, clock: Callable[[], float] = time.perf_counter,
                 history: int = 100_000):
        if not isinstance(target, LatencyTarget):
            raise TypeError(f'target must be a timm_pss.adapt.LatencyTarget, e.g. LatencyTarget(ms=20, '
                            f'percentile=95), got {type(target).__name__}')
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f'history must be an int >= 1 (calls kept for the report), got {history!r}')
        infos = list(entries.infos)
        if latency_ms is not None:
            if len(latency_ms) != len(infos) or not all(math.isfinite(v) and v > 0 for v in latency_ms):
                raise ValueError(f'latency_ms must be one positive finite latency per entry ({len(infos)}), got '
                                 f'{list(latency_ms)}')
            infos = [dataclasses.replace(i, latency_ms=float(v)) for i, v in zip(infos, latency_ms)]
        self.entries, self.target, self.settings, self.clock = entries, target, settings, clock
        self.infos = infos
        self.rungs = ladder(infos)
        timed = all(i.latency_ms is not None for i in infos)  # what the ladder is ordered by: latency, else FLOPs
        costs = [infos[i].latency_ms if timed else infos[i].flops for i in self.rungs]
        start = start_rung([infos[i].latency_ms for i in self.rungs] if timed else [], target, settings.headroom)
        self.controller = LatencyController(costs, target, settings, start=start, now_s=clock())
        self._history: Deque[tuple] = deque(maxlen=history)  # (end_s, latency_ms, entry, switch_ms or None)
        self._warned = False
        with entries.lock:
            entries.activate(self.rungs[start])
            self.entry = self.rungs[start]

    @property
    def resolution(self) -> Optional[int]:
        """The active entry's input resolution (for preparing the next request; under threads it may change
        before the call: pass a callable to `serve` instead)."""
        return self.infos[self.entry].resolution

    def serve(self, x: Any) -> ServedCall:
        """Run one call on the active entry, time it, and switch entries if the controller says so."""
        arrived = self.clock()
        with self.entries.lock:
            entry = self.entry
            if self.entries.active != entry:  # switched by someone else since the last call (a bare set_budget)
                self.entries.activate(entry)
            inputs = x(self.infos[entry].resolution) if callable(x) else x
            output = self.entries(inputs)
            done = self.clock()
            latency = (done - arrived) * 1e3
            rung = self.controller.observe(latency, done)
            switched, switch_ms = None, None
            if rung is not None:
                switched = self.rungs[rung]
                self.entries.activate(switched)
                self.entry = switched
                switch_ms = (self.clock() - done) * 1e3
            self._history.append((done, latency, entry, switch_ms))
            warn = self.controller.over_target_at_fastest and not self._warned
            self._warned = self._warned or bool(warn)
        if warn:
            fastest = self.infos[self.rungs[0]].name
            warnings.warn(f'latency target {self.target} missed on the fastest entry ({fastest}): the load is too '
                          f'high for any entry; serving the fastest', RuntimeWarning, stacklevel=2)
        return ServedCall(output, entry, latency, switched)

    def __call__(self, x: Any) -> Any:
        return self.serve(x).output

    def history(self) -> List[tuple]:
        """The recent calls as (end time s, latency ms, entry index, switch ms or None), oldest first."""
        with self.entries.lock:
            return list(self._history)

    def report(self) -> AdaptReport:
        """`serving_report` of the recent calls (at most `history`); ValueError before the first call."""
        calls = self.history()
        if not calls:
            raise ValueError('no calls served yet: a report needs at least one call')
        _, latency, entry, switch = zip(*calls)
        return serving_report(latency, entry, self.infos, self.target.miss_ms,
                              [s for s in switch if s is not None])
