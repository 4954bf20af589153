"""Per-device latency lookup tables: a subnet's end-to-end supernet latency predicted from measured blocks.

A supernet's forward is cut into segments: the stem, each top-level block (EfficientNet `blocks.S.B`, ResNet
`layerN.B`) and the head (what follows the last block, then `forward_head`). From the model's channel plan, a
segment's latency depends only on the input resolution and the widths of the channel groups its layers read or
write. So each segment is measured on a grid of (resolution, widths of its groups), at every width of the space
where that grid is small and at evenly spaced widths (ends included) where it is not, timed in place within full
forwards (so with a real forward's cache and allocator state), and a subnet's latency is the sum of its segments'
multilinearly interpolated times (exact at grid points) plus one constant, `overhead_ms`, fitted on a few
end-to-end measurements. `predict_many` is a few numpy gathers per segment for any number of subnets, so a
latency budget can be searched like a FLOPs budget.

What a table predicts: the median wall time (ms) of `model(x)` in eval mode under `torch.inference_mode`, for the
supernet set to that subnet, `x` a batch of `batch_size` images already at the subnet's resolution, on the device,
dtype and torch thread count it was built with, in steady state (not the first call after switching, which may
compile kernels for new shapes). Tables are JSON (`save` / `load`), never pickles.

On CPU the memory allocator matters as much as the grid: with glibc's default settings, activations of a few MB are
returned to the OS after each forward and page-faulted back in the next, depending on the heap's history (measured
here: pss_mobilenetv2 at 224px 30 ms instead of 18 ms, from some resolution on that varies between runs). Build
and deploy under the same allocator, preferably a stable one (`MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824`, or jemalloc/tcmalloc via LD_PRELOAD); a table records these settings in
`build['allocator']`.

Modules: `table` (LatencyTable: predict, check, JSON, record_latency), `grid` (one segment's measured grid),
`segments` (the forward cut into segments), `device` (device identity, allocator settings), `build` (build_lut:
grid, probes, timing) and `__main__` (the command line, `python -m timm_pss.latency`).
"""
from __future__ import annotations

from .build import AUTO_MAX_GRID, build_lut, fit_overhead_ms
from .device import cpu_name
from .grid import LatencyBlock
from .table import FORMAT, LatencyTable, predict_latency, record_latency

__all__ = ['LatencyBlock', 'LatencyTable', 'build_lut', 'predict_latency', 'record_latency', 'cpu_name', 'FORMAT',
           'AUTO_MAX_GRID', 'fit_overhead_ms', 'main']


def __getattr__(name: str):
    """`timm_pss.latency.main`, the command line, imported on first use: importing `__main__` here would make
    `python -m timm_pss.latency` find it already imported (runpy warns that it may behave unpredictably)."""
    if name == 'main':
        from .__main__ import main
        return main
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
