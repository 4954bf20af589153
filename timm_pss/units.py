"""Budget units: FLOPs (MACs) and latency budgets read from numbers or strings like "300M" / "5ms", and written back.

Every budget a user gives (`set_budget`, `--pss-*` options, model kwargs) is read here, so they all accept the
same spellings and refuse bad input with the same one-line errors.
"""
from __future__ import annotations

import math
import numbers
import re
import sys
from typing import Callable, Union

__all__ = ['FlopsLike', 'parse_flops', 'parse_latency', 'format_flops', 'budget_label', 'describe_value']

FlopsLike = Union[int, float, str]
_UNITS = {'': 1.0, 'K': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12}
_BUDGET_RE = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*'
                        r'(?:FLOPs?|MACs?|flops?|macs?)?\s*$')
_LATENCY_RE = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?:ms)?\s*$')


def parse_flops(value: FlopsLike) -> float:
    """A FLOPs (MACs) budget as a number: `3e8`, `300_000_000`, `'300M'`, `'1.2G'`, `'300 MFLOPs'`, `'1.5 GMACs'`.

    Numbers are taken as they are; strings are a number with an optional K/M/G/T suffix (any case; `m` is mega)
    and an optional FLOPs/MACs word. Non-numbers, NaN, infinities, zero and negatives raise ValueError.
    """
    number = _number(value, _flops_from_text, 'a FLOPs budget is a number or a string like "300M"')
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f'a FLOPs budget must be a positive finite number (at most {sys.float_info.max:.4g} MACs), '
                         f'got {describe_value(value)}')
    return number


def parse_latency(value: Union[int, float, str]) -> float:
    """A latency budget in milliseconds: `5`, `2.5`, `'5ms'`, `'5 ms'`; must be positive and finite."""
    number = _number(value, _latency_from_text, 'a latency budget is a number of milliseconds')
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f'a latency budget must be a positive finite number of milliseconds, '
                         f'got {describe_value(value)}')
    return number


def format_flops(flops: float) -> str:
    """MACs for people: '1.5G' from a billion up, else MMACs with 2 decimals ('10.20M')."""
    return f'{flops / 1e9:.3g}G' if flops >= 1e9 else f'{flops / 1e6:.2f}M'


def budget_label(flops: float) -> str:
    """A budget string that `flops` MACs fit in: MMACs rounded up to 2 decimals (e.g. 10,203,656 -> '10.21M')."""
    return f'{math.ceil(flops / 1e4) / 100:.2f}M'


def describe_value(value) -> str:
    """repr(value), shortened (at most about 60 characters), for error messages about possibly huge inputs."""
    if isinstance(value, int) and value.bit_length() > 200:
        digits = len(str(abs(value))) if value.bit_length() < 14000 else 'over 4000'
        return f'{"a negative" if value < 0 else "an"} integer of {digits} digits'
    text = repr(value)
    return text if len(text) <= 60 else f'{text[:40]}...({len(text)} characters)'


def _number(value, from_text: Callable[[str], float], expected: str) -> float:
    """`value` as a float: a string read by `from_text`, a real number as it is (bools are not numbers here)."""
    if isinstance(value, str):
        return from_text(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _as_float(value)
    raise ValueError(f'{expected}, got {type(value).__name__} {value!r}')


def _flops_from_text(text: str) -> float:
    match = _BUDGET_RE.match(text)
    if match is None:
        raise ValueError(f'cannot read {text!r} as a FLOPs budget; write a number of MACs or a string like '
                         f'"300M", "1.2G", "300 MFLOPs" (suffixes K, M, G, T)')
    number = float(match.group(1)) * _UNITS[match.group(2).upper()]
    return float(round(number)) if math.isfinite(number) else number  # whole MACs


def _latency_from_text(text: str) -> float:
    match = _LATENCY_RE.match(text)
    if match is None:
        raise ValueError(f'cannot read {text!r} as a latency budget; write milliseconds as a number or a '
                         f'string like "5ms"')
    return float(match.group(1))


def _as_float(value: numbers.Real) -> float:
    """float(value), with integers too large for a float (e.g. 10**400) as infinity instead of OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
