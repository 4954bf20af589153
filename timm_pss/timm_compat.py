"""The private timm helpers timm_pss relies on, in one place, so that a timm release that moves them is one edit.

timm has no public name for these two: which source (hf-hub, url, file, local-dir) a pretrained_cfg loads from,
and how `create_dataset` finds a split's folder under a data root.
"""
from typing import Tuple, Union

from timm.data.dataset_factory import _search_split
from timm.models._builder import _resolve_pretrained_source

__all__ = ['resolve_pretrained_source', 'search_split']


def resolve_pretrained_source(pretrained_cfg: dict) -> Tuple[str, Union[str, Tuple[str, str]]]:
    """(load_from, location) as timm's builder resolves them: 'hf-hub', 'url', 'file', 'local-dir' or ''."""
    return _resolve_pretrained_source(pretrained_cfg)


def search_split(root: str, split: str) -> str:
    """The folder timm's `create_dataset` reads for `split` under `root` (e.g. 'validation' -> root/val)."""
    return _search_split(root, split)
