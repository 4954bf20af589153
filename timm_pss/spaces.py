"""Search spaces: subnets, width choices, exact FLOPs (MACs, counted by `timm_pss.flops`) for one subnet or
millions at once, and sampling: uniform, within a FLOPs or any cost range, or spread over the FLOPs span.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from timm.layers import make_divisible

from .flops import MacTerm, SpatialOp, flops_of_forms, quadratic_forms
from .range_sampler import RangeSampler, ordered_range

__all__ = [
    'Subnet', 'SubnetBatch', 'SearchSpace', 'Channels', 'MacTerm', 'SpatialOp',
    'width_choices', 'resolution_choices', 'RngLike', 'stratified_subnets', 'describe_choices',
]

RngLike = Union[None, int, np.random.Generator]

# What a space may hold, so that a hostile or mistyped definition (a config.json, a latency table) fails at once
# instead of taking minutes and gigabytes: the per-resolution FLOPs matrices, lookups and the candidate bank grow
# with these. The built-in models use at most 13 resolutions of at most 224 px and 25 widths per group.
MAX_RESOLUTIONS = 256
MAX_RESOLUTION = 8192
MAX_WIDTH_CHOICES = 1024
MAX_BANK_SIZE = 1 << 22


def _as_int(value, what: str) -> int:
    """An exact integer or a ValueError naming `what`; floats, bools and strings are refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f'{what} must be an integer, got {value!r} ({type(value).__name__})')
    return int(value)


@dataclass(frozen=True)
class Subnet:
    """One subnet of a supernet: input resolution and absolute output channels per channel group."""
    resolution: int
    widths: Tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, 'resolution', _as_int(self.resolution, 'resolution'))
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Iterable):
            raise ValueError(f'widths must be a sequence of integers, got {self.widths!r}')
        widths = tuple(_as_int(w, f'widths[{i}]') for i, w in enumerate(self.widths))
        object.__setattr__(self, 'widths', widths)

    def to_dict(self) -> dict:
        return {'resolution': self.resolution, 'widths': list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> 'Subnet':
        if not isinstance(d, dict) or set(d) != {'resolution', 'widths'}:
            raise ValueError(f'a subnet dict has exactly the keys "resolution" and "widths", got {d!r}')
        return cls(d['resolution'], d['widths'])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> 'Subnet':
        return cls.from_dict(json.loads(s))


class SubnetBatch(NamedTuple):
    """Many subnets as arrays: resolutions (N,) and widths (N, groups), for vectorised FLOPs and sampling."""
    resolutions: np.ndarray
    widths: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.resolutions.shape[0])

    def subnet(self, i: int) -> Subnet:
        return Subnet(int(self.resolutions[i]), tuple(int(w) for w in self.widths[i]))

    def subnets(self) -> list:
        return [self.subnet(i) for i in range(len(self))]

    @classmethod
    def from_subnets(cls, subnets: Sequence[Subnet]) -> 'SubnetBatch':
        res = np.array([s.resolution for s in subnets], dtype=np.int64)
        widths = np.array([s.widths for s in subnets], dtype=np.int64).reshape(len(subnets), -1)
        return cls(res, widths)


@dataclass(frozen=True)
class Channels:
    """A channel count that follows the active subnet: `mult * widths[group]`, or the constant `mult`."""
    group: Optional[int]
    mult: int = 1

    def resolve(self, widths: Sequence[int]) -> int:
        return self.mult if self.group is None else self.mult * widths[self.group]


def width_choices(base: int, mult_range: Tuple[float, float], divisor: int = 8) -> Tuple[int, ...]:
    """Every width `make_divisible(base * m, divisor)` reaches for m in [lo, hi] (all multiples in between)."""
    lo, hi = mult_range
    if not 0 < lo <= hi:
        raise ValueError(f'width multiplier range must satisfy 0 < lo <= hi, got {mult_range}')
    w_lo, w_hi = make_divisible(base * lo, divisor), make_divisible(base * hi, divisor)
    count = (w_hi - w_lo) // divisor + 1
    if count > MAX_WIDTH_CHOICES:
        raise ValueError(f'width multiplier range {tuple(mult_range)} gives {count} width choices for a group of '
                         f'{base} channels; a space allows at most {MAX_WIDTH_CHOICES} per group')
    return tuple(range(w_lo, w_hi + 1, divisor))


