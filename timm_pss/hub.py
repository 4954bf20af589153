"""Loading pss_* weights from the Hugging Face Hub: where they live, and clear, early errors when they cannot come.

timm does the loading itself (`pretrained=True`, `hf-hub:ORG/NAME`, `local-dir:FOLDER`); `build_supernet` calls
these checks first, so an offline machine or a folder without model.safetensors fails at once with a one-line
reason instead of after huggingface_hub's retries or with some other checkpoint. Writing and publishing Hub
folders is `timm_pss.publish`.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

from safetensors import safe_open

from .errors import first_line
from .timm_compat import resolve_pretrained_source

__all__ = ['HUB_ORG', 'HUB_PROBE_TIMEOUT_S', 'hub_repo_id', 'missing_weights_error', 'hub_unreachable_reason',
           'check_local_dir_weights']

HUB_ORG = 'timm-pss'
HUB_PROBE_TIMEOUT_S = 1.0  # how long a Hub download may take to connect before offline is assumed
_PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')


def hub_repo_id(name: str) -> str:
    """The project's Hub repository for a registered `model.tag`."""
    return f'{HUB_ORG}/{name}'


def missing_weights_error(variant: str, pretrained_cfg: Optional[dict], error: Exception) -> RuntimeError:
    """A clear error for pretrained weights that could not be fetched (no network, no such repo or file)."""
    cfg = pretrained_cfg or {}
    source = cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('file') or 'nowhere (no source in its cfg)'
    return RuntimeError(
        f'{variant}: could not load pretrained weights from {source} ({type(error).__name__}: {error}). '
        f'No timm_pss weights are published on the Hugging Face Hub yet. To load local weights use '
        f'timm.create_model("{variant}", pretrained=True, '
        f'pretrained_cfg_overlay=dict(file="path/to/model.safetensors"))'
        f' or timm.create_model("local-dir:path/to/folder", pretrained=True).')


def hub_unreachable_reason(pretrained_cfg: Optional[dict], cache_dir: Optional[Union[str, Path]] = None
                           ) -> Optional[str]:
    """Why weights that timm would download from the Hub cannot come now, or None (try the download).

    huggingface_hub retries an unreachable host for about 45 s before failing; this answers at once. None when the
    weights come from elsewhere (file, url, local-dir) or are in the Hugging Face cache (which loads offline).
    Otherwise: offline mode (`HF_HUB_OFFLINE`), or the Hub host not reachable within `HUB_PROBE_TIMEOUT_S`. With a
    proxy configured the direct probe would say nothing, so it is skipped.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, hf_split

    load_from, location = resolve_pretrained_source(dict(pretrained_cfg or {}))
    if load_from != 'hf-hub':
        return None
    hub_id, filenames = (location[0], (location[1],)) if isinstance(location, (list, tuple)) else \
        (location, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))
    repo_id, revision = hf_split(hub_id)
    for filename in filenames:
        if isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str):
            return None
    where = cache_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        return f'offline mode is on (HF_HUB_OFFLINE) and the Hugging Face cache {where} does not hold them'
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return (f'{url.hostname} cannot be reached ({e}) and the Hugging Face cache {where} does not hold them')
    return None


def check_local_dir_weights(pretrained_cfg: Optional[dict]) -> None:
    """A `local-dir:FOLDER` source must hold FOLDER/model.safetensors.

    timm would otherwise fall back to any other checkpoint in the folder (pytorch_model.bin, checkpoint-0.pth.tar,
    ...), silently loading weights nobody asked for; timm_pss weights are safetensors, so refuse instead.
    """
    cfg = pretrained_cfg or {}
    if cfg.get('source') != 'local-dir' or not cfg.get('file'):
        return
    weights = Path(cfg['file']) / 'model.safetensors'
    if not weights.is_file():
        raise FileNotFoundError(f'{weights} is missing: a local-dir: folder of timm_pss weights needs '
                                f'model.safetensors (other checkpoints in the folder are not loaded in its place)')
    try:
        with safe_open(str(weights), framework='pt'):  # reads and checks the header only
            pass
    except Exception as e:  # safetensors' SafetensorError derives from Exception alone
        raise ValueError(f'{weights} is not a readable safetensors file ({first_line(e)}); it is truncated or '
                         f'not safetensors: write it again (train_pss.py --resume RUN --pss-finalize-only)') from None
