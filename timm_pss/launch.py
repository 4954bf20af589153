"""Run one of timm's own scripts (validate.py, inference.py, benchmark.py, train.py, onnx_export.py, ...) with the
`pss_*` models registered.

timm has no plugin entry points: its scripts only know the models of the modules they import, so a `pss_*` name or
a `local-dir:` run folder of ours is unknown to them. This imports `timm_pss` first, then runs the script as
`python SCRIPT ARGS...` would (as `__main__`, with the script's folder first on `sys.path` and `sys.argv` set):

    timm-pss-run validate.py --model local-dir:output/train/RUN --data-dir DATA --model-kwargs budget=8M
    python -m timm_pss.launch benchmark.py --model pss_mobilenetv2 --img-size 160 --model-kwargs resolution=160
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ['main', 'run_script']

USAGE = ('usage: timm-pss-run SCRIPT [ARGS...]  (SCRIPT: one of timm\'s scripts, e.g. validate.py from a checkout of '
         'pytorch-image-models; ARGS: its own arguments)')


def run_script(script: str, args: Sequence[str] = ()) -> None:
    """Run the Python file `script` as `python script args...` would, with `timm_pss` imported first."""
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f'{script} is not a file; give the path of a timm script, e.g. validate.py from a '
                                f'checkout of pytorch-image-models')
    import timm_pss  # noqa: F401  (registers the pss_* models with timm)

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path)] + list(args)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name='__main__')
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    try:
        run_script(argv[0], argv[1:])
    except FileNotFoundError as e:
        if Path(argv[0]).is_file():
            raise
        raise SystemExit(f'timm-pss-run: {e}') from None


if __name__ == '__main__':
    main()