def resolution_choices(res_range: Tuple[int, int, int]) -> Tuple[int, ...]:
    """Resolutions from (min, max, step), both ends included: at most `MAX_RESOLUTIONS` (256) values, each at
    most `MAX_RESOLUTION` (8192) px."""
    lo, hi, step = (_as_int(v, 'resolution range entry') for v in res_range)
    if not (0 < lo <= hi and step > 0 and (hi - lo) % step == 0):
        raise ValueError(f'resolution range (min, max, step) must have 0 < min <= max and step dividing '
                         f'max - min, got {tuple(res_range)}')
    _check_resolution_bounds((hi - lo) // step + 1, hi, f'resolution range {tuple(res_range)}')
    return tuple(range(lo, hi + 1, step))


def _check_resolution_bounds(count: int, largest: int, what: str) -> None:
    if count > MAX_RESOLUTIONS or largest > MAX_RESOLUTION:
        raise ValueError(f'{what} holds {count} resolutions up to {largest} px; a space allows at most '
                         f'{MAX_RESOLUTIONS} resolutions of at most {MAX_RESOLUTION} px')


class SearchSpace:
    """Channel groups with their width choices, input resolutions, and the FLOPs of any subnet.

    Bounded, so that a hostile definition fails at once with a ValueError: at most `MAX_RESOLUTIONS` (256)
    resolutions of at most `MAX_RESOLUTION` (8192) px, at most `MAX_WIDTH_CHOICES` (1024) widths per group, and
    a candidate bank (`bank_size`) of at most `MAX_BANK_SIZE` (4,194,304) subnets.

    Args:
        group_names: one name per channel group (the module path that produces it).
        width_choices: allowed absolute widths per group, ascending.
        resolutions: allowed input resolutions, ascending.
        mac_terms: the MACs model of the architecture (one term per conv/linear/pool).
    """

    def __init__(
            self,
            group_names: Sequence[str],
            width_choices: Sequence[Sequence[int]],
            resolutions: Sequence[int],
            mac_terms: Sequence[MacTerm],
    ):
        if len(group_names) != len(width_choices):
            raise ValueError(f'{len(group_names)} group names but {len(width_choices)} width choice lists')
        for name, choices in zip(group_names, width_choices):
            if len(choices) > MAX_WIDTH_CHOICES:
                raise ValueError(f'group {name!r} has {len(choices)} width choices; a space allows at most '
                                 f'{MAX_WIDTH_CHOICES} per group')
        if resolutions:
            _check_resolution_bounds(len(resolutions), max(resolutions), 'the space')
        self.group_names: Tuple[str, ...] = tuple(group_names)
        self.width_choices: Tuple[Tuple[int, ...], ...] = tuple(tuple(sorted(set(c))) for c in width_choices)
        self.resolutions: Tuple[int, ...] = tuple(sorted(set(resolutions)))
        self.mac_terms: Tuple[MacTerm, ...] = tuple(mac_terms)
        self.max_widths: Tuple[int, ...] = tuple(c[-1] for c in self.width_choices)
        self.min_widths: Tuple[int, ...] = tuple(c[0] for c in self.width_choices)
        self._res_index = {r: i for i, r in enumerate(self.resolutions)}
        self._choice_index = [{w: i for i, w in enumerate(c)} for c in self.width_choices]
        self._quad_forms = quadratic_forms(self.mac_terms, self.num_groups, self.resolutions)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def __repr__(self) -> str:
        return (f'SearchSpace({self.num_groups} groups, resolutions {self.resolutions[0]}..{self.resolutions[-1]}'
                f' ({len(self.resolutions)}), FLOPs {self.flops(self.min_subnet()) / 1e6:.2f}M'
                f'..{self.flops(self.max_subnet()) / 1e6:.2f}M)')

    # subnets

    def max_subnet(self) -> Subnet:
        return Subnet(self.resolutions[-1], self.max_widths)

    def min_subnet(self) -> Subnet:
        return Subnet(self.resolutions[0], self.min_widths)

    def validate(self, subnet: Subnet) -> Subnet:
        """Return `subnet` if it belongs to this space, else raise ValueError naming what is wrong."""
        if not isinstance(subnet, Subnet):
            raise ValueError(f'expected a timm_pss.Subnet, got {type(subnet).__name__}')
        if len(subnet.widths) != self.num_groups:
            raise ValueError(f'subnet has {len(subnet.widths)} widths, the space has {self.num_groups} groups: '
                             f'{", ".join(self.group_names)}')
        if subnet.resolution not in self._res_index:
            raise ValueError(f'resolution {subnet.resolution} is not in the space; allowed: '
                             f'{describe_choices(self.resolutions)}')
        for name, w, choices, index in zip(self.group_names, subnet.widths, self.width_choices, self._choice_index):
            if w not in index:
                raise ValueError(f'width {w} for group {name!r} is not in the space; allowed: '
                                 f'{describe_choices(choices)}')
        return subnet

    # FLOPs

    @property
    def flops_span(self) -> Tuple[int, int]:
        """(FLOPs of the min subnet, FLOPs of the max subnet)."""
        if not hasattr(self, '_flops_span'):
            self._flops_span = (self.flops(self.min_subnet()), self.flops(self.max_subnet()))
        return self._flops_span

    def flops(self, subnet: Subnet) -> int:
        """MACs of one subnet (conv + linear + global average pool)."""
        self.validate(subnet)
        batch = SubnetBatch.from_subnets([subnet])
        return int(self.flops_many(batch.resolutions, batch.widths)[0])

    def flops_many(self, resolutions, widths=None) -> np.ndarray:
        """MACs of many subnets: `flops_many(batch)` or `flops_many(resolutions (N,), widths (N, G))`.

        Inputs are trusted to lie in the space (the sampler's own output); use `validate` for user input.
        """
        if widths is None:
            resolutions, widths = resolutions
        resolutions = np.asarray(resolutions)
        if len(self.resolutions) == 1:
            r_idx = np.zeros(widths.shape[0], dtype=np.int64)
        else:
            lookup = np.full(self.resolutions[-1] + 1, -1, dtype=np.int64)
            lookup[list(self.resolutions)] = np.arange(len(self.resolutions))
            r_idx = lookup[resolutions]
            if (r_idx < 0).any():
                raise ValueError(f'resolutions outside the space; allowed: {describe_choices(self.resolutions)}')
        return flops_of_forms(self._quad_forms, r_idx, widths)

    # sampling

    def sample(self, rng: RngLike = None, flops_range: Optional[Tuple[float, float]] = None) -> Subnet:
        """One random subnet; with `flops_range=(lo, hi)` its FLOPs lie in [lo, hi)."""
        return self.sample_many(1, rng=rng, flops_range=flops_range).subnet(0)

    def sample_many(
            self,
            n: int,
            rng: RngLike = None,
            flops_range: Optional[Tuple[float, float]] = None,
    ) -> SubnetBatch:
        """`n` random subnets as arrays. Without `flops_range`: uniform per group and resolution.

        With `flops_range=(lo, hi)` every subnet's FLOPs lie in [lo, hi): drawn uniformly from the members of the
        space's candidate bank in that range (up to `bank_size` distinct subnets spread over the FLOPs span, resolutions
        and group widths varying freely; built once per space), or, where the bank has none, by a random walk
        from candidates at that level of the space. Every range between the min and max subnet is reachable.
        """
        n = _as_int(n, 'n')
        rng = np.random.default_rng(rng)
        if flops_range is None:
            return self._batch_from_indices(self._uniform_indices(rng, n))
        return self.sample_in_range(n, rng, self._check_flops_range(flops_range))

    def sample_in_range(self, n: int, rng: RngLike, value_range: Tuple[float, float],
                        cost: Optional[Callable[[SubnetBatch], np.ndarray]] = None,
                        ranked: Optional[RangeSampler] = None, unit: str = 'FLOPs') -> SubnetBatch:
        """`n` subnets whose `cost` (default: FLOPs) lies in `value_range` [lo, hi), a range the caller has checked:
        uniform among the bank's members in range (`ranked`: `ranked_candidates(cost)`, kept by the caller so the
        bank is costed once), or, where none lies there, walked in from subnets at that level of the space (every
        cost must grow with every width and resolution)."""
        rng, (lo, hi) = np.random.default_rng(rng), value_range
        ranked = self.ranked_candidates(cost) if ranked is None else ranked
        positions = ranked.draw(n, rng, lo, hi)
        if positions is not None:
            return self._batch_from_indices(self.candidate_bank[1][positions].astype(np.int64))
        values = None if cost is None else (lambda idx: np.asarray(cost(self._batch_from_indices(idx)), np.float64))
        return self._walk_sample(n, rng, lo, hi, values=values, unit=unit)

    def ranked_candidates(self, cost: Optional[Callable[[SubnetBatch], np.ndarray]] = None) -> RangeSampler:
        """The candidate bank ranked by `cost` of a SubnetBatch (default: FLOPs, ranked once per space), for
        `sample_in_range` with the same cost, and for the `span` and `count` of costs among the candidates."""
        bank_flops, bank_idx = self.candidate_bank
        if cost is not None:
            return RangeSampler(np.asarray(cost(self._batch_from_indices(bank_idx.astype(np.int64))), np.float64))
        if getattr(self, '_flops_ranked', (None,))[0] is not bank_flops:  # ranked once per bank
            self._flops_ranked = (bank_flops, RangeSampler(bank_flops))
        return self._flops_ranked[1]

    bank_size: int = 1 << 18

    def num_candidates(self, flops_range: Tuple[float, float]) -> int:
        """How many distinct subnets `sample(flops_range=...)` draws from (0: the range is served by the walk).

        `flops_range=(lo, hi)` with lo <= hi (an empty range holds 0); anything else raises ValueError.
        """
        return self.ranked_candidates().count(*ordered_range(flops_range, 'flops_range'))

    @property
    def candidate_bank(self) -> Tuple[np.ndarray, np.ndarray]:
        """(flops ascending, choice indices) of up to `bank_size` distinct subnets spread over the FLOPs span."""
        if not hasattr(self, '_bank_cache'):
            if not 1 <= self.bank_size <= MAX_BANK_SIZE:
                raise ValueError(f'bank_size is {self.bank_size}; the candidate bank holds 1 .. {MAX_BANK_SIZE} '
                                 f'subnets')
            rng = np.random.default_rng(0x955)
            levels, ladder = self._ladder
            level = np.interp(rng.uniform(ladder[0], ladder[-1], self.bank_size), ladder, levels)
            idx = np.concatenate([self._tilted_indices(rng, self.bank_size, level[:, None]),
                                  np.zeros((1, self._sizes.size), np.int64), (self._sizes - 1)[None]])
            idx = np.unique(idx, axis=0)  # each distinct subnet once: draws are uniform over distinct subnets
            flops = self._flops_of_indices(idx)
            order = np.argsort(flops, kind='stable')
            self._bank_cache = (flops[order], idx[order].astype(np.int16))
        return self._bank_cache

    def _walk_sample(self, n: int, rng: np.random.Generator, lo: float, hi: float, max_rounds: int = 32,
                     values: Optional[Callable[[np.ndarray], np.ndarray]] = None, unit: str = 'FLOPs'):
        """`n` subnets with `values` (default: FLOPs) in [lo, hi), walked in from candidates at that level."""
        values = values or self._flops_of_indices
        levels, ladder = self._ladder if values == self._flops_of_indices else self._value_ladder(values)
        level = float(np.interp((lo + hi) / 2, ladder, levels))
        kept, have = [], 0
        for _ in range(max_rounds):
            want = n - have
            idx, found = self._walk_into_range(self._tilted_indices(rng, 2 * want + 8, level), lo, hi, rng,
                                               values=values)
            inside = np.flatnonzero((found >= lo) & (found < hi))[:want]
            kept.append(idx[inside])
            have += inside.size
            if have >= n:
                return self._batch_from_indices(np.concatenate(kept))
        raise ValueError(f'found only {have} of {n} subnets with {unit} in [{lo:.4g}, {hi:.4g}); the range is too '
                         f'narrow for this space\'s width and resolution steps')

    def _check_flops_range(self, flops_range) -> Tuple[float, float]:
        lo, hi = (float(v) for v in flops_range)
        f_min, f_max = self.flops_span
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f'flops_range must be two finite numbers lo < hi, got {flops_range!r}')
        if hi <= f_min or lo > f_max:
            raise ValueError(f'flops_range [{lo:.4g}, {hi:.4g}) holds no subnet: this space spans '
                             f'{f_min} .. {f_max} FLOPs (MACs)')
        return lo, hi

    # sampling internals: a subnet as choice indices, one column per group plus the resolution last

    @property
    def _sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.width_choices] + [len(self.resolutions)], dtype=np.int64)

    @property
    def _choice_matrix(self) -> np.ndarray:
        """(G, max choices) widths, padded, for gathering the widths of many index rows at once."""
        if not hasattr(self, '_choices_padded'):
            padded = np.zeros((self.num_groups, max(len(c) for c in self.width_choices)), dtype=np.int64)
            for g, c in enumerate(self.width_choices):
                padded[g, :len(c)] = c
            self._choices_padded = padded
        return self._choices_padded

    @property
    def _ladder(self) -> Tuple[np.ndarray, np.ndarray]:
        """(levels, flops): FLOPs of the subnet at a shared level u in [0, 1] of every choice list (monotone)."""
        if not hasattr(self, '_ladder_cache'):
            self._ladder_cache = self._value_ladder(self._flops_of_indices)
        return self._ladder_cache

    def _value_ladder(self, values: Callable[[np.ndarray], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """(levels, values) of the subnets at shared levels u in [0, 1] of every choice list, made monotone."""
        levels = np.linspace(0.0, 1.0, 513)
        idx = np.minimum((levels[:, None] * self._sizes).astype(np.int64), self._sizes - 1)
        return levels, np.maximum.accumulate(values(idx)).astype(np.float64)

    def _batch_from_indices(self, idx: np.ndarray) -> SubnetBatch:
        widths = self._choice_matrix[np.arange(self.num_groups), idx[:, :-1]]
        return SubnetBatch(np.asarray(self.resolutions, dtype=np.int64)[idx[:, -1]], widths)

    def _flops_of_indices(self, idx: np.ndarray) -> np.ndarray:
        return self.flops_many(self._batch_from_indices(idx))

    def _uniform_indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.random((n, self._sizes.size)) * self._sizes).astype(np.int64)

    def _tilted_indices(self, rng: np.random.Generator, n: int, level) -> np.ndarray:
        """Indices around a shared `level`: per row a spread, per column independent noise (reflected at 0 and 1)."""
        spread = rng.uniform(0.02, 0.3, size=(n, 1))
        u = np.abs(level + spread * rng.standard_normal((n, self._sizes.size)))
        u = 1.0 - np.abs(1.0 - np.mod(u, 2.0))
        return np.minimum((u * self._sizes).astype(np.int64), self._sizes - 1)

    def _walk_into_range(self, idx: np.ndarray, lo: float, hi: float, rng: np.random.Generator,
                         max_steps: int = 400, values: Optional[Callable[[np.ndarray], np.ndarray]] = None
                         ) -> Tuple[np.ndarray, np.ndarray]:
        """Random walk: each row whose value (default: FLOPs) lies outside [lo, hi) moves one column a step
        towards it (every value grows with every choice index)."""
        values = values or self._flops_of_indices
        sizes = self._sizes
        flops = values(idx)
        active = np.flatnonzero((flops < lo) | (flops >= hi))
        for _ in range(max_steps):
            if active.size == 0:
                break
            up = flops[active] < lo
            col = rng.integers(0, sizes.size, size=active.size)
            new = idx[active, col] + np.where(up, 1, -1)
            ok = (new >= 0) & (new < sizes[col])
            idx[active[ok], col[ok]] = new[ok]
            flops[active] = values(idx[active])
            active = active[(flops[active] < lo) | (flops[active] >= hi)]
        return idx, flops

    def to_dict(self) -> dict:
        """A JSON-friendly description of the space (groups, choices, resolutions)."""
        return {
            'groups': [{'name': n, 'widths': list(c)} for n, c in zip(self.group_names, self.width_choices)],
            'resolutions': list(self.resolutions),
        }


def stratified_subnets(space: SearchSpace, n: int, rng: RngLike = None, candidates: int = 20_000) -> list:
    """`n` subnets spread evenly over the FLOPs span, by ascending FLOPs: for each of `n` evenly spaced FLOPs
    targets from the min to the max subnet, the nearest not yet chosen of `candidates` uniform random subnets
    (drawn with `rng`) plus the min and max subnets (so with n >= 2 the first is the min, the last the max).

    For measuring things along the span (latency ground truth, a table's overhead fit) with every level present.
    """
    n, candidates = _as_int(n, 'n'), _as_int(candidates, 'candidates')
    if not 0 <= n <= candidates + 2:
        raise ValueError(f'n must be between 0 and candidates + 2 = {candidates + 2} (each candidate is chosen at '
                         f'most once), got {n}')
    pool = space.sample_many(candidates, rng=rng)
    ends = SubnetBatch.from_subnets([space.min_subnet(), space.max_subnet()])
    pool = SubnetBatch(np.concatenate([ends.resolutions, pool.resolutions]), np.concatenate([ends.widths, pool.widths]))
    flops = space.flops_many(pool).astype(np.float64)
    chosen = []
    for target in np.linspace(flops.min(), flops.max(), n):
        distance = np.abs(flops - target)
        distance[chosen] = np.inf
        chosen.append(int(np.argmin(distance)))
    return [pool.subnet(i) for i in chosen]


def describe_choices(values: Sequence[int]) -> str:
    """Allowed values for an error message: 'lo..hi in steps of s' when evenly spaced, else each one."""
    values = list(values)
    if len(values) > 2:
        steps = {b - a for a, b in zip(values, values[1:])}
        if len(steps) == 1:
            return f'{values[0]}..{values[-1]} in steps of {steps.pop()}'
    return ', '.join(str(v) for v in values)
