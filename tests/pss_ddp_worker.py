"""Worker for test_pss.py: PSS steps under DDP on gloo, each rank on its own data; writes its pools as JSON.

Run as `torchrun --nproc_per_node=2 tests/pss_ddp_worker.py OUT_DIR STEPS`.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import timm

import timm_pss
from timm_pss.pss import PoolMonitor, PrioritizedSubnetSampler, PSSTask


def main(out_dir: str, steps: int) -> None:
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = timm.create_model('pss_mobilenetv2', num_classes=10, resolution_range=(24, 32, 8), width_range=(0.5, 1.0))
    sampler = PrioritizedSubnetSampler(model.space, num_pools=4, pool_size=3, seed=123)
    task = PSSTask(model, sampler, verbose=False).prepare_distributed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own batches
    local_scores = []
    for step in range(steps):
        sampler.set_progress(step / steps)
        images = torch.randn(16, 3, 32, 32, generator=data)
        labels = torch.randint(0, 10, (16,), generator=data)
        result = task(images, labels)
        optimizer.zero_grad()
        result['loss'].backward()
        optimizer.step()
        local_scores.append(float(result['loss_max']))
    # refreshed pool scores are averaged over ranks, so pools stay identical even on a different batch per rank
    batch = torch.Generator().manual_seed(2000 + rank)
    PoolMonitor(task.trainable_module, sampler, torch.randn(8, 3, 32, 32, generator=batch),
                torch.randint(0, 10, (8,), generator=batch), diagnostics=False, refresh=True).end_epoch(0)
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    state = {'sampler': sampler.state_dict(), 'checksum': checksum, 'local_losses': local_scores,
             'table_flops': timm_pss.find_supernet(task.trainable_module).space.flops_span}
    Path(out_dir, f'rank{rank}.json').write_text(json.dumps(state))
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]))
