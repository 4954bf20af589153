"""The controller's decisions, with no clock and no model: given each served call's latency, which rung of the
ladder (the servable entries, fastest first) serves the next call.

Rules (`LatencyController.observe`), evaluated after every call once the current rung has served `dwell_calls`
calls and `dwell_s` seconds (its dwell), on the window of its last `window` latencies; and at once, dwell or not,
when the window already holds more calls over the target than the percentile allows in a full window (more than
5 % of 50 for p95: a third), since the rung is then missing the target whatever the next calls take:

- down: the window's `percentile` is over the target: go to the highest lower rung whose estimated percentile
  (the window's, times the rungs' cost ratio) is within `(1 - headroom)` of the target, at least one rung; the
  rung left is barred for `backoff_calls` calls, doubled each time it fails again within that many calls of being
  re-entered (up to `max_backoff_calls`), so a rung that only fits on some calls is retried ever more rarely;
- up: the window's percentile times the cost ratio of the next rung to this one is within `(1 - headroom)` of the
  target and the next rung is not barred: go one rung up;
- otherwise stay. Between `(1 - headroom) * target` and the target nothing moves: that band is the hysteresis.

Every switch empties the window, so a rung is judged only on its own calls.
"""
from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass
from typing import Deque, Optional, Sequence

import numpy as np

__all__ = ['ControlSettings', 'LatencyController', 'LatencyTarget', 'start_rung', 'window_percentile']


def _positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        what = 'an int' if integer else 'a finite number'
        raise ValueError(f'{name} must be {what} {">= 0" if allow_zero else "> 0"}, got {value!r}')


@dataclass(frozen=True)
class LatencyTarget:
    """What to hold: the `percentile` (in (0, 100]) of recent calls' latency at most `ms` milliseconds. A call
    slower than `deadline_ms` (default: `ms`) counts as a deadline miss in the reports; p95 <= D is the same as
    "at most 5 % of calls miss a deadline of D"."""
    ms: float
    percentile: float = 95.0
    deadline_ms: Optional[float] = None

    def __post_init__(self):
        _positive('the latency target (ms)', self.ms)
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, numbers.Real) \
                or not 0 < self.percentile <= 100:
            raise ValueError(f'the target percentile must be a number in (0, 100], e.g. 95, got {self.percentile!r}')
        if self.deadline_ms is not None:
            _positive('deadline_ms', self.deadline_ms)

    @property
    def miss_ms(self) -> float:
        """The latency over which a call is a deadline miss."""
        return self.ms if self.deadline_ms is None else self.deadline_ms

    def __str__(self) -> str:
        text = f'p{self.percentile:g} <= {self.ms:g} ms'
        return text if self.deadline_ms is None else f'{text}, deadline {self.deadline_ms:g} ms'


@dataclass(frozen=True)
class ControlSettings:
    """The controller's knobs (see the module docstring for how each is used)."""
    window: int = 50  # latencies of the current rung its percentile is taken over
    dwell_calls: int = 20  # calls a rung serves before the next switch (the first window has this many)
    dwell_s: float = 0.0  # and seconds
    headroom: float = 0.2  # step up (or land after a step down) only where the estimate is <= (1 - headroom) * target
    backoff_calls: int = 100  # calls a rung stepped down from is barred; doubles on each quick repeat failure
    max_backoff_calls: int = 6400

    def __post_init__(self):
        _positive('window', self.window, integer=True)
        _positive('dwell_calls', self.dwell_calls, integer=True)
        _positive('dwell_s', self.dwell_s, allow_zero=True)
        _positive('backoff_calls', self.backoff_calls, integer=True)
        _positive('max_backoff_calls', self.max_backoff_calls, integer=True)
        if self.dwell_calls > self.window:
            raise ValueError(f'dwell_calls ({self.dwell_calls}) must be at most window ({self.window}): a rung is '
                             f'judged on a window that holds at least its dwell')
        if isinstance(self.headroom, bool) or not isinstance(self.headroom, numbers.Real) \
                or not 0 <= self.headroom < 1:
            raise ValueError(f'headroom must be a number in [0, 1), e.g. 0.2, got {self.headroom!r}')
        if self.max_backoff_calls < self.backoff_calls:
            raise ValueError(f'max_backoff_calls ({self.max_backoff_calls}) must be at least backoff_calls '
                             f'({self.backoff_calls})')


def window_percentile(latencies_ms: Sequence[float], percentile: float) -> float:
    """The `percentile` of `latencies_ms` (linear interpolation, numpy's default); an empty window is an error."""
    if not len(latencies_ms):
        raise ValueError('the latency window is empty: a percentile needs at least one served call')
    return float(np.percentile(np.asarray(latencies_ms, dtype=np.float64), percentile))


