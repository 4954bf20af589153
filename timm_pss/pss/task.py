"""The PSS training step as a timm `ClassificationTask`: max subnet, prioritized middle subnet(s), min subnet.

One call runs PSS-Net's sandwich (max, middle, min subnet; the sampling rule is in timm_pss.pss.pools) with one
forward per subnet and returns the summed loss for a single backward (so timm's NativeScaler/AMP, gradient
accumulation, DDP and ModelEmaV3 work as with any task):
the max subnet learns from the task's criterion (label smoothing / mixup aware), the middle and min subnets
from the max subnet's detached predictions (in-place distillation). Each middle subnet's pool score is minus its
cross-entropy on the batch's hard labels, taken from that same training forward; under DDP the scores are
averaged over ranks, and every rank's sampler (same seed) makes the same decisions, so pools stay identical.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from timm.task import ClassificationTask

from ..supernet import find_supernet
from .pools import PrioritizedSubnetSampler, Proposal

__all__ = ['PSSTask', 'inplace_distillation_loss', 'hard_labels']


def inplace_distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || subnet) per sample, batch mean; the teacher (max subnet) probabilities carry no gradient."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), teacher_probs, reduction='batchmean')


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices of a batch: the labels themselves, or the dominant class of mixup/cutmix soft targets."""
    return target if target.dim() == 1 else target.argmax(dim=-1)


class PSSTask(ClassificationTask):
    """Prioritized Subnet Sampling training step for a timm_pss supernet.

    Args:
        model: the supernet (any wrapper `find_supernet` sees through is fine later, e.g. after
            `prepare_distributed`).
        sampler: the pools and schedules (`PrioritizedSubnetSampler`); call `sampler.set_progress(...)` as
            training advances.
        num_middle: middle subnets per step (reference: 1).
        criterion / criterion_kwargs: the max subnet's loss, as for timm's ClassificationTask.
    """

    def __init__(
            self,
            model: nn.Module,
            sampler: PrioritizedSubnetSampler,
            num_middle: int = 1,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(model, criterion=criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype,
                         verbose=verbose)
        if num_middle < 0:
            raise ValueError(f'num_middle must be >= 0, got {num_middle}')
        self.sampler = sampler
        self.num_middle = int(num_middle)
        self.last_proposals: List[Proposal] = []

    @property
    def supernet(self):
        return find_supernet(self.trainable_module)

    def forward(
            self,
            input: torch.Tensor,
            target: torch.Tensor,
            hard_target: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """One sandwich step; `hard_target` gives class indices when `target` holds mixup/cutmix soft targets."""
        supernet, model, space = self.supernet, self.trainable_module, self.supernet.space
        labels = hard_labels(target) if hard_target is None else hard_target

        supernet.set_subnet(space.max_subnet())
        output = model(input)
        loss_max = self.criterion(output, target)
        teacher = output.detach().float().softmax(dim=-1)

        proposals = [self.sampler.propose() for _ in range(self.num_middle)]
        distill, scores = [], []
        for proposal in proposals:
            supernet.set_subnet(proposal.subnet)
            logits = model(input)
            distill.append(inplace_distillation_loss(logits, teacher))
            scores.append(-F.cross_entropy(logits.detach().float(), labels))

        supernet.set_subnet(self.sampler.min_subnet())  # the space's min; US-Net's at its fixed resolution
        distill.append(inplace_distillation_loss(model(input), teacher))
        supernet.set_subnet(space.max_subnet())

        if proposals:
            self._update_pools(proposals, torch.stack(scores))
        self.last_proposals = proposals
        loss_distill = torch.stack(distill).sum()
        return {
            'loss': loss_max + loss_distill,
            'output': output,
            'loss_max': loss_max.detach(),
            'loss_distill': loss_distill.detach(),
        }

    @torch.no_grad()
    def _update_pools(self, proposals: List[Proposal], scores: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(scores, op=dist.ReduceOp.SUM)
            scores = scores / dist.get_world_size()
        for proposal, score in zip(proposals, scores.tolist()):
            self.sampler.update(proposal.bucket, proposal.subnet, score)

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """The pools, schedules' progress and sampler RNG (plain JSON), for checkpoints."""
        return {'pss_sampler': self.sampler.state_dict()}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if not state or 'pss_sampler' not in state:
            if strict:
                raise ValueError('checkpoint has no PSS sampler state (task_state["pss_sampler"]); pools would '
                                 'restart empty — pass strict=False to accept that')
            return
        self.sampler.load_state_dict(state['pss_sampler'])
