"""Deploy every budget: each budget-table entry of a trained supernet as a checked static model, with a manifest.

    python -m timm_pss.export RUN --output DIR                        # every entry: safetensors, ONNX, TorchScript
    python -m timm_pss.export RUN --output DIR --budgets 0 8M --int8  # two entries, plus int8 ONNX and its top-1

For each chosen entry, `DIR/<name>/` holds the static subnet (`export_subnet` with that entry's BN statistics):
`model.safetensors` + `config.json` (so `timm.create_model('local-dir:DIR/<name>', pretrained=True)` loads it; an
entry narrower than the dense model is the `timm_pss_subnet` architecture, which needs `import timm_pss`),
`model.onnx` (BN folded into the convolutions by the exporter), `model.torchscript.pt` (frozen: BN folded) and with
`--int8` `model.int8.onnx` (always with a dynamic batch dimension). Every file is checked before it is kept:
onnxruntime's and TorchScript's outputs against torch's on a fixed batch (max abs diff <= 1e-4, else the command
stops with a one-line error naming the entry), and int8's top-1 next to fp32's on a validation loader.
`DIR/manifest.json` (read back with `read_manifest`, which checks it) lists per entry its FLOPs, parameters, subnet,
input size and preprocessing, the table's metrics, each file's size and sha256, and the checks' numbers.

Nothing lost: `--output` must be new or empty (`--force`: one holding other files; never a training run folder);
an entry's files are written into a temporary folder and moved into place only when all its checks passed, so a
failed entry leaves nothing behind, and the manifest (written atomically at the end, also after a failure) lists
exactly the entries that were written.

int8: onnxruntime's static quantization (QDQ, per-channel int8 weights, uint8 activations, min-max calibration on
a few batches of training images), chosen because it runs on any CPU with the ONNX file the fp32 check already
made, where torch's PT2E flow needs a backend-specific quantizer per CPU. Calibration and validation data: the
embedded digits of a digits run (its own training and validation splits), or `--data-dir` / `--dataset` as in timm.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .files import TEMP_PREFIX, check_replaceable, write_text_atomic
from .runs import check_output_folder
from .units import parse_flops

__all__ = ['MANIFEST_FORMAT', 'FORMATS', 'DeployError', 'Manifest', 'ManifestEntry', 'read_manifest',
           'export_budgets', 'main']

MANIFEST_FORMAT = 'timm_pss.deploy/1'
FORMATS = ('safetensors', 'onnx', 'torchscript')
FP32_TOLERANCE = 1e-4
CHECK_BATCH = 4  # images in the fixed batch every export is compared on
FILES = {'safetensors': ('model.safetensors', 'config.json'), 'onnx': ('model.onnx',),
         'torchscript': ('model.torchscript.pt',), 'int8': ('model.int8.onnx',)}


class DeployError(RuntimeError):
    """An entry whose export failed a check; the message names the entry and the check."""


class ManifestEntry(dict):
    """One exported entry of a manifest (a dict: name, index, flops, params, subnet, input_size, preprocessing,
    metrics, files, checks)."""

    @property
    def folder(self) -> str:
        return self['name']


class Manifest:
    """A read and checked `manifest.json`: `entries` sorted by cost (FLOPs), `folder`, `model`."""

    def __init__(self, folder: Path, model: str, entries: Sequence[ManifestEntry]):
        self.folder, self.model = folder, model
        self.entries: List[ManifestEntry] = sorted(entries, key=lambda e: (e['flops'], e['index']))

    def path(self, entry: ManifestEntry, kind: str) -> Path:
        """The file of `entry` for `kind` ('safetensors', 'onnx', 'torchscript', 'int8')."""
        return self.folder / entry['name'] / FILES[kind][0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


_ENTRY_FIELDS = {'name': str, 'index': int, 'flops': int, 'params': int, 'subnet': dict, 'input_size': list,
                 'preprocessing': dict, 'metrics': dict, 'files': dict, 'checks': dict}


def read_manifest(folder) -> Manifest:
    """Read `folder/manifest.json` and check it: its format, every entry's fields, and every listed file (present,
    of the recorded size and sha256). Any problem is a one-line ValueError naming the entry or file."""
    folder = Path(folder)
    path = folder / 'manifest.json'
    try:
        doc = json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise ValueError(f'{path} is missing: not a folder written by python -m timm_pss.export') from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f'{path}: not valid JSON ({type(e).__name__})') from None
    if not isinstance(doc, dict) or doc.get('format') != MANIFEST_FORMAT or not isinstance(doc.get('entries'), list):
        raise ValueError(f'{path}: expected a JSON object with "format": "{MANIFEST_FORMAT}" and a list of entries')
    entries = []
    for i, raw in enumerate(doc['entries']):
        bad = [k for k, t in _ENTRY_FIELDS.items() if not isinstance(raw, dict) or not isinstance(raw.get(k), t)
               or isinstance(raw.get(k), bool)]
        if bad:
            raise ValueError(f'{path}: entry {i} has no valid "{bad[0]}"')
        for name, info in raw['files'].items():
            file = folder / raw['name'] / name
            if Path(name).name != name or Path(raw['name']).name != raw['name']:
                raise ValueError(f'{path}: entry {raw["name"]!r} lists a file outside its folder: {name!r}')
            if not file.is_file():
                raise ValueError(f'{path}: entry {raw["name"]}: {name} is missing')
            if not isinstance(info, dict) or file.stat().st_size != info.get('bytes') or _sha256(file) != info.get(
                    'sha256'):
                raise ValueError(f'{path}: entry {raw["name"]}: {name} does not match its recorded size and sha256 '
                                 f'(changed or damaged since it was exported)')
        entries.append(ManifestEntry(raw))
    return Manifest(folder, str(doc.get('model', '')), entries)


def _choose_entries(table, budgets: Sequence[str]) -> List[int]:
    """Entry indices for `--budgets`: 'all', entry indices, or FLOPs budgets (the entry set_budget serves)."""
    if list(budgets) in ([], ['all']):
        return list(range(len(table)))
    chosen = []
    for value in budgets:
        text = str(value).strip()
        if text.lstrip('-').isdigit():
            index = int(text)
            if not -len(table) <= index < len(table):
                raise ValueError(f'--budgets {text}: entry {index} does not exist; the table has {len(table)} entries')
            index %= len(table)
        else:
            index = table.choose(parse_flops(text)).index
        if index not in chosen:
            chosen.append(index)
    return chosen


def _entry_name(index: int, flops: int) -> str:
    return f'{index:02d}_{flops / 1e6:.2f}M'


def _config(supernet, static, entry) -> dict:
    """The entry's config.json in timm's layout: the dense architecture at full width, else `timm_pss_subnet`."""
    from timm.models import filter_pretrained_cfg, get_model_args
    from .models.build import BUDGET_KWARGS
    cfg = filter_pretrained_cfg(dict(static.pretrained_cfg), remove_source=True, remove_null=True)
    cfg.pop('pss_subnet', None)
    dense = entry.subnet.widths == supernet.space.max_widths
    args = dict(num_classes=supernet.num_classes, in_chans=supernet.in_chans)
    if dense:
        architecture = supernet.dense_architecture
    else:
        architecture = 'timm_pss_subnet'
        supernet_args = {k: v for k, v in get_model_args(supernet).items()
                         if k not in ('num_classes', 'in_chans') and k not in BUDGET_KWARGS}
        args.update(supernet=supernet.pretrained_cfg.get('architecture', ''), subnet=entry.subnet.to_dict(),
                    supernet_args=json.loads(json.dumps(supernet_args)))
    cfg.update(architecture=architecture, num_classes=supernet.num_classes)
    return {'architecture': architecture, 'num_classes': supernet.num_classes, 'num_features': static.num_features,
            'model_args': args, 'pretrained_cfg': cfg}


def _onnx(static, path: Path, x: torch.Tensor, opset: int, dynamic_batch: bool) -> None:
    torch.onnx.export(static, (x,), str(path), input_names=['input'], output_names=['logits'], opset_version=opset,
                      dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}} if dynamic_batch else None,
                      dynamo=False)


def _session(path: Path):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _run(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _top1(predict, loader) -> float:
    correct = total = 0
    for images, target in loader:
        logits = predict(images)
        correct += int((torch.as_tensor(logits).argmax(-1) == target).sum())
        total += int(target.shape[0])
    return 100.0 * correct / max(total, 1)


def _int8(fp32: Path, path: Path, calib_loader, calib_batches: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([images.numpy() for i, (images, _) in zip(range(calib_batches), calib_loader)])

        def get_next(self):
            images = next(self.batches, None)
            return None if images is None else {'input': images}

    prepared = path.with_name('int8-prepared.onnx')
    quant_pre_process(str(fp32), str(prepared))  # shape inference and graph clean-up, as onnxruntime advises
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    prepared.unlink()


def _export_entry(supernet, index: int, staging: Path, formats: Sequence[str], int8: bool, loaders, opset: int,
                  dynamic_batch: bool, calib_batches: int) -> ManifestEntry:
    """Write entry `index`'s files into `staging` and check them; returns its manifest entry."""
    from safetensors.torch import save_file
    from timm.data import resolve_data_config
    from .export import export_subnet

    entry = supernet.set_budget_entry(index)
    name = _entry_name(index, entry.flops)
    static = export_subnet(supernet)
    config = resolve_data_config({}, model=static)
    res = entry.subnet.resolution
    x = torch.randn(CHECK_BATCH, supernet.in_chans, res, res, generator=torch.Generator().manual_seed(index))
    with torch.no_grad():
        expected = static(x).numpy()
    checks: Dict[str, object] = {}
    if 'safetensors' in formats:
        save_file({k: v.contiguous() for k, v in static.state_dict().items()}, str(staging / 'model.safetensors'))
        (staging / 'config.json').write_text(json.dumps(_config(supernet, static, entry), indent=2))
    if 'onnx' in formats or int8:
        _onnx(static, staging / 'model.onnx', x, opset, dynamic_batch)
        diff = _max_diff(_run(_session(staging / 'model.onnx'), x.numpy()), expected)
        checks['onnx_max_abs_diff'] = diff
        if not diff <= FP32_TOLERANCE:
            raise DeployError(f'entry {name}: onnxruntime\'s outputs differ from torch\'s by {diff:.3g} '
                              f'(> {FP32_TOLERANCE:g}); nothing of this entry was kept')
    if 'torchscript' in formats:
        scripted = torch.jit.freeze(torch.jit.script(static.eval()))
        torch.jit.save(scripted, str(staging / 'model.torchscript.pt'))
        with torch.no_grad():
            diff = _max_diff(torch.jit.load(str(staging / 'model.torchscript.pt'))(x).numpy(), expected)
        checks['torchscript_max_abs_diff'] = diff
        if not diff <= FP32_TOLERANCE:
            raise DeployError(f'entry {name}: TorchScript\'s outputs differ from torch\'s by {diff:.3g} '
                              f'(> {FP32_TOLERANCE:g}); nothing of this entry was kept')
    if int8:  # from an fp32 graph with a dynamic batch, which calibration and validation batches need
        calib, val = loaders(config)
        source = staging / 'model.onnx'
        if not dynamic_batch:
            source = staging / 'int8-source.onnx'
            _onnx(static, source, x, opset, dynamic_batch=True)
        _int8(source, staging / 'model.int8.onnx', calib, calib_batches)
        fp32_session, int8_session = _session(source), _session(staging / 'model.int8.onnx')
        top1_fp32 = _top1(lambda images: _run(fp32_session, images.numpy()), val)
        top1_int8 = _top1(lambda images: _run(int8_session, images.numpy()), val)
        checks['int8'] = dict(top1_fp32=top1_fp32, top1_int8=top1_int8, top1_delta=top1_int8 - top1_fp32,
                              val_images=len(val.dataset), calib_batches=calib_batches)
        keep = {staging / 'model.onnx'} if 'onnx' in formats else set()
        for unwanted in {source, staging / 'model.onnx'} - keep:
            unwanted.unlink()
    files = {p.name: {'bytes': p.stat().st_size, 'sha256': _sha256(p)} for p in sorted(staging.iterdir())}
    preprocessing = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k != 'input_size'}
    return ManifestEntry(
        name=name, index=index, flops=int(entry.flops), params=sum(p.numel() for p in static.parameters()),
        subnet=entry.subnet.to_dict(), input_size=list(config['input_size']), preprocessing=preprocessing,
        metrics=dict(entry.metrics), served_budget=supernet.budget_table.serving_budgets()[index], files=files,
        checks=checks)


