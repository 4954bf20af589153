"""Exact FLOPs (MACs) of subnets: the MAC terms of an architecture's layers and their evaluation for many subnets.

FLOPs follow the paper's unit: multiply-accumulates of every conv and linear layer plus the global average
pool (H*W*C). For a fixed resolution they are a quadratic form in the vector of group widths extended by a
constant 1, so a space stores one small matrix per resolution and evaluates many subnets with one matmul.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ['MacTerm', 'SpatialOp', 'quadratic_forms', 'flops_of_forms']


@dataclass(frozen=True)
class SpatialOp:
    """Geometry of one spatial op (conv / pool), enough to compute its output size exactly."""
    kernel: int
    stride: int
    padding: int
    dilation: int = 1

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1


@dataclass(frozen=True)
class MacTerm:
    """MACs of one layer: `coef * area * a * b` where a, b are channel counts and area the output H*W.

    `spatial` is the chain of spatial ops from the input to this layer's output, or None after global pooling
    (area 1). `a`/`b` are group indices, or None for the constant 1.
    """
    spatial: Optional[Tuple[SpatialOp, ...]]
    a: Optional[int]
    b: Optional[int]
    coef: int

    def area(self, resolution: int) -> int:
        if self.spatial is None:
            return 1
        size = resolution
        for op in self.spatial:
            size = op.out_size(size)
        return size * size


def quadratic_forms(mac_terms: Sequence[MacTerm], num_groups: int, resolutions: Sequence[int]) -> np.ndarray:
    """(R, G+1, G+1) matrices, one per resolution: flops(r, w) = w~ @ Q[r] @ w~ with w~ = (widths, 1)."""
    g = num_groups
    forms = np.zeros((len(resolutions), g + 1, g + 1), dtype=np.float64)
    for term in mac_terms:
        i = g if term.a is None else term.a
        j = g if term.b is None else term.b
        for r_idx, r in enumerate(resolutions):
            forms[r_idx, i, j] += term.coef * term.area(r)
    return forms


def flops_of_forms(forms: np.ndarray, resolution_index: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """MACs (int64) of subnets given their resolutions as indices into `forms` (N,) and their widths (N, G)."""
    w_ext = np.empty((widths.shape[0], forms.shape[1]), dtype=np.float64)
    w_ext[:, :-1] = widths
    w_ext[:, -1] = 1.0
    out = np.empty(widths.shape[0], dtype=np.float64)
    if forms.shape[0] == 1:
        out[:] = np.einsum('ni,ni->n', w_ext @ forms[0], w_ext)
    else:
        order = np.argsort(resolution_index, kind='stable')
        bounds = np.searchsorted(resolution_index[order], np.arange(forms.shape[0] + 1))
        for k in range(forms.shape[0]):
            sel = order[bounds[k]:bounds[k + 1]]
            if sel.size:
                x = w_ext[sel]
                out[sel] = np.einsum('ni,ni->n', x @ forms[k], x)
    return np.rint(out).astype(np.int64)
