"""Measuring a latency table (`build_lut`): the grid each segment is measured on, probe forwards that visit every
grid point, timing in place within whole forwards, and the fitted per-forward overhead."""
from __future__ import annotations

import itertools
import math
import numbers
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..spaces import SearchSpace, Subnet, SubnetBatch, stratified_subnets
from ..supernet import SupernetMixin, quiet_forwards
from .device import allocator_settings, describe_device, normalize_device, synchronizer_for
from .grid import LatencyBlock, describe_axis
from .segments import Segment, architecture_name, check_segment_chain, full_supernet, forward_segments
from .table import LatencyTable

__all__ = ['build_lut', 'fit_overhead_ms', 'speed_drift', 'time_in_place', 'CallTimer', 'AUTO_MAX_GRID',
           'SPEED_DRIFT_WARNING']

AUTO_MAX_GRID = 81  # width combinations per segment (per resolution) measured in full when width_points=None
SPEED_DRIFT_WARNING = 0.10  # build_lut warns when the machine's speed changed by more than this during the build


def _grid_indices(n: int, k: int) -> List[int]:
    """At most k evenly spaced indices of n choices, first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def grid_axes(space: SearchSpace, segments: Sequence['Segment'], width_points: Optional[int]
               ) -> List[List[Tuple[int, ...]]]:
    """The widths each segment is measured at, per group it depends on.

    Per segment, k widths per group: `width_points`, or (None) the largest k whose grid has at most
    `AUTO_MAX_GRID` width combinations. A one-group segment (stem, head, residual blocks) whose group also feeds
    segments of several groups takes the largest k of those, and a group's widths in a segment that needs fewer
    are an evenly spaced subset of those in the segment that needs most: the grids then nest, so a few forwards
    visit every point (see `probe_widths`).
    """
    def auto_k(groups):
        sizes = [len(space.width_choices[g]) for g in groups]
        k = width_points if width_points is not None else max(sizes, default=1)
        while width_points is None and k > 2 and math.prod(min(n, k) for n in sizes) > AUTO_MAX_GRID:
            k -= 1
        return k

    ks = [auto_k(seg.groups) for seg in segments]
    shared: dict = {}
    for seg, k in zip(segments, ks):
        if len(seg.groups) > 1:
            for g in seg.groups:
                shared[g] = max(shared.get(g, 0), k)
    ks = [shared.get(seg.groups[0], k) if len(seg.groups) == 1 else k for seg, k in zip(segments, ks)]
    finest: dict = {}
    for seg, k in zip(segments, ks):
        for g in seg.groups:
            finest[g] = max(finest.get(g, 0), k)
    fine = {g: [space.width_choices[g][i] for i in _grid_indices(len(space.width_choices[g]), k)]
            for g, k in finest.items()}
    return [[tuple(fine[g][i] for i in _grid_indices(len(fine[g]), k)) for g in seg.groups]
            for seg, k in zip(segments, ks)]


def _grid_point(value_index: Sequence[dict], groups: Sequence[int], widths: Sequence[int]) -> Optional[tuple]:
    """A segment's grid indices for `widths`, or None where a width is not on its grid."""
    idx = tuple(index.get(widths[g]) for index, g in zip(value_index, groups))
    return None if None in idx else idx


def probe_widths(space: SearchSpace, segments: Sequence['Segment'], axes: Sequence[Sequence[tuple]]
                  ) -> List[Tuple[int, ...]]:
    """Width vectors whose forwards together visit every grid point of every segment.

    Greedy cover in forward order: each vector takes, segment by segment, an unvisited grid point that agrees with
    the widths chosen so far (other groups at full width). The first segment with points left always gets one, so
    it ends; on the models here it needs as many vectors as the lower bound (MobileNetV1/V2: the largest segment
    grid, 81 / 66; ResNet-50: 113, set by the 3-group first blocks sharing a stage group with the 2-group ones).
    """
    value_index = [[{w: i for i, w in enumerate(a)} for a in ax] for ax in axes]
    left = [set(itertools.product(*(range(len(a)) for a in ax))) for ax in axes]
    probes = []
    while any(left):
        widths: List[Optional[int]] = [None] * space.num_groups
        for s, seg in enumerate(segments):
            for combo in sorted(left[s]):
                values = [axes[s][k][i] for k, i in enumerate(combo)]
                if all(widths[g] is None or widths[g] == v for g, v in zip(seg.groups, values)):
                    for g, v in zip(seg.groups, values):
                        widths[g] = v
                    break
        probe = tuple(space.max_widths[g] if w is None else w for g, w in enumerate(widths))
        for s, seg in enumerate(segments):
            left[s].discard(_grid_point(value_index[s], seg.groups, probe))
        probes.append(probe)
    return probes