def _move_into_place(staging: Path, target: Path) -> None:
    """Move the checked files from `staging` into `target` (created if needed; only regular files replaced)."""
    target.mkdir(exist_ok=True)
    for file in staging.iterdir():
        check_replaceable(target / file.name)
    for file in sorted(staging.iterdir()):
        os.replace(file, target / file.name)


def export_budgets(model, output, budgets: Sequence[str] = ('all',), formats: Sequence[str] = FORMATS,
                   int8: bool = False, loaders=None, opset: int = 17, dynamic_batch: bool = False,
                   calib_batches: int = 4, force: bool = False, source: str = '') -> Manifest:
    """Export the chosen budget entries of `model` (a supernet with a budget table) into `output`; see the module
    docstring. `loaders(data_config)` gives (calibration, validation) loaders for an entry (needed with `int8`).
    Stops with DeployError at the first entry that fails a check; the manifest then lists the entries written."""
    from .supernet import find_supernet
    supernet = find_supernet(model)
    table = supernet.budget_table
    if not len(table):
        raise ValueError('this model has no budget table to export: train it with train_pss.py, or fill one with '
                         'timm_pss.fill_budget_table')
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f'--format {" ".join(unknown) or "(none)"}: choose from {" ".join(FORMATS)}')
    if int8 and loaders is None:
        raise ValueError('--int8 needs calibration and validation images: a digits run brings its own, else give '
                         '--data-dir (and --dataset) as in timm')
    indices = _choose_entries(table, budgets)
    out = check_output_folder(output, force=force)
    out.mkdir(parents=True, exist_ok=True)
    written: List[ManifestEntry] = []
    error: Optional[BaseException] = None
    with supernet.keep_active():
        for index in indices:
            staging = out / f'{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}'
            staging.mkdir()
            try:
                entry = _export_entry(supernet, index, staging, formats, int8, loaders, opset, dynamic_batch,
                                      calib_batches)
                _move_into_place(staging, out / entry['name'])
                written.append(entry)
            except BaseException as e:  # the manifest still says what was written
                error = e
                break
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    doc = {'format': MANIFEST_FORMAT, 'model': source or supernet.pretrained_cfg.get('architecture', ''),
           'tolerance': FP32_TOLERANCE, 'entries': written}
    write_text_atomic(out / 'manifest.json', json.dumps(doc, indent=1, allow_nan=False))
    if error is not None:
        names = ', '.join(e['name'] for e in written) or 'none'
        raise DeployError(f'{error} (entries written before it: {names})') from error
    return read_manifest(out)


