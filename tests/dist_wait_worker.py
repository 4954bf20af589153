"""Worker for test_train_pss.py: rank 0 works (as when it finalises) longer than the default group's timeout while
rank 1 waits for it.

Run as `torchrun --nproc_per_node=2 tests/dist_wait_worker.py wait_group|default_group`.
"""
import sys
import time
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.distributed_c10d import _set_pg_timeout

from timm_pss.train.run import create_wait_group


def main(mode: str) -> None:
    # Set-up with a long timeout, so that ranks starting seconds apart on a busy machine still meet; then the
    # default group's timeout drops to 2 s (standing in for NCCL's 10 minutes) for the part under test.
    dist.init_process_group('gloo', timeout=timedelta(minutes=10))
    group = create_wait_group() if mode == 'wait_group' else None
    dist.barrier()
    _set_pg_timeout(timedelta(seconds=2))
    if dist.get_rank() == 0:
        time.sleep(8)  # rank 0's evaluation / finalisation, past the default group's timeout
    dist.barrier(group=group)
    print(f'rank {dist.get_rank()} waited', flush=True)
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1])
