"""Building a `pss_*` model: timm's `build_model_with_cfg` for supernets, plus the serving kwargs of every entrypoint.
"""
import numbers
from typing import Optional

from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from ..hub import check_local_dir_weights, hub_unreachable_reason, missing_weights_error
from ..supernet import SubnetSwitch, SupernetFeatures

__all__ = ['BUDGET_KWARGS', 'build_supernet']

# model kwargs of every pss_* entrypoint that choose what a model serves; applied after any weights load
BUDGET_KWARGS = ('budget', 'latency_ms', 'budget_entry')


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
    feature_cfg = dict(feature_cfg or {}, feature_cls=SupernetFeatures)
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
