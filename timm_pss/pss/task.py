"""The PSS training step as a timm `ClassificationTask`: max subnet, prioritized middle subnet(s), min subnet.

One call runs PSS-Net's sandwich (max, middle, min subnet; the sampling rule is in timm_pss.pss.samplers) with one
forward per subnet and returns the summed loss for a single backward (so timm's NativeScaler/AMP, gradient
accumulation, DDP and ModelEmaV3 work as with any task):
the max subnet learns from the task's criterion (label smoothing / mixup aware), the middle and min subnets
from the max subnet's detached predictions (in-place distillation). Each middle subnet's pool score is minus its
cross-entropy on the batch's hard labels, taken from that same training forward; under DDP the scores are
averaged over ranks, and every rank's sampler (same seed) makes the same decisions, so pools stay identical
(`check_pools_identical` verifies it). `ResumablePSSTask` also checkpoints the process RNGs for an exact resume.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from timm.task import ClassificationTask

from ..supernet import find_supernet, quiet_forwards
from .pools import Proposal
from .samplers import Sampler

__all__ = ['PSSTask', 'TrainingDiverged', 'ResumablePSSTask', 'inplace_distillation_loss', 'hard_labels',
           'capture_rng_state', 'restore_rng_state', 'check_pools_identical']


def inplace_distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || subnet) per sample, batch mean; the teacher (max subnet) probabilities carry no gradient."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), teacher_probs, reduction='batchmean')


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices of a batch: the labels themselves, or the dominant class of mixup/cutmix soft targets."""
    return target if target.dim() == 1 else target.argmax(dim=-1)


class TrainingDiverged(FloatingPointError):
    """A sandwich step produced a non-finite loss: the weights have diverged, and training on would only write
    NaN scores into the pools and NaN weights into the next checkpoint."""


class PSSTask(ClassificationTask):
    """Prioritized Subnet Sampling training step for a timm_pss supernet.

    Args:
        model: the supernet (any wrapper `find_supernet` sees through is fine later, e.g. after
            `prepare_distributed`).
        sampler: what to train (a `Sampler`, e.g. `PrioritizedSubnetSampler`); call `sampler.set_progress(...)`
            as training advances.
        num_middle: middle subnets per step (reference: 1).
        criterion / criterion_kwargs: the max subnet's loss, as for timm's ClassificationTask.
    """

    def __init__(
            self,
            model: nn.Module,
            sampler: Sampler,
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

        with quiet_forwards(supernet, statistics=False):  # every subnet resizes the batch to its resolution
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

        self._check_and_update_pools(proposals, scores, loss_max)
        self.last_proposals = proposals
        loss_distill = torch.stack(distill).sum()
        return {
            'loss': loss_max + loss_distill,
            'output': output,
            'loss_max': loss_max.detach(),
            'loss_distill': loss_distill.detach(),
        }

    @torch.no_grad()
    def _check_and_update_pools(self, proposals: List[Proposal], scores: List[torch.Tensor],
                                loss_max: torch.Tensor) -> None:
        """Average the middle subnets' scores over ranks, stop if any loss is not finite (every rank sees the same
        sum, so all ranks stop together), then record the scores in the pools."""
        values = torch.stack([*scores, -loss_max.detach().float()]) if scores else -loss_max.detach().float()[None]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / dist.get_world_size()
        values = values.tolist()
        if not all(np.isfinite(values)):
            names = [f'middle subnet {p.subnet}' for p in proposals] + ['the max subnet']
            bad = '; '.join(f'{name}: {-v}' for name, v in zip(names, values) if not np.isfinite(v))
            raise TrainingDiverged(
                f'training diverged: non-finite cross-entropy ({bad}); lower the learning rate, warm it up or clip '
                f'gradients, then resume from the last checkpoint')
        for proposal, score in zip(proposals, values):
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


def capture_rng_state() -> dict:
    """The process RNGs' state (torch CPU, numpy's global, Python's `random`) as tensors and plain lists, so a
    checkpoint holding it loads with `torch.load(weights_only=True)`."""
    np_state = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
            'python': random.getstate()}


def restore_rng_state(state: dict) -> None:
    """Put back what `capture_rng_state` captured, so a resumed run draws the same numbers as an unbroken one.
    Checked whole before any RNG changes: a malformed state is a `ValueError` that leaves all three as they were."""
    current = torch.get_rng_state()
    try:
        torch_state = state['torch']
        if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == current.dtype
                and torch_state.shape == current.shape):
            raise ValueError('torch')
        kind, keys, pos, has_gauss, cached = state['numpy']
        numpy_state = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        np.random.RandomState().set_state(numpy_state)  # raises on a malformed state, on a scratch generator
        version, internal, gauss = state['python']
        python_state = (version, tuple(internal), gauss)
        random.Random().setstate(python_state)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f'malformed RNG state in the checkpoint (task_state["rng"], {e}); expected what '
                         f'capture_rng_state() records') from None
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


class ResumablePSSTask(PSSTask):
    """PSSTask whose checkpoint state also carries the process RNGs (torch, numpy, random) for an exact resume, and
    the run's arguments as a plain dict (`run_args`), so `torch.load(path, weights_only=True)` reads checkpoints
    with no allowlisted classes (timm's CheckpointSaver would store an argparse.Namespace; it is given none)."""

    run_args = None

    def get_checkpoint_state(self, ema=False, **kwargs):
        state = super().get_checkpoint_state(ema=ema, **kwargs)
        if not ema and self.run_args is not None:
            state.update(arch=self.run_args['model'], args=self.run_args)
        return state

    def get_task_state(self, module=None, ema=False):
        state = super().get_task_state(module, ema)
        if not ema:
            state['rng'] = capture_rng_state()
        return state

    def load_task_state(self, state, strict=True, module=None, ema=False):
        super().load_task_state(state, strict=strict, module=module, ema=ema)
        if state and 'rng' in state and not ema:
            restore_rng_state(state['rng'])


def check_pools_identical(sampler: Sampler, world_size: int) -> None:
    """Under DDP every rank must hold the same pools: compare a hash of the sampler state across ranks."""
    digest = hashlib.sha256(json.dumps(sampler.state_dict(), sort_keys=True).encode()).hexdigest()
    digests = [None] * world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f'PSS pools diverged across ranks: {digests}')
