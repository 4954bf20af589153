"""Hugging Face Hub I/O: where pss_* weights live, Hub folders (config.json, model.safetensors, model card), publishing.

A Hub folder is timm's own layout (`timm.models.save_for_hf`): `config.json` with `architecture`, `model_args` (the
search space included) and `pretrained_cfg`, and `model.safetensors`, whose state dict carries the budget table and
its per-entry BN statistics. So `timm.create_model('hf-hub:ORG/NAME')` and `'local-dir:FOLDER'` load it with no
timm_pss-specific step, and a `train_pss.py` run folder is such a folder.
"""
from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path
from typing import Optional, Union

import yaml

from .files import atomic_path, atomic_write, write_text_atomic

__all__ = ['HUB_ORG', 'hub_repo_id', 'missing_weights_error', 'check_local_dir_weights', 'load_run', 'save_hub_files',
           'render_model_card', 'write_hub_folder', 'check_publish_dir', 'publish']

HUB_ORG = 'timm-pss'
MODEL_CARD_TEMPLATE = Path(__file__).with_name('MODEL_CARD.md')
RUN_MARKERS = ('args.yaml', 'last.pth.tar', 'summary.csv')  # files only a train_pss.py run folder holds
_RUN_EXTRAS = {'accuracy_vs_flops.png': 'accuracy_vs_flops.png', 'results.csv': 'results.csv',
               'results.json': 'results.json', 'args.yaml': 'training_args.yaml'}


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
        f' or timm.create_model("local-dir:path/to/folder").')


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


def load_run(source: Union[str, Path]):
    """The supernet of a train_pss.py run folder (or any Hub folder); it must carry a budget table."""
    import timm
    import timm_pss  # noqa: F401  (registers the models)

    folder = Path(source)
    if folder.is_file():
        folder = folder.parent
    if not (folder / 'config.json').is_file() or not (folder / 'model.safetensors').is_file():
        raise FileNotFoundError(f'{folder} is not a run or Hub folder: it needs config.json and model.safetensors '
                                f'(a finished train_pss.py run writes both)')
    try:
        json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{folder / "config.json"} is not valid JSON ({e}); the run did not finish writing it, '
                         f'rewrite it with `python train_pss.py --resume {folder} --pss-finalize-only`') from e
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    if not len(model.budget_table):
        raise ValueError(f'{folder}/model.safetensors has no budget table; build it first with '
                         f'`python train_pss.py --resume {folder} --pss-finalize-only`')
    return model


def _results_table(model) -> str:
    table = model.budget_table
    names = [m for m in ('top1', 'top5', 'heldout_top1') if any(m in e.metrics for e in table)]
    head = ['budget', 'MFLOPs', 'resolution'] + [{'top1': 'top-1 (%)', 'top5': 'top-5 (%)',
                                                 'heldout_top1': 'held-out top-1 (%)'}[m] for m in names]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for e in table:
        cells = [f'`{e.flops / 1e6:.0f}M`', f'{e.flops / 1e6:.2f}', str(e.subnet.resolution)]
        cells += [f'{e.metrics[m]:.2f}' if m in e.metrics else '-' for m in names]
        lines.append('| ' + ' | '.join(cells) + ' |')
    if 'top1' not in names:
        lines.append('\nNo validation accuracy was recorded for these entries.')
    return '\n'.join(lines)


def render_model_card(model, repo_id: str, training_args: Optional[dict] = None, has_plot: bool = False) -> str:
    """The Hub README for `model`, from MODEL_CARD.md, filled with the model's own measurements."""
    table = model.budget_table
    space = model.space
    arch = model.pretrained_cfg.get('architecture', type(model).__name__)
    if training_args:
        keys = ('model', 'data_dir', 'dataset', 'epochs', 'batch_size', 'opt', 'lr', 'weight_decay', 'sched',
                'smoothing', 'mixup', 'cutmix', 'model_ema', 'seed', 'pss_budget_range', 'pss_num_pools',
                'pss_pool_size', 'pss_momentum', 'pss_p_random', 'pss_temperature', 'pss_num_middle',
                'pss_heldout_frac', 'pss_top_k', 'pss_calib_batches')
        shown = {k: training_args[k] for k in keys if k in training_args}
        training = ('Trained with `train_pss.py`; the main settings (all of them in `training_args.yaml`):\n\n'
                    '```yaml\n' + yaml.safe_dump(shown, sort_keys=False) + '```')
    else:
        training = 'The training settings of these weights were not recorded with them.'
    template = string.Template(MODEL_CARD_TEMPLATE.read_text(encoding='utf-8').split('<!-- card -->', 1)[1])
    return template.substitute(
        repo_id=repo_id,
        architecture=arch,
        dense_architecture=getattr(model, 'dense_architecture', '') or 'the dense timm model',
        num_classes=model.num_classes,
        groups=space.num_groups,
        resolutions=f'{space.resolutions[0]}..{space.resolutions[-1]}',
        flops_span=f'{space.flops_span[0] / 1e6:.2f}M .. {space.flops_span[1] / 1e6:.2f}M',
        entries=len(table),
        example_budget=f'{table[len(table) // 2].flops / 1e6:.0f}M',
        results_table=_results_table(model),
        plot='![accuracy vs FLOPs](accuracy_vs_flops.png)' if has_plot else '',
        training=training,
    ).lstrip()


