"""`main`: the `train-pss` / `python train_pss.py` command."""
import sys
from typing import Optional, Sequence

import torch.distributed as dist
from timm.utils import setup_default_logging

from .args import parse_args
from .checks import CommandError, check_run_args
from .finalize import finalize
from .loop import train_epochs
from .run import setup, stop_on_failed_write


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse and check the arguments, set up, train (unless --pss-finalize-only), finalise on rank 0.

    A `CommandError` (a usage error: exit code 2; a failed run: 1) stops the command with one line, as argparse's
    `train_pss.py: error: ...`, and no traceback."""
    setup_default_logging()
    try:
        args, args_text = parse_args(argv)
        resume_file = check_run_args(args)
        run = setup(args, args_text, resume_file)
        if not args.pss_finalize_only:
            with stop_on_failed_write(run.output_dir):
                train_epochs(run)
        if run.primary:
            with stop_on_failed_write(run.output_dir, finalising=True):
                finalize(run)
    except CommandError as e:
        print(f'train_pss.py: error: {e}', file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    if args.distributed:
        dist.barrier(group=run.wait_group)  # rank 0 finalised
        dist.destroy_process_group()