class CallTimer:
    """Wall time of a call, and whether it ran undisturbed.

    With `retake` (one-thread CPU timing, where the work runs in this thread), a sample during which the thread
    lost the CPU (wall time above its CPU time by more than 2% + 50 us) counts as spoiled, to be retaken.
    """

    def __init__(self, sync: Callable[[], None], retake: bool):
        self.sync, self.retake = sync, retake

    def __call__(self, fn: Callable, *args):
        self.sync()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        out = fn(*args)
        self.sync()
        wall = time.perf_counter() - t0
        clean = not self.retake or wall - (time.thread_time() - c0) <= 0.02 * wall + 5e-5
        return out, 1e3 * wall, clean


def time_in_place(segments: Sequence['Segment'], x: torch.Tensor, timer: CallTimer) -> List[Tuple[float, bool]]:
    """(ms, undisturbed) of each segment, run in order on `x`, each timed between its neighbours."""
    samples = []
    for seg in segments:
        x, ms, ok = timer(seg.run, x)
        samples.append((ms, ok))
    return samples


def _median_of(clean: List[float], spoiled: List[float]) -> float:
    return statistics.median(clean if clean else spoiled)


def _time_segments(supernet: SupernetMixin, segments: Sequence['Segment'], subnets: Sequence[Subnet],
                   visits: Sequence[Sequence[int]], sizes: Sequence[int], whole: Sequence[Subnet],
                   inputs: Dict[int, torch.Tensor], warmup: int, repeats: int, timer: CallTimer,
                   rng: np.random.Generator, progress: Optional[str] = None
                   ) -> Tuple[List[np.ndarray], List[float], int]:
    """Median ms of each segment at each of its grid points, timed in place within full forwards, and, for each of
    the `whole` subnets, the median of its end-to-end forward `model(x)` minus its segments timed in place right
    after (the per-forward overhead, free of the load at the time).

    Every round runs each subnet twice, back to back, all in a fresh random order (so load that drifts during the
    build spreads over all points and the end-to-end timings alike): an untimed forward, then one timing each
    segment between its neighbours. So every sample sees a steady state, as when a subnet serves many inputs:
    caches, allocator and the per-shape kernel caches warm (oneDNN keeps ~1024 compiled convolutions; the
    thousands of shapes of a whole grid would otherwise evict the rarer ones and time their recompilation).
    `visits[p][s]` is the flat grid index segment s has in subnet p's forward (-1: not on its grid). Rounds repeat
    until every point and every whole subnet has `repeats` undisturbed samples (at most 3 x `repeats` rounds with
    `timer.retake`); the whole subnets run in every round, so their first and last samples bracket the build.
    Returns the medians per segment, the overheads of the whole subnets, the number of spoiled samples and the
    speed drift (`speed_drift` of the whole subnets' undisturbed end-to-end times).
    """
    clean = [[[] for _ in range(n)] for n in sizes]
    spoiled = [[[] for _ in range(n)] for n in sizes]
    # per whole subnet and round: end-to-end ms minus the sum of its segments timed in place right after
    whole_clean: List[List[float]] = [[] for _ in whole]
    whole_spoiled: List[List[float]] = [[] for _ in whole]
    whole_end_to_end: List[List[float]] = [[] for _ in whole]  # undisturbed end-to-end ms, in round order

    def run(task: int, record: bool) -> None:
        subnet = subnets[task] if task < len(subnets) else whole[task - len(subnets)]
        x = inputs[subnet.resolution]
        supernet.set_subnet(subnet)
        supernet(x)  # untimed: the timed forwards below then find their kernels, caches and buffers warm
        if not record:
            return
        if task >= len(subnets):
            _, ms, ok = timer(supernet, x)
            samples = time_in_place(segments, x, timer)
            ok = ok and all(seg_ok for _, seg_ok in samples)
            (whole_clean if ok else whole_spoiled)[task - len(subnets)].append(ms - sum(t for t, _ in samples))
            if ok:
                whole_end_to_end[task - len(subnets)].append(ms)
            return
        for s, (ms, ok) in enumerate(time_in_place(segments, x, timer)):
            if visits[task][s] >= 0:
                (clean if ok else spoiled)[s][visits[task][s]].append(ms)

    def short(task: int) -> bool:
        if task >= len(subnets):
            return len(whole_clean[task - len(subnets)]) < repeats
        return any(v >= 0 and len(clean[s][v]) < repeats for s, v in enumerate(visits[task]))

    pending = list(range(len(subnets)))
    wholes = list(range(len(subnets), len(subnets) + len(whole)))
    for round_ in range(warmup + (3 * repeats if timer.retake else repeats)):
        t0 = time.perf_counter()
        for task in rng.permutation(pending + wholes):
            run(int(task), round_ >= warmup)
        if round_ >= warmup:
            pending = [task for task in pending if short(task)]
        left = len(pending) + sum(short(task) for task in wholes)
        if progress:
            print(f'{progress}: round {round_ + 1} ({"warm-up" if round_ < warmup else "timed"}) in '
                  f'{time.perf_counter() - t0:.1f} s; {left} forwards still short of samples',
                  file=sys.stderr, flush=True)
        if not left and round_ >= warmup:
            break
    medians = [np.array([_median_of(c, d) for c, d in zip(cs, ds)]) for cs, ds in zip(clean, spoiled)]
    overheads = [_median_of(c, d) for c, d in zip(whole_clean, whole_spoiled)]
    n_spoiled = sum(len(d) for ds in spoiled for d in ds) + sum(len(d) for d in whole_spoiled)
    return medians, overheads, n_spoiled, speed_drift(whole_end_to_end)


