"""`python -m timm_pss.latency` (console script `timm-pss-latency`): build a latency table and save it as JSON."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from ..files import check_new_file
from .build import build_lut

__all__ = ['main']


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m timm_pss.latency --model pss_mobilenetv2 --output lut.json`: build and save a table."""
    import argparse
    import timm
    # run as `python -m timm_pss.latency`, argparse would call itself '__main__.py' in usage and errors
    prog = 'python -m timm_pss.latency' if os.path.basename(sys.argv[0]) == '__main__.py' else None
    parser = argparse.ArgumentParser(prog=prog, description='Build a latency lookup table for a timm_pss supernet.')
    parser.add_argument('--model', required=True, help='a pss_* model name (with its --model-kwargs space)')
    parser.add_argument('--output', required=True, help='JSON file to write (a new file; see --force)')
    parser.add_argument('--force', action='store_true', help='replace --output if it exists')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (CPU); default: torch\'s')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--width-range', nargs=2, type=float, default=None, metavar=('LO', 'HI'))
    parser.add_argument('--resolutions', nargs=3, type=int, default=None, metavar=('MIN', 'MAX', 'STEP'))
    args = parser.parse_args(argv)

    def fail(message: str) -> None:
        parser.exit(2, f'{parser.prog}: error: {message}\n')

    if args.model not in timm.list_models('pss_*'):
        fail(f'--model {args.model} is not a timm_pss supernet; use one of {timm.list_models("pss_*")}')
    for name in ('batch_size', 'threads', 'num_classes'):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f'--{name.replace("_", "-")} must be a positive integer, got {value}')
    try:
        import torch
        torch.empty(0, device=args.device)
    except (RuntimeError, ValueError) as e:
        fail(f'--device {args.device!r} is not usable here ({str(e).splitlines()[0]}); e.g. cpu or cuda:0')
    try:  # before minutes of measuring, not after
        check_new_file(args.output, force=args.force)
    except ValueError as e:
        fail(f'--output {e}')
    kwargs = {k: v for k, v in (('num_classes', args.num_classes), ('width_range', args.width_range),
                                ('resolution_range', args.resolutions)) if v is not None}
    try:
        model = timm.create_model(args.model, **kwargs).to(args.device).eval()
        table = build_lut(model, device=args.device, batch_size=args.batch_size, threads=args.threads, progress=True)
    except ValueError as e:  # a space the kwargs cannot make (reversed ranges, ...), settings build_lut refuses
        fail(str(e).splitlines()[0])
    table.save(args.output)
    print(f'{table}\nwrote {args.output}')


if __name__ == '__main__':
    main()
