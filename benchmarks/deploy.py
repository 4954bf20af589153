"""Deployed budget entries: torch eager (the exported subnet) vs onnxruntime fp32 vs onnxruntime int8, per entry.

    python train_pss.py --model pss_mobilenetv1 --output output/train --experiment digits   # a trained run
    python benchmarks/deploy.py output/train/digits            # every entry, batch 1 and 32, one thread
    python benchmarks/deploy.py output/train/digits --quick    # smoke test: two entries, few rounds

Exports the run's entries with `timm_pss.deploy.export_budgets` (ONNX with a dynamic batch, int8 by onnxruntime's
static quantization calibrated on the run's training images) into a temporary folder, then times, per entry and
batch size, the three runtimes interleaved round by round (one thread each), and prints each one's median and its
ratio to torch eager, with int8's top-1 against fp32's on the run's validation split (from the export's checks).
"""
from harness import format_table, interleaved_times_ms, machine_lines  # first: one thread per process

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import timm
import torch

from timm_pss.deploy import export_budgets, run_loaders
from timm_pss.runs import load_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('run', type=Path, help='a train_pss.py run folder with a budget table')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--repeats', type=int, default=30, help='timed rounds at batch 1 (a fifth of it at 32)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='two entries and 3 rounds: a smoke test')
    args = parser.parse_args(argv)
    if min(args.batch_sizes + [args.repeats]) < 1 or args.warmup < 0:
        parser.error('--batch-sizes and --repeats must be positive, --warmup at least 0')
    return args


def session(path: Path):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    supernet = load_run(args.run).eval()
    loaders = run_loaders(args.run)
    if loaders is None:
        raise SystemExit(f'{args.run}: not a digits run; this benchmark validates int8 on the run\'s own data')
    budgets = ['0', '-1'] if args.quick else ['all']
    repeats = 3 if args.quick else args.repeats
    print(machine_lines('Deployed budget entries: torch eager vs onnxruntime fp32 vs int8 (one thread)'))
    print(f'run: {args.run}; rounds: {repeats} at batch 1, {max(1, repeats // 5)} at larger batches\n')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_budgets(supernet, Path(tmp) / 'out', budgets, formats=['safetensors', 'onnx'], int8=True,
                                  loaders=loaders, dynamic_batch=True)
        for e in manifest.entries:
            eager = timm.create_model(f'local-dir:{manifest.folder / e["name"]}', pretrained=True).eval()
            fp32, int8 = session(manifest.path(e, 'onnx')), session(manifest.path(e, 'int8'))
            for batch in args.batch_sizes:
                x = torch.randn(batch, *e['input_size'])
                xn = x.numpy()
                with torch.inference_mode():
                    times = interleaved_times_ms(
                        [lambda: eager(x), lambda: fp32.run(None, {'input': xn}), lambda: int8.run(None, {'input': xn})],
                        repeats if batch == 1 else max(1, repeats // 5), args.warmup)
                ms = [statistics.median(t) for t in times]
                c = e['checks']['int8']
                rows.append([e['name'], str(batch), f'{e["flops"] / 1e6:.2f}', *(f'{m:.2f}' for m in ms),
                             f'{ms[1] / ms[0]:.2f}x', f'{ms[2] / ms[0]:.2f}x', f'{c["top1_fp32"]:.2f}',
                             f'{c["top1_int8"]:.2f}', f'{c["top1_delta"]:+.2f}'])
    print(format_table(['entry', 'batch', 'MMACs', 'torch eager (ms)', 'ort fp32 (ms)', 'ort int8 (ms)',
                        'fp32 / eager', 'int8 / eager', 'top-1 fp32', 'top-1 int8', 'int8 - fp32'], rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
