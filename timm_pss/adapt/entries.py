"""What the controller switches between: an ordered set of servable entries behind a small interface.

`ServingEntries` is that interface: `infos` (one `EntryInfo` per entry: name, FLOPs, validation accuracy,
predicted latency, input resolution), a `lock` held from a switch through the call it serves, `active` (the
entry in use), `activate(i)`,
`example(i)` (an input of the entry's shape, for measuring) and `__call__(x)` (run the active entry).
`SupernetEntries` implements it for a trained supernet and its budget table (one shared model, switched with
`set_budget_entry` under the model's `switch_lock`). `ExportedEntries` implements it for the entries of an export
folder (`python -m timm_pss.export`): one onnxruntime session per entry, fp32 or int8, `activate` choosing the
session.

`ladder` orders the entries fastest first and drops those that cannot be worth serving (slower and no more
accurate than a faster one); `measure_latency` times every entry here and now.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, List, Optional, Protocol, Sequence

import torch
from torch import nn

from ..budget_table import LATENCY_METRIC
from ..supernet import find_supernet

__all__ = ['ACCURACY_METRIC', 'SELECTION_METRIC', 'EntryInfo', 'ExportedEntries', 'ServingEntries', 'SupernetEntries',
           'ladder', 'measure_latency']

ACCURACY_METRIC = 'top1'  # the budget-table metric read as an entry's accuracy: validation top-1 (%)
SELECTION_METRIC = 'heldout_top1'  # the one the ladder keeps entries by (as set_budget does): not the validation


@dataclass(frozen=True)
class EntryInfo:
    """One servable entry as the controller sees it; None where unknown."""
    name: str
    flops: Optional[float] = None
    accuracy: Optional[float] = None  # validation top-1 (%)
    latency_ms: Optional[float] = None  # predicted (or measured) on the device it is served on
    resolution: Optional[int] = None  # input side the entry runs at
    selection: Optional[float] = None  # what the ladder compares entries by, if not `accuracy` (held-out top-1)


class ServingEntries(Protocol):
    """The interface the controller needs from what it serves (see the module docstring)."""
    infos: Sequence[EntryInfo]
    lock: ContextManager

    @property
    def active(self) -> Optional[int]: ...

    def activate(self, index: int) -> None: ...

    def example(self, index: int) -> Any: ...

    def __call__(self, x: Any) -> Any: ...


class SupernetEntries:
    """The budget-table entries of a trained supernet (or anything wrapping one) as `ServingEntries`.

    Accuracy is each entry's `top1` metric (validation top-1, recorded by train_pss.py); the ladder keeps entries
    by `heldout_top1` (accuracy on held-out training data) where the table has it, so which entries are served is
    not chosen on the validation split that the reported accuracy comes from. Latency is the predicted
    `latency_ms` (`timm_pss.latency.record_latency`) when the table has one for the device the model is on. The
    lock is the model's `switch_lock`, the one `timm_pss.budget(...)` holds, so the controller and `with budget()`
    blocks on the same model never interleave. Calls run under `torch.inference_mode`.
    """

    def __init__(self, model: nn.Module, accuracy_metric: str = ACCURACY_METRIC):
        self.model = model
        self.supernet = find_supernet(model)
        table = self.supernet.budget_table
        if not len(table):
            raise RuntimeError('this model has no budget table to adapt over: load a trained run '
                               '(timm.create_model("local-dir:RUN", pretrained=True)) or build one with '
                               'timm_pss.fill_budget_table(model, subnets, loader)')
        recorded = table.info.get('latency_device')
        device = next(self.supernet.parameters()).device
        if recorded is not None and recorded.split(':')[0] != device.type:
            raise ValueError(f'this budget table\'s latencies were predicted for {recorded}, the model is on '
                             f'{device.type}: record latencies for this device (timm_pss.latency.record_latency) or '
                             f'measure them (timm_pss.adapt.measure_latency)')
        self.table = table
        self.device = device
        self.in_chans = int((getattr(self.supernet, 'pretrained_cfg', None) or {}).get('input_size', (3,))[0])
        self.infos = [EntryInfo(name=f'#{i}', flops=float(e.flops), accuracy=e.metrics.get(accuracy_metric),
                                latency_ms=e.metrics.get(LATENCY_METRIC), resolution=e.subnet.resolution,
                                selection=e.metrics.get(SELECTION_METRIC))
                      for i, e in enumerate(table)]
        self.lock = self.supernet.switch_lock

    @property
    def active(self) -> Optional[int]:
        """The entry whose subnet and BN statistics are in use (None: none, e.g. after a bare set_subnet)."""
        return self.supernet.active_budget_index

    def activate(self, index: int) -> None:
        self.supernet.set_budget_entry(index)

    def example(self, index: int) -> torch.Tensor:
        """A batch of one zero image at entry `index`'s resolution, on the model's device."""
        side = self.infos[index].resolution
        return torch.zeros(1, self.in_chans, side, side, device=self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)


class ExportedEntries:
    """The entries of an export folder written by `python -m timm_pss.export` as `ServingEntries`: one onnxruntime
    session per entry of its (checked) manifest, `kind` 'onnx' (fp32) or 'int8', on the CPU with `threads` threads.

    Accuracy is the entry's validation top-1 as the table recorded it, or, for int8, the int8 top-1 the export
    measured; latency the table's prediction where it has one. Inputs are numpy float32 arrays (torch tensors are
    converted); each call returns the session's logits. The lock is this object's own re-entrant lock.
    """

    def __init__(self, folder, kind: str = 'onnx', threads: int = 1):
        import threading
        import onnxruntime
        from ..deploy import read_manifest

        if kind not in ('onnx', 'int8'):
            raise ValueError(f"kind must be 'onnx' or 'int8', got {kind!r}")
        manifest = read_manifest(folder)
        if not manifest.entries:
            raise ValueError(f'{folder}: the manifest lists no entries to serve')
        lacking = [e['name'] for e in manifest.entries if manifest.path(e, kind).name not in e['files']]
        if lacking:
            raise ValueError(f'{folder}: entries {lacking[:3]} have no {manifest.path(manifest.entries[0], kind).name}'
                             f'; export them with --format onnx{" --int8" if kind == "int8" else ""}')
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.manifest = manifest
        self.sessions = [onnxruntime.InferenceSession(str(manifest.path(e, kind)), options,
                                                      providers=['CPUExecutionProvider']) for e in manifest.entries]
        self.input_names = [s.get_inputs()[0].name for s in self.sessions]

        def accuracy(e):
            return e['checks'].get('int8', {}).get('top1_int8') if kind == 'int8' else e['metrics'].get(
                ACCURACY_METRIC)

        self.infos = [EntryInfo(name=e['name'], flops=float(e['flops']), accuracy=accuracy(e),
                                latency_ms=e['metrics'].get(LATENCY_METRIC), resolution=int(e['input_size'][1]),
                                selection=e['metrics'].get(SELECTION_METRIC)) for e in manifest.entries]
        self.shapes = [tuple(e['input_size']) for e in manifest.entries]
        self.lock = threading.RLock()
        self._active: Optional[int] = None

    @property
    def active(self) -> Optional[int]:
        return self._active

    def activate(self, index: int) -> None:
        if not 0 <= index < len(self.sessions):
            raise IndexError(f'entry {index} does not exist; there are {len(self.sessions)}')
        self._active = index

    def example(self, index: int):
        import numpy as np
        return np.zeros((1, *self.shapes[index]), dtype=np.float32)

    def __call__(self, x: Any) -> Any:
        import numpy as np
        index = self._active
        if index is None:
            raise RuntimeError('no entry is active: activate one first (AdaptiveServer does)')
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        return self.sessions[index].run(None, {self.input_names[index]: array})[0]


def ladder(infos: Sequence[EntryInfo], latency_ms: Optional[Sequence[float]] = None) -> List[int]:
    """Entry indices fastest first, keeping only entries better than every faster one kept.

    Speed is `latency_ms` (given, e.g. measured) or the entries' own latencies when every entry has one, else
    FLOPs; ties break by FLOPs then index. Better: a higher `selection` when every entry has one, else a higher
    `accuracy`; without either for every entry, all entries stay.
    """
    if not infos:
        raise ValueError('no entries to serve')
    speed = latency_ms if latency_ms is not None else [i.latency_ms for i in infos]
    if len(speed) != len(infos):
        raise ValueError(f'{len(speed)} latencies for {len(infos)} entries')
    if any(v is None for v in speed):
        if any(i.flops is None for i in infos):
            raise ValueError('every entry needs a latency or FLOPs to order the ladder by')
        speed = [i.flops for i in infos]
    order = sorted(range(len(infos)), key=lambda i: (speed[i], infos[i].flops or 0.0, i))
    if all(i.selection is not None for i in infos):
        quality = [i.selection for i in infos]
    elif all(i.accuracy is not None for i in infos):
        quality = [i.accuracy for i in infos]
    else:
        return order
    kept: List[int] = []
    for i in order:
        if not kept or quality[i] > quality[kept[-1]]:
            kept.append(i)
    return kept


def measure_latency(entries: ServingEntries, repeats: int = 10, warmup: int = 1,
                    clock: Callable[[], float] = time.perf_counter) -> List[float]:
    """Each entry's median latency (ms) of `entries(entries.example(i))` here and now.

    Interleaved, so a change of the machine's speed meanwhile falls on every entry alike: `repeats` rounds, each
    activating every entry in turn, running `warmup` untimed calls (the first call after a switch may be slower)
    and timing one. Holds the entries' lock throughout; the entry active afterwards is the last one (the caller
    activates the one it serves next).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}')
    count = len(entries.infos)
    times: List[List[float]] = [[] for _ in range(count)]
    with entries.lock:
        examples = [entries.example(i) for i in range(count)]
        for _ in range(repeats):
            for index in range(count):
                entries.activate(index)
                for _ in range(warmup):
                    entries(examples[index])
                start = clock()
                entries(examples[index])
                times[index].append((clock() - start) * 1e3)
    return [statistics.median(t) for t in times]
