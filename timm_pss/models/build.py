"""Building a `pss_*` model: timm's `build_model_with_cfg` for supernets, plus the serving kwargs of every entrypoint.
"""
import math
import numbers
from typing import Optional

from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from ..hub import check_local_dir_weights, hub_unreachable_reason, missing_weights_error
from ..supernet import SubnetSwitch, SupernetFeatures

__all__ = ['BUDGET_KWARGS', 'MAX_CLASSES', 'build_supernet', 'check_model_kwargs', 'check_pretrained_cfg']

# model kwargs of every pss_* entrypoint that choose what a model serves; applied after any weights load
BUDGET_KWARGS = ('budget', 'latency_ms', 'budget_entry')
# a bound on the classifier, so a config.json asking for 10**12 classes fails at once instead of allocating them
MAX_CLASSES = 1_000_000


def check_model_kwargs(variant: str, kwargs: dict) -> None:
    """num_classes and in_chans (often read from a config.json) must be whole numbers in range; raises ValueError
    naming the value and what is allowed."""
    for key, least, most in (('num_classes', 0, MAX_CLASSES), ('in_chans', 1, 1024)):
        value = kwargs.get(key)
        if value is not None and not _whole_in_range(value, least, most):
            raise ValueError(f'{variant}: {key}={value!r} must be a whole number from {least} to {most:,}')


def _whole_in_range(value, least: int, most: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and least <= value <= most


def check_pretrained_cfg(variant: str, cfg: dict) -> None:
    """The pretrained config's num_classes (timm drops the weights' classifier when it differs from the model's)
    must be a whole number in range, and its mean and std (what `resolve_data_config` hands to every loader)
    finite, std above 0: otherwise a load would give a random head or NaN images without a word."""
    source = cfg.get('file') or cfg.get('hf_hub_id') or 'its default config'
    count = cfg.get('num_classes')
    if count is not None and not _whole_in_range(count, 0, MAX_CLASSES):
        raise ValueError(f'{variant}: the pretrained config\'s num_classes {count!r} must be a whole number from 0 '
                         f'to {MAX_CLASSES:,} (from {source})')
    for key in ('mean', 'std'):
        values = cfg.get(key)
        if values is None:
            continue
        values = values if isinstance(values, (list, tuple)) else (values,)
        if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                                 and (key == 'mean' or v > 0) for v in values):
            raise ValueError(f'{variant}: the pretrained config\'s {key} {list(values)!r} must be finite numbers'
                             f'{" above 0" if key == "std" else ""} (from {source})')


def build_supernet(model_cls, variant: str, pretrained: bool = False, feature_cfg: Optional[dict] = None, **kwargs):
    """timm's `build_model_with_cfg` for supernets, plus the serving kwargs of every `pss_*` entrypoint.

    `budget=` (FLOPs: MACs or a string like "150M"), `latency_ms=` or `budget_entry=` (an index) picks the
    budget-table entry served once the weights have loaded (at most one of them; without, a model with a table
    serves its top entry, see `set_top_budget`); they make `--model-kwargs budget=150M` work in timm's scripts.
    `resolution=R` fixes the space's resolution at R (replacing `resolution_range`), for scripts that feed a given
    `--img-size`. `features_only=True` gives a switchable `SupernetFeatures`; the pretrained_cfg follows the active
    subnet from the start.
    """
    choice = {k: kwargs.pop(k) for k in BUDGET_KWARGS if kwargs.get(k) is not None}
    for k in BUDGET_KWARGS:
        kwargs.pop(k, None)
    if len(choice) > 1:
        raise ValueError(f'{variant}: give at most one of budget=, latency_ms=, budget_entry=; got '
                         f'{", ".join(f"{k}={v!r}" for k, v in choice.items())}')
    resolution = kwargs.pop('resolution', None)
    if resolution is not None:
        if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 1:
            raise ValueError(f'{variant}: resolution= is an input size in pixels (a positive int), got '
                             f'{resolution!r}')
        kwargs['resolution_range'] = (int(resolution), int(resolution), 1)
    check_model_kwargs(variant, kwargs)
    feature_cfg = dict(feature_cfg or {}, feature_cls=SupernetFeatures)
    if pretrained or kwargs.get('pretrained_cfg') or kwargs.get('pretrained_cfg_overlay'):
        check_pretrained_cfg(variant, resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict())
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
        check_local_dir_weights(cfg)
        unreachable = hub_unreachable_reason(cfg, kwargs.get('cache_dir'))
        if unreachable:  # fail now rather than after huggingface_hub's retries
            raise missing_weights_error(variant, cfg, ConnectionError(unreachable))
    try:
        model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    except OSError as e:  # huggingface_hub / download failures: offline, no such repo or file
        if not pretrained:
            raise
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
        raise missing_weights_error(variant, cfg, e) from e
    except ValueError as e:
        if resolution is None:
            raise
        raise ValueError(f'{variant}: resolution={resolution} does not fit these weights ({e}); a trained '
                         f'supernet\'s budget entries run at their own resolutions: choose one with budget= or '
                         f'budget_entry= instead') from None
    if isinstance(model, SubnetSwitch):
        model.activate(model.active_subnet, model.active_budget_index)
        if 'budget' in choice:
            model.set_budget(choice['budget'])
        elif 'latency_ms' in choice:
            model.set_budget(latency_ms=choice['latency_ms'])
        elif 'budget_entry' in choice:
            model.set_budget_entry(choice['budget_entry'])
    return model