def speed_drift(end_to_end_ms: Sequence[Sequence[float]]) -> Optional[float]:
    """How much slower the machine ran at the end of a build than at its start (negative: faster): the median over
    subnets of (median of the later half of a subnet's undisturbed end-to-end times / median of the earlier half)
    - 1; None without a subnet timed twice.

    A table's grid points are measured over the whole build, so a speed that changes during it (a host that
    throttles or shares the machine; the retake rule sees only lost CPU time) leaves the table between two speeds.
    """
    ratios = [statistics.median(times[len(times) - len(times) // 2:]) / statistics.median(times[:len(times) // 2])
              for times in end_to_end_ms if len(times) >= 2 and min(times) > 0]
    return None if not ratios else float(np.median(ratios)) - 1.0


def _positive(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
    return int(value)


def _checked_resolutions(space, resolutions: Optional[Sequence[int]]) -> List[int]:
    """The resolutions a table covers: all of the space's (None), or the given ones, each a resolution of it."""
    if resolutions is None:
        return list(space.resolutions)
    resolutions = sorted({_positive(r, 'resolution') for r in resolutions})
    outside = [r for r in resolutions if r not in space.resolutions]
    if outside or not resolutions:
        raise ValueError(f'resolutions {outside or "[]"} are not resolutions of the space; allowed: '
                         f'{describe_axis(space.resolutions)}')
    return resolutions


def _probe_visits(segments, axes, shapes, probes, resolutions) -> Tuple[List[Subnet], List[List[int]]]:
    """Every probe at every resolution, and per such subnet the grid index over (resolution, widths) it visits in
    each segment (-1: none)."""
    value_index = [[{w: i for i, w in enumerate(a)} for a in ax] for ax in axes]
    subnets, visits = [], []
    for r_idx, r in enumerate(resolutions):
        for p in probes:
            subnets.append(Subnet(r, p))
            points = [_grid_point(vi, seg.groups, p) for vi, seg in zip(value_index, segments)]
            visits.append([-1 if point is None else int(np.ravel_multi_index((r_idx,) + point,
                                                                             (len(resolutions),) + shape))
                           for point, shape in zip(points, shapes)])
    return subnets, visits


def _fit_overhead(table: LatencyTable, whole: Sequence[Subnet], overheads: Sequence[float]) -> List[dict]:
    """Set `table.overhead_ms` from the whole-forward subnets' measured overheads; their record for `build`."""
    if not whole:
        return []
    blocks_ms = table.predict_many(SubnetBatch.from_subnets(whole))  # overhead 0: the blocks' sum
    table.overhead_ms = fit_overhead_ms(overheads)
    return [{'subnet': s.to_dict(), 'overhead_ms': round(o, 4), 'blocks_ms': round(float(b), 4)}
            for s, o, b in zip(whole, overheads, blocks_ms)]


def _checked_counts(batch_size, warmup, repeats, overhead_subnets, width_points, threads) -> tuple:
    """build_lut's counts, each checked (one-line ValueErrors); threads None becomes the current thread count."""
    if width_points is not None:
        width_points = _positive(width_points, 'width_points', 2)
    return (_positive(batch_size, 'batch_size'), _positive(warmup, 'warmup', 0), _positive(repeats, 'repeats'),
            _positive(overhead_subnets, 'overhead_subnets', 0), width_points,
            torch.get_num_threads() if threads is None else _positive(threads, 'threads'))


def _check_placement(supernet: nn.Module, dev: torch.device, dtype: torch.dtype) -> None:
    """build_lut measures the model where it is: refuse a device or dtype other than its own."""
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f'dtype must be a torch.dtype, got {dtype!r}')
    param = next(supernet.parameters())
    if param.device != dev or param.dtype != dtype:
        raise ValueError(f'the model is on {param.device} in {param.dtype}; build_lut measures it where it is: '
                         f'move it first with model.to({str(dev)!r}, {dtype})')


def _warn_speed_drift(drift: Optional[float]) -> None:
    """A RuntimeWarning when the machine's speed moved by more than SPEED_DRIFT_WARNING during the build."""
    if drift is not None and abs(drift) > SPEED_DRIFT_WARNING:
        warnings.warn(f'build_lut: the machine ran {abs(100 * drift):.0f}% {"slower" if drift > 0 else "faster"} '
                      f'at the end of the build than at its start (the overhead subnets\' end-to-end times), so '
                      f'the table mixes two speeds: rebuild it with the machine otherwise idle and at a fixed clock',
                      RuntimeWarning, stacklevel=3)


def _measured_table(supernet, dev, dtype, threads, batch_size, resolutions, segments, axes, medians,
                    shapes) -> LatencyTable:
    """The LatencyTable of the segment medians (overhead_ms still 0: _fit_overhead sets it)."""
    blocks = [LatencyBlock(s.name, s.groups, resolutions, ax, np.round(m.reshape((len(resolutions),) + shape), 4))
              for s, ax, m, shape in zip(segments, axes, medians, shapes)]
    return LatencyTable(
        model=architecture_name(supernet), space=supernet.space.to_dict(), num_classes=int(supernet.num_classes),
        device=str(dev), device_name=describe_device(dev), torch_version=torch.__version__, threads=threads,
        dtype=str(dtype).replace('torch.', ''), batch_size=batch_size, blocks=blocks, overhead_ms=0.0)


def build_lut(
        model: nn.Module,
        device: Union[str, torch.device] = 'cpu',
        batch_size: int = 1,
        threads: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        resolutions: Optional[Sequence[int]] = None,
        width_points: Optional[int] = None,
        warmup: int = 0,
        repeats: int = 5,
        progress: bool = False,
        overhead_subnets: int = 5,
        seed: int = 0,
) -> LatencyTable:
    """Measure a latency lookup table of `model` (a timm_pss supernet, already on `device` in `dtype`).

    Grid: each resolution of `resolutions` (default: all of the space's) x, per segment (stem, top-level blocks,
    head), the widths of the groups it depends on: every choice where a segment has at most `AUTO_MAX_GRID` width
    combinations, else the largest k evenly spaced choices per group (ends included) that fit (`width_points=None`);
    or at most `width_points` per group for every segment.

    Timing: the forwards of a few "probe" subnets per resolution that together visit every grid point of every
    segment, each segment timed in place between its neighbours, so it sees the caches and allocator state of a
    real forward. Each round runs every probe at every resolution, in a fresh random order (load that drifts
    during the build then spreads over all points), each as an untimed forward then a timed one (steady state, as
    when a subnet serves many inputs): `warmup` untimed rounds, then rounds until every point has `repeats`
    samples, whose median it keeps. On one CPU thread, samples during which the process lost the CPU
    (wall > CPU time) are retaken, so a table built on a busy machine predicts the latency the model has when it
    runs undisturbed (`build['retaken_samples']` counts them). `overhead_ms` is what a whole forward `model(x)`
    takes beyond its segments: per round, the end-to-end time of each of `overhead_subnets` subnets spread over
    the FLOPs span minus its segments timed in place right after; the median over subnets of their medians.
    Those subnets run in every round, and `build['speed_drift']` is how much slower they ran at the end than at the
    start (a RuntimeWarning above `SPEED_DRIFT_WARNING`, 10 %: the table then mixes two machine speeds).

    Runs with `threads` torch threads (default: the current number), in eval mode under `torch.inference_mode`;
    the thread count, the model's train/eval modes and its active subnet are restored after.
    """
    supernet = full_supernet(model)
    space = supernet.space
    dev = normalize_device(device)
    batch_size, warmup, repeats, overhead_subnets, width_points, threads = _checked_counts(
        batch_size, warmup, repeats, overhead_subnets, width_points, threads)
    resolutions = _checked_resolutions(space, resolutions)
    _check_placement(supernet, dev, dtype)

    segments = forward_segments(supernet, supernet.channel_plan())
    axes = grid_axes(space, segments, width_points)
    shapes = [tuple(len(a) for a in ax) for ax in axes]
    probes = probe_widths(space, segments, axes)
    subnets, visits = _probe_visits(segments, axes, shapes, probes, resolutions)
    timer = CallTimer(synchronizer_for(dev), retake=dev.type == 'cpu' and threads == 1)
    modes = [(m, m.training) for m in supernet.modules()]
    previous_threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(seed)
    whole = stratified_subnets(space, overhead_subnets, rng=seed)
    t_start = time.perf_counter()
    try:
        torch.set_num_threads(threads)
        supernet.eval()
        with torch.inference_mode(), supernet.keep_active(), quiet_forwards(supernet):  # timing, not accuracy
            inputs = {r: torch.randn(batch_size, supernet.in_chans, r, r, generator=generator).to(dev, dtype)
                      for r in sorted(set(resolutions) | {s.resolution for s in whole})}
            check_segment_chain(supernet, segments, Subnet(resolutions[0], space.max_widths), inputs[resolutions[0]])
            medians, overheads, retaken, drift = _time_segments(
                supernet, segments, subnets, visits, [len(resolutions) * math.prod(s) for s in shapes], whole,
                inputs, warmup, repeats, timer, np.random.default_rng(seed),
                progress=f'build_lut {architecture_name(supernet)} ({len(subnets)} + {len(whole)} subnets)'
                if progress else None)
    finally:
        torch.set_num_threads(previous_threads)
        for m, training in modes:
            m.training = training
    table = _measured_table(supernet, dev, dtype, threads, batch_size, resolutions, segments, axes, medians, shapes)
    fit = _fit_overhead(table, whole, overheads)
    table.build = {'seconds': round(time.perf_counter() - t_start, 2), 'warmup': warmup, 'repeats': repeats,
                   'width_points': width_points, 'auto_max_grid': AUTO_MAX_GRID, 'probe_subnets': len(probes),
                   'retaken_samples': retaken, 'allocator': allocator_settings(), 'overhead_fit': fit,
                   'speed_drift': None if drift is None else round(drift, 4)}
    _warn_speed_drift(drift)
    if progress:
        print(f'build_lut: {table!r} in {table.build["seconds"]:.1f} s', file=sys.stderr, flush=True)
    return table


def fit_overhead_ms(overheads: Sequence[float]) -> float:
    """The per-forward overhead from each whole subnet's (end-to-end minus segments) time: their median, rounded
    to 0.1 us and clamped at 0. Timing noise can make the median negative when the true overhead is near zero,
    and a negative constant would predict negative latencies for the fastest subnets."""
    if not len(overheads):
        raise ValueError('fit_overhead_ms needs at least one measured overhead')
    return max(0.0, round(float(np.median(overheads)), 4))
