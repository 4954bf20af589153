"""Device identity for latency tables: the torch device, its model name (CPU or GPU), how to synchronise it, and
the allocator settings a CPU measurement depends on."""
from __future__ import annotations

import os
import platform
from typing import Callable, Union

import torch

__all__ = ['cpu_name', 'normalize_device', 'describe_device', 'synchronizer_for', 'allocator_settings']


def normalize_device(device: Union[str, torch.device]) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f'device {device!r} is not a torch device: {e}') from e
    if dev.type == 'cuda' and dev.index is None:
        dev = torch.device('cuda', torch.cuda.current_device())
    return dev


def cpu_name() -> str:
    """The CPU's model name (what a CPU latency table is tied to): platform.processor(), else /proc/cpuinfo."""
    name = platform.processor()
    if name and name != platform.machine():
        return name
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine() or 'unknown'


def describe_device(dev: torch.device) -> str:
    if dev.type == 'cpu':
        return cpu_name()
    if dev.type == 'cuda':
        return torch.cuda.get_device_name(dev)
    return dev.type


def synchronizer_for(dev: torch.device) -> Callable[[], None]:
    if dev.type == 'cuda':
        return lambda: torch.cuda.synchronize(dev)
    if dev.type == 'mps':
        return torch.mps.synchronize
    return lambda: None


def allocator_settings() -> dict:
    """The environment that decides how this process allocates memory (LD_PRELOAD, glibc's MALLOC_*_ tunables)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k == 'LD_PRELOAD' or k == 'GLIBC_TUNABLES' or (k.startswith('MALLOC_') and k.endswith('_'))}