def run_loaders(run: Path, batch_size: int = 64, data_dir: str = '', dataset: str = '', val_split: str = 'validation',
                train_split: str = 'train'):
    """`loaders(data_config)` for a run: the embedded digits of a digits run (from its args.yaml), else timm's
    datasets at `data_dir` / `dataset`; None when neither is known."""
    import yaml
    from timm.data import create_dataset, create_loader

    args_file = run / 'args.yaml' if run is not None else None
    args = yaml.safe_load(args_file.read_text()) if args_file is not None and args_file.is_file() else {}
    digits = not data_dir and not dataset and args and not args.get('data_dir') and not args.get('dataset')
    if not digits and not data_dir and not dataset:
        return None

    def loaders(config):
        if digits:
            from .data import DigitsDataset
            kw = dict(image_size=32, heldout_fraction=args.get('pss_heldout_frac', 0.1), seed=args.get('seed', 0))
            calib, val = DigitsDataset('train', **kw), DigitsDataset('val', **kw)
        else:
            calib = create_dataset(dataset, root=data_dir, split=train_split, is_training=False)
            val = create_dataset(dataset, root=data_dir, split=val_split, is_training=False)
        kw = dict(batch_size=batch_size, is_training=False, use_prefetcher=False, num_workers=0,
                  **{k: config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')})
        return create_loader(calib, **kw), create_loader(val, **kw)
    return loaders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_pss.export', description=__doc__.split('\n', 1)[0])
    parser.add_argument('source', help='a train_pss.py run folder (or Hub folder), or a model name timm loads with '
                                       'pretrained=True (e.g. hf-hub:ORG/NAME)')
    parser.add_argument('--output', required=True, help='a new or empty folder (see --force)')
    parser.add_argument('--budgets', nargs='+', default=['all'], metavar='B',
                        help='"all", entry indices, or FLOPs budgets such as 8M (the entry set_budget serves)')
    parser.add_argument('--format', nargs='+', default=list(FORMATS), choices=FORMATS, dest='formats')
    parser.add_argument('--int8', action='store_true', help='also int8 ONNX (onnxruntime static quantization), with '
                                                            'its top-1 next to fp32\'s')
    parser.add_argument('--dynamic-batch', action='store_true', help='ONNX files with a dynamic batch dimension')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset')
    parser.add_argument('--data-dir', default='', help='images for int8 calibration and validation (timm layout)')
    parser.add_argument('--dataset', default='', help='timm dataset name for --data-dir')
    parser.add_argument('--calib-batches', type=int, default=4, help='batches of training images for int8')
    parser.add_argument('-b', '--batch-size', type=int, default=64)
    parser.add_argument('--force', action='store_true', help='write into an --output folder holding other files')
    args = parser.parse_args(argv)
    for name in ('opset', 'calib_batches', 'batch_size'):
        if getattr(args, name) < 1:
            parser.exit(2, f'error: --{name.replace("_", "-")} must be a positive integer, got {getattr(args, name)}\n')
    try:
        folder = Path(args.source)
        if folder.is_dir():
            from .runs import load_run
            model, run = load_run(folder), folder
        else:
            import timm
            import timm_pss  # noqa: F401
            model, run = timm.create_model(args.source, pretrained=True), None
        model.eval()
        loaders = run_loaders(run, args.batch_size, args.data_dir, args.dataset) if args.int8 else None
        manifest = export_budgets(model, args.output, args.budgets, args.formats, args.int8, loaders, args.opset,
                                  args.dynamic_batch, args.calib_batches, args.force, source=args.source)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        parser.exit(2 if not isinstance(e, DeployError) else 1, f'error: {e}\n')
    for e in manifest.entries:
        int8_note = ''
        if 'int8' in e['checks']:
            c = e['checks']['int8']
            int8_note = f', int8 top-1 {c["top1_int8"]:.2f} vs fp32 {c["top1_fp32"]:.2f}'
        print(f'{e["name"]}: {e["flops"] / 1e6:.2f} MMACs, {len(e["files"])} files'
              f'{"" if e.get("served_budget") else " (no budget serves it)"}{int8_note}')
    print(f'wrote {len(manifest.entries)} entries and {Path(args.output) / "manifest.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
