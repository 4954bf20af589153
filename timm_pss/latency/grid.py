"""One segment's measured latency grid (`LatencyBlock`): validation, coverage and multilinear interpolation."""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..spaces import describe_choices

__all__ = ['LatencyBlock', 'describe_axis']


class LatencyBlock:
    """The measured latency of one segment: `ms[r, i1, .., ik]` (median ms) at `resolutions[r]` and
    `widths[j][ij]` for its channel groups `groups[j]` (indices into the space's groups).

    `lookup` interpolates multilinearly between grid points (exact at them); `coverage_error` says which
    subnets the grid does not cover.
    """

    def __init__(self, name: str, groups: Sequence[int], resolutions: Sequence[int], widths: Sequence[Sequence[int]],
                 ms: np.ndarray):
        self.name = str(name)
        self.groups: Tuple[int, ...] = tuple(int(g) for g in groups)
        self.resolutions: Tuple[int, ...] = tuple(int(r) for r in resolutions)
        self.widths: Tuple[Tuple[int, ...], ...] = tuple(tuple(int(w) for w in ws) for ws in widths)
        self.ms = np.asarray(ms, dtype=np.float64)
        if len(self.widths) != len(self.groups):
            raise ValueError(f'block {self.name!r}: {len(self.groups)} groups but {len(self.widths)} width axes')
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f'block {self.name!r}: a group appears twice in {list(self.groups)}')
        for label, axis in [('resolutions', self.resolutions)] + [(f'widths[{i}]', w) for i, w in
                                                                    enumerate(self.widths)]:
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])) or axis[0] <= 0:
                raise ValueError(f'block {self.name!r}: {label} must be positive and strictly ascending, got '
                                 f'{list(axis)}')
        shape = (len(self.resolutions),) + tuple(len(w) for w in self.widths)
        if self.ms.shape != shape:
            raise ValueError(f'block {self.name!r}: ms has shape {self.ms.shape}, its grid '
                             f'(resolutions x widths per group) is {shape}')
        if not np.isfinite(self.ms).all() or (self.ms < 0).any():
            raise ValueError(f'block {self.name!r}: ms must be finite and non-negative')
        self._axes = (np.asarray(self.resolutions, np.float64),) + tuple(np.asarray(w, np.float64)
                                                                         for w in self.widths)
        self._dense = [_interp_table(a) for a in self._axes]

    @property
    def grid_size(self) -> int:
        return int(self.ms.size)

    def __repr__(self) -> str:
        return (f'LatencyBlock({self.name!r}, groups={list(self.groups)}, grid={"x".join(map(str, self.ms.shape))}, '
                f'{self.ms.min():.3f}..{self.ms.max():.3f} ms)')

    def _coords(self, resolutions: np.ndarray, widths: np.ndarray) -> List[np.ndarray]:
        return [resolutions] + [widths[:, g] for g in self.groups]

    def coverage_error(self, resolutions: np.ndarray, widths: np.ndarray, group_names: Sequence[str]) -> Optional[str]:
        """None if the grid covers every subnet, else a message naming the first one it does not."""
        for k, (axis, x) in enumerate(zip(self._axes, self._coords(resolutions, widths))):
            bad = (x != axis[0]) if axis.size == 1 else ((x < axis[0]) | (x > axis[-1]))
            if bad.any():
                i = int(np.argmax(bad))
                what = 'resolution' if k == 0 else f'group {group_names[self.groups[k - 1]]!r} width'
                axis_ints = self.resolutions if k == 0 else self.widths[k - 1]
                which = f' (subnet {i})' if x.size > 1 else ''
                return (f'block {self.name!r} has no entry for {what} {int(x[i])}{which}; the table covers '
                        f'{describe_axis(axis_ints)}')
        return None

    def lookup(self, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Interpolated ms for each subnet (resolutions (N,), widths (N, G); integers, or floats), inside the grid."""
        n = resolutions.shape[0]
        flat = self.ms.ravel()
        strides = [st // self.ms.itemsize for st in self.ms.strides]
        base = np.zeros(n, np.intp)
        varying = []  # (stride, fraction) of each axis with more than one point
        for axis, dense, x, stride in zip(self._axes, self._dense, self._coords(resolutions, widths), strides):
            if axis.size == 1:
                continue
            if np.issubdtype(x.dtype, np.integer):  # widths and resolutions: a table per integer value
                at = np.clip(x - int(axis[0]), 0, dense[0].size - 1)
                lo, frac = dense[0].take(at), dense[1].take(at)
            else:
                lo = np.clip(np.searchsorted(axis, x, side='right') - 1, 0, axis.size - 2)
                frac = (x - axis[lo]) / (axis[lo + 1] - axis[lo])
            base += lo * stride
            varying.append((stride, frac))
        out = np.zeros(n, np.float64)
        for corner in itertools.product((0, 1), repeat=len(varying)):
            offset, weight = 0, np.ones(n, np.float64)
            for (stride, frac), upper in zip(varying, corner):
                offset += stride * upper
                weight *= frac if upper else 1.0 - frac
            out += weight * flat.take(base + offset)
        return out

    def to_dict(self, group_names: Sequence[str]) -> dict:
        return {'name': self.name, 'groups': [group_names[g] for g in self.groups],
                'resolutions': list(self.resolutions), 'widths': [list(w) for w in self.widths],
                'ms': self.ms.tolist()}


def _interp_table(axis: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(lower grid index, fraction towards the next point) for every integer from axis[0] to axis[-1]."""
    if axis.size == 1:
        return np.zeros(1, np.intp), np.zeros(1)
    values = np.arange(int(axis[0]), int(axis[-1]) + 1, dtype=np.float64)
    lo = np.clip(np.searchsorted(axis, values, side='right') - 1, 0, axis.size - 2)
    return lo.astype(np.intp), (values - axis[lo]) / (axis[lo + 1] - axis[lo])


def describe_axis(values: Sequence[int]) -> str:
    """A grid axis as `describe_choices` gives it, naming the measured points of an unevenly spaced one."""
    values = list(values)
    text = describe_choices(values)
    if len(values) > 2 and '..' not in text:
        return f'{values[0]}..{values[-1]} (measured at {text})'
    return text