def start_rung(latency_ms: Sequence[Optional[float]], target: LatencyTarget, headroom: float) -> int:
    """The rung to start on: the highest whose predicted (or measured) latency is within `(1 - headroom)` of the
    target, else the fastest; without a latency for every rung, the fastest. A target below the fastest rung's
    latency is an error (no rung can hold it)."""
    if not latency_ms or any(v is None for v in latency_ms):
        return 0
    if min(latency_ms) > target.ms:
        raise ValueError(f'latency target {target.ms:g} ms is below the fastest entry\'s latency '
                         f'({min(latency_ms):.4g} ms predicted or measured): no entry can hold it; set a target of '
                         f'at least that')
    fitting = [i for i, v in enumerate(latency_ms) if v <= (1 - headroom) * target.ms]
    return max(fitting) if fitting else int(np.argmin(latency_ms))


class LatencyController:
    """The decision logic: `observe(latency_ms, now_s)` after each call returns the rung to switch to, or None.

    `costs` are the rungs' relative costs, fastest first (predicted or measured milliseconds, or FLOPs where no
    latency is known); only their ratios are used, to estimate a neighbour's latency from the current one. Pure:
    time comes in as `now_s`, so a fake clock drives it exactly.
    """

    def __init__(self, costs: Sequence[float], target: LatencyTarget, settings: ControlSettings = ControlSettings(),
                 start: int = 0, now_s: float = 0.0):
        costs = [float(c) for c in costs]
        if not costs:
            raise ValueError('the controller needs at least one entry to serve')
        if not all(math.isfinite(c) and c > 0 for c in costs) or costs != sorted(costs):
            raise ValueError(f'rung costs must be positive, finite and ascending (fastest first), got {costs}')
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start < len(costs):
            raise ValueError(f'start rung must be an int in [0, {len(costs)}), got {start!r}')
        self.costs, self.target, self.settings = costs, target, settings
        self.rung = int(start)
        self.calls = 0  # calls observed since the start
        self.window: Deque[float] = deque(maxlen=settings.window)
        self.entered_call, self.entered_s = 0, float(now_s)
        self.barred_until = [0] * len(costs)  # call count from which each rung may be entered again
        self.failures = [0] * len(costs)  # quick repeat failures of each rung, for the doubling backoff
        self.over_target_at_fastest = 0  # calls judged over the target while already on the fastest rung
        # calls over the target the percentile allows in a full window (p95 of 50: 2.5, so 2)
        self.allowed_over = math.floor((1 - target.percentile / 100) * settings.window + 1e-9)

    def estimate(self, rung: int, percentile_ms: float) -> float:
        """The current window's percentile scaled to `rung` by the cost ratio."""
        return percentile_ms * self.costs[rung] / self.costs[self.rung]

    def observe(self, latency_ms: float, now_s: float) -> Optional[int]:
        """Record one call's latency (ms) that ended at `now_s` (seconds); the rung to switch to, or None."""
        self.calls += 1
        self.window.append(float(latency_ms))
        dwelt = self.calls - self.entered_call
        over = sum(v > self.target.ms for v in self.window)
        failed = over > self.allowed_over  # more misses than the target allows, whatever the next calls take
        if not failed and (dwelt < self.settings.dwell_calls or now_s - self.entered_s < self.settings.dwell_s):
            return None
        p = window_percentile(self.window, self.target.percentile)
        limit = (1 - self.settings.headroom) * self.target.ms
        if failed or p > self.target.ms:
            if self.rung == 0:
                self.over_target_at_fastest += 1
                return None
            lower = [r for r in range(self.rung) if self.estimate(r, p) <= limit]
            self._bar(self.rung, dwelt)
            return self._switch(max(lower) if lower else 0, now_s)
        up = self.rung + 1
        if up < len(self.costs) and self.calls >= self.barred_until[up] and self.estimate(up, p) <= limit:
            return self._switch(up, now_s)
        return None

    def _bar(self, rung: int, dwelt: int) -> None:
        """Bar `rung` after it failed; a failure within `backoff_calls` of entering it doubles the bar."""
        self.failures[rung] = self.failures[rung] + 1 if dwelt < self.settings.backoff_calls else 1
        bar = self.settings.backoff_calls * 2 ** (self.failures[rung] - 1)
        self.barred_until[rung] = self.calls + min(bar, self.settings.max_backoff_calls)

    def _switch(self, rung: int, now_s: float) -> int:
        self.rung = rung
        self.window.clear()
        self.entered_call, self.entered_s = self.calls, float(now_s)
        return rung
