"""The oldest timm that timm_pss works with, checked when the package is imported.

pip keeps an installed timm that satisfies an older pin, and an old timm fails deep inside an import (`timm.task`
arrived in 1.0.24, `timm.loss.create_classification_loss` and `timm.utils.load_checkpoint_metadata`, which
train_pss.py uses, in 1.0.31); one line naming the version needed saves the user the hunt.
"""
from __future__ import annotations

import re
from typing import Tuple

__all__ = ['MIN_TIMM_VERSION', 'version_tuple', 'check_timm_version']

MIN_TIMM_VERSION = '1.0.31'


def version_tuple(version: str) -> Tuple[int, ...]:
    """The leading release numbers of a version string: '1.0.31.dev0' -> (1, 0, 31), '2.14.1+cpu' -> (2, 14, 1)."""
    match = re.match(r'\d+(\.\d+)*', version.strip())
    if not match:
        raise ValueError(f'not a version number: {version!r}')
    return tuple(int(part) for part in match.group(0).split('.'))


def check_timm_version(installed: str, required: str = MIN_TIMM_VERSION) -> None:
    """ImportError naming both versions and the fix when `installed` is older than `required`.

    A development build of the required release ('1.0.31.dev0') counts as older: it may predate what we need.
    """
    have, need = version_tuple(installed), version_tuple(required)
    release = re.match(r'\s*\d+(\.\d+)*', installed).group(0)
    pre_release = re.match(r'[.-]?(dev|a|b|rc|alpha|beta|pre)', installed[len(release):]) is not None
    if have < need or (pre_release and have[:len(need)] == need):
        raise ImportError(f"timm_pss needs timm >= {required}, found timm {installed}: "
                          f"pip install --upgrade 'timm>={required}'")