def save_hub_files(model, folder: Union[str, Path]) -> None:
    """timm's `save_for_hf(model, folder, safe_serialization=True)` (model.safetensors, config.json), written
    atomically: a failure or a kill leaves the previous files or the new ones, never a truncated one."""
    from safetensors.torch import save
    from timm.models._hub import save_config_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # both staged as temporaries, renamed only when both are complete
    with atomic_path(folder / 'model.safetensors') as weights, atomic_path(folder / 'config.json') as config:
        weights.write_bytes(save(model.state_dict()))
        save_config_for_hf(model, config)


def check_publish_dir(out_dir: Union[str, Path], force: bool = False) -> Path:
    """Check that a Hub folder may be written to `out_dir`: a new or empty folder, or with `force` one that holds
    other files, but never a train_pss.py run folder (its checkpoints and results would be replaced)."""
    if not str(out_dir).strip():
        raise ValueError('the output folder is empty (""); give a new folder, e.g. --dry-run hub/NAME')
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f'{out} is a file; give a new or empty folder')
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        markers = [n for n in RUN_MARKERS if n in names] + [n for n in names if n.endswith('.pth.tar')][:1]
        if markers:
            raise ValueError(f'{out} is a training run folder (it holds {markers[0]}); publishing would replace its '
                             f'files. Give a new or empty folder')
        if names and not force:
            raise ValueError(f'{out} is not empty (it holds {", ".join(names[:3])}{", ..." if len(names) > 3 else ""})'
                             f'; give a new or empty folder, or --force to replace the Hub files in it')
    return out


def write_hub_folder(source: Union[str, Path], out_dir: Union[str, Path], repo_id: str, force: bool = False) -> Path:
    """Write the Hub folder of a run (config.json, model.safetensors, README.md, plot, results, training args).

    `out_dir` must be new or empty (or `force`), and never a run folder: see `check_publish_dir`.
    """
    out = check_publish_dir(out_dir, force=force)
    run = Path(source)
    run = run.parent if run.is_file() else run
    model = load_run(run)
    model.set_subnet(model.space.max_subnet())
    out.mkdir(parents=True, exist_ok=True)
    save_hub_files(model, out)
    for name, target in _RUN_EXTRAS.items():
        if (run / name).is_file():
            with atomic_write(out / target, 'wb') as f, open(run / name, 'rb') as src:
                shutil.copyfileobj(src, f)
    args_file = run / 'args.yaml'
    training_args = yaml.safe_load(args_file.read_text()) if args_file.is_file() else None
    card = render_model_card(model, repo_id, training_args, has_plot=(out / 'accuracy_vs_flops.png').is_file())
    write_text_atomic(out / 'README.md', card)
    return out


def publish(source: Union[str, Path], repo_id: str, dry_run: Optional[Union[str, Path]] = None, private: bool = False,
            commit_message: str = 'Add timm_pss supernet', force: bool = False) -> str:
    """Write a run's Hub folder and upload it to `repo_id` (created if needed); with `dry_run`, only write it there
    (a new or empty folder, or with `force` one holding other files; never a run folder).

    Authentication is huggingface_hub's own (`hf auth login` or the HF_TOKEN variable); no token is read, printed or
    stored here. Returns the folder (dry run) or the uploaded commit's URL.
    """
    if '/' not in repo_id or repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'--repo-id must look like ORG/NAME, got {repo_id!r}')
    if dry_run is not None:
        return str(write_hub_folder(source, dry_run, repo_id, force=force))
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_hub_folder(source, tmp, repo_id)
        api = HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(commit, 'commit_url', commit))
