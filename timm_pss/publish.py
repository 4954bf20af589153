"""Publishing a trained supernet: its Hub folder (weights, config.json, model card) and the upload, and the CLI.

A Hub folder is timm's own layout (`timm.models.save_for_hf`): `config.json` with `architecture`, `model_args` (the
search space included) and `pretrained_cfg`, and `model.safetensors`, whose state dict carries the budget table and
its per-entry BN statistics. So `timm.create_model('hf-hub:ORG/NAME')` and `'local-dir:FOLDER'` load it with no
timm_pss-specific step, and a `train_pss.py` run folder is such a folder.

    python -m timm_pss.publish output/train/RUN --repo-id ORG/NAME               # write and upload
    python -m timm_pss.publish output/train/RUN --repo-id ORG/NAME --dry-run DIR # write the folder only
    python -m timm_pss.publish output/train/RUN --repo-id ORG/NAME --create-pr   # upload as a pull request

--dry-run writes into a new or empty folder (--force: one holding other files), never into a training run folder.

The folder is timm's Hub layout (config.json, model.safetensors with the budget table) plus README.md (the model
card from MODEL_CARD.md, filled with the run's measurements), accuracy_vs_flops.png, results.csv/json and
training_args.yaml. A README.md already in the repository (or the --dry-run folder) is a hand-edited card and is
kept unless --overwrite-readme. Log in with `hf auth login` or set HF_TOKEN; no token is read, printed or stored here.
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import string
import sys
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from timm.models import resolve_pretrained_cfg, split_model_name_tag

from .errors import first_line
from .files import atomic_path, atomic_write, write_text_atomic
from .runs import check_output_folder, load_run
from .units import budget_label

__all__ = ['save_hub_files', 'training_dataset', 'warm_start_model', 'model_card_data',
           'render_model_card', 'write_hub_folder', 'check_publish_dir', 'check_repo_id', 'publish', 'main']

_logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).with_name('MODEL_CARD.md')
# timm_pss is not on PyPI and the project names no public repository: install from a checkout of its source
INSTALL_COMMAND = 'pip install .'  # run in a checkout of the timm_pss source
_RUN_EXTRAS = {'accuracy_vs_flops.png': 'accuracy_vs_flops.png', 'results.csv': 'results.csv',
               'results.json': 'results.json', 'args.yaml': 'training_args.yaml'}


def _results_table(model) -> str:
    table = model.budget_table
    names = [m for m in ('top1', 'top5', 'heldout_top1') if any(m in e.metrics for e in table)]
    head = ['budget', 'MFLOPs', 'resolution'] + [{'top1': 'top-1 (%)', 'top5': 'top-5 (%)',
                                                 'heldout_top1': 'held-out top-1 (%)'}[m] for m in names]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for e, budget in zip(table, table.serving_budgets()):
        cells = [f'`{budget}`' if budget else 'not served', f'{e.flops / 1e6:.2f}', str(e.subnet.resolution)]
        cells += [f'{e.metrics[m]:.2f}' if m in e.metrics else '-' for m in names]
        lines.append('| ' + ' | '.join(cells) + ' |')
    if any(b is None for b in table.serving_budgets()):
        lines.append('\n"not served": no budget selects the entry, a cheaper one scores at least as well on '
                     'held-out data.')
    if 'top1' not in names:
        lines.append('\nNo validation accuracy was recorded for these entries.')
    return '\n'.join(lines)


def training_dataset(training_args: Optional[dict]) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """What a run was trained on, from its args.yaml: (description, short name, Hub dataset id or None).

    train_pss.py trains on the embedded digits when neither --data-dir nor --dataset is given. Only timm's `hfds/` /
    `hfids/` datasets are known Hub datasets; an image folder or a torchvision dataset gets no Hub id (none is
    guessed from a folder name). Without recorded args all three are None.
    """
    if not training_args:
        return None, None, None
    dataset = str(training_args.get('dataset') or '')
    data_dir = str(training_args.get('data_dir') or '')
    if not dataset and not data_dir:
        return ('scikit-learn handwritten digits (1,797 8x8 scans as RGB images), the embedded default of '
                'train_pss.py', 'scikit-learn digits', None)
    if dataset:
        kind, _, name = dataset.partition('/')
        if kind in ('hfds', 'hfids') and name:
            return f'[{name}](https://huggingface.co/datasets/{name}) (Hugging Face dataset)', name, name
        return f'`{dataset}` (timm dataset type)', name or dataset, None
    name = Path(data_dir.rstrip('/\\')).name or data_dir
    return f'the image folder `{name}` (train_pss.py --data-dir)', name, None


_HF_CACHE_SNAPSHOT = re.compile(r'models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]')


def warm_start_model(training_args: Optional[dict]) -> Optional[str]:
    """The Hub model a run was warm-started from (card `base_model`), or None.

    `--pretrained` starts from the `--model` tag's own Hub weights (its pretrained_cfg `hf_hub_id`, or an `hf-hub:`
    name); `--initial-checkpoint` counts only when the file lies in a Hugging Face cache snapshot
    (`models--ORG--NAME/snapshots/...`), which names its repository. Anything else is not a Hub model.
    """
    if not training_args:
        return None
    if training_args.get('pretrained'):
        name = str(training_args.get('model') or '')
        if name.startswith('hf-hub:'):
            return name[len('hf-hub:'):].split('@')[0]
        arch, tag = split_model_name_tag(name)
        try:
            hf_hub_id = resolve_pretrained_cfg(arch, pretrained_cfg=tag or None).hf_hub_id
        except (RuntimeError, ValueError, AssertionError):  # not a registered model / tag
            hf_hub_id = None
        if hf_hub_id:
            return hf_hub_id.split('@')[0]
    checkpoint = str(training_args.get('initial_checkpoint') or '')
    match = _HF_CACHE_SNAPSHOT.search(checkpoint)
    return f'{match.group(1)}/{match.group(2)}' if match else None


def model_card_data(model, repo_id: str, training_args: Optional[dict] = None):
    """The card's metadata (`huggingface_hub.ModelCardData`), in timm's form, from the model and its run.

    `library_name: timm` with the `timm_pss` tag: the weights are a timm model folder, but the architecture is
    registered by `import timm_pss`, which the card says first. `model-index` holds the validation top-1 of every
    budget table entry that recorded one; `datasets` / `base_model` only when the run names a Hub dataset / model.
    """
    from huggingface_hub import EvalResult, ModelCardData

    _, dataset_name, dataset_id = training_dataset(training_args)
    split = str((training_args or {}).get('val_split') or 'validation')
    results = [
        EvalResult(task_type='image-classification', task_name='Image Classification',
                   dataset_type=dataset_id or re.sub(r'[^a-z0-9]+', '-', dataset_name.lower()).strip('-'),
                   dataset_name=dataset_name, dataset_split=split,
                   metric_type='accuracy', metric_value=round(float(e.metrics['top1']), 2),
                   metric_name=f'top-1 at {e.flops / 1e6:.2f} MMACs ({e.subnet.resolution}px, budget entry {i})')
        for i, e in enumerate(model.budget_table) if 'top1' in e.metrics] if dataset_name else []
    return ModelCardData(
        library_name='timm', license='apache-2.0', pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm_pss', 'pss-net', 'resource-adaptive'],
        datasets=[dataset_id] if dataset_id else None, base_model=warm_start_model(training_args),
        model_name=repo_id if results else None, eval_results=results or None)


def _mmacs(flops: float) -> str:
    return f'{flops / 1e6:.2f}M'


def render_model_card(model, repo_id: str, training_args: Optional[dict] = None, has_plot: bool = False) -> str:
    """The Hub README for `model` in timm's card layout: `model_card_data` metadata and the MODEL_CARD.md body,
    filled with the model's own measurements and the run's settings (`training_args`, its args.yaml)."""
    from huggingface_hub import ModelCard

    table = model.budget_table
    space = model.space
    arch = model.pretrained_cfg.get('architecture', type(model).__name__)
    if training_args:
        keys = ('model', 'data_dir', 'dataset', 'epochs', 'batch_size', 'opt', 'lr', 'weight_decay', 'sched',
                'smoothing', 'mixup', 'cutmix', 'model_ema', 'seed', 'pretrained', 'initial_checkpoint',
                'pss_budget_range', 'pss_num_pools', 'pss_pool_size', 'pss_momentum', 'pss_p_random',
                'pss_temperature', 'pss_num_middle', 'pss_heldout_frac', 'pss_top_k', 'pss_calib_batches')
        shown = {k: training_args[k] for k in keys if k in training_args}
        training = ('Trained with `train_pss.py`; the main settings (all of them in `training_args.yaml`):\n\n'
                    '```yaml\n' + yaml.safe_dump(shown, sort_keys=False) + '```')
    else:
        training = 'The training settings of these weights were not recorded with them.'
    description = training_dataset(training_args)[0] or 'not recorded with these weights'
    base_model = warm_start_model(training_args)
    resolutions = sorted({e.subnet.resolution for e in table})
    lo, hi = space.resolutions[0], space.resolutions[-1]
    image_sizes = (f'{lo} x {lo} to {hi} x {hi} ({len(space.resolutions)} sizes)'
                   + (f'; budget table entries at {", ".join(map(str, resolutions))}' if resolutions else ''))
    example = table[len(table) // 2].flops if len(table) else space.flops_span[1]
    template = string.Template(MODEL_CARD_TEMPLATE.read_text(encoding='utf-8').split('<!-- card -->', 1)[1])
    body = template.substitute(
        repo_id=repo_id,
        architecture=arch,
        dense_architecture=getattr(model, 'dense_architecture', '') or 'the dense timm model',
        num_classes=model.num_classes,
        groups=space.num_groups,
        resolutions=f'{lo}..{hi}',
        flops_span=f'{space.flops_span[0] / 1e6:.2f}M .. {space.flops_span[1] / 1e6:.2f}M',
        entries=len(table),
        install=INSTALL_COMMAND,
        params_m=f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}',
        macs_max=_mmacs(space.flops_span[1]),
        macs_min=_mmacs(space.flops_span[0]),
        table_span=(f'{_mmacs(table[0].flops)} .. {_mmacs(table[-1].flops)}' if len(table) else 'none'),
        image_sizes=image_sizes,
        dataset=description,
        warm_start=f'- **Warm-started from:** [{base_model}](https://huggingface.co/{base_model})\n'
                   if base_model else '',
        topk=min(5, model.num_classes),
        example_budget=budget_label(example),
        results_table=_results_table(model),
        plot='![accuracy vs FLOPs](accuracy_vs_flops.png)' if has_plot else '',
        training=training,
    ).lstrip()
    data = model_card_data(model, repo_id, training_args)
    return str(ModelCard(f'---\n{data.to_yaml()}\n---\n{body}'))


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
    other files, but never a train_pss.py run folder (its checkpoints and results would be replaced); see
    `timm_pss.files.check_output_dir`."""
    return check_output_folder(out_dir, force=force)


def write_hub_folder(source: Union[str, Path], out_dir: Union[str, Path], repo_id: str, force: bool = False,
                     write_readme: bool = True) -> Path:
    """Write the Hub folder of a run (config.json, model.safetensors, README.md, plot, results, training args).

    `out_dir` must be new or empty (or `force`), and never a run folder: see `check_publish_dir`. Without
    `write_readme` no model card is written (a README.md already there stays as it is).
    """
    out = check_publish_dir(out_dir, force=force)
    run = Path(source)
    run = run.parent if run.is_file() else run
    model = load_run(run)  # on its top entry: config.json's input size is that entry's, as a load will serve
    out.mkdir(parents=True, exist_ok=True)
    save_hub_files(model, out)
    for name, target in _RUN_EXTRAS.items():
        if (run / name).is_file():
            with atomic_write(out / target, 'wb') as f, open(run / name, 'rb') as src:
                shutil.copyfileobj(src, f)
    if write_readme:
        args_file = run / 'args.yaml'
        training_args = yaml.safe_load(args_file.read_text()) if args_file.is_file() else None
        card = render_model_card(model, repo_id, training_args, has_plot=(out / 'accuracy_vs_flops.png').is_file())
        write_text_atomic(out / 'README.md', card)
    return out


def check_repo_id(repo_id: str) -> None:
    """ORG/NAME as the Hub accepts it (huggingface_hub's own rule: letters, digits, '-', '_', '.', no '--' or '..',
    at most 96 characters); a model card's `hf-hub:` line is then a name that loads."""
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'--repo-id must look like ORG/NAME, got {repo_id!r}')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f'--repo-id {repo_id!r} is not a Hub repository name ({first_line(e)})') from None


def publish(source: Union[str, Path], repo_id: str, dry_run: Optional[Union[str, Path]] = None, private: bool = False,
            commit_message: str = 'Add timm_pss supernet', force: bool = False, revision: Optional[str] = None,
            create_pr: bool = False, overwrite_readme: bool = False) -> str:
    """Write a run's Hub folder and upload it to `repo_id` (created if needed); with `dry_run`, only write it there
    (a new or empty folder, or with `force` one holding other files; never a run folder).

    A README.md already in the repository (or in the `dry_run` folder) is a hand-edited card and is kept unless
    `overwrite_readme`. `revision` (a branch) and `create_pr` go to `HfApi.upload_folder` as in timm's
    `push_to_hf_hub`. Authentication is huggingface_hub's own (`hf auth login` or the HF_TOKEN variable); no token
    is read, printed or stored here. Returns the folder (dry run) or the uploaded commit's (or PR's) URL.
    """
    check_repo_id(repo_id)
    if revision is not None and not str(revision).strip():
        raise ValueError('--revision is empty; give a branch name, or leave it out for main')
    if dry_run is not None:
        keep = (Path(dry_run) / 'README.md').is_file() and not overwrite_readme
        out = write_hub_folder(source, dry_run, repo_id, force=force, write_readme=not keep)
        if keep:
            _logger.info(f'kept the existing {out / "README.md"} (--overwrite-readme replaces it)')
        return str(out)
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_hub_folder(source, tmp, repo_id)  # a bad run fails here, before anything reaches the Hub
        api = HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        if not overwrite_readme and api.file_exists(repo.repo_id, 'README.md', revision=revision):
            (folder / 'README.md').unlink()
            _logger.info(f'kept the README.md of {repo.repo_id} (--overwrite-readme replaces it)')
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message,
                                   revision=revision, create_pr=create_pr)
    return str(getattr(commit, 'pr_url', None) or getattr(commit, 'commit_url', commit))

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_pss.publish',
                                     description='Publish a trained supernet to the Hugging Face Hub.')
    parser.add_argument('source', help='a finished train_pss.py run folder (or a file inside one)')
    parser.add_argument('--repo-id', required=True, help='the Hub repository, ORG/NAME')
    parser.add_argument('--dry-run', metavar='DIR', default=None,
                        help='write the Hub folder to DIR (new or empty), upload nothing')
    parser.add_argument('--force', action='store_true',
                        help='let --dry-run replace the Hub files in a folder that holds other files (never a run)')
    parser.add_argument('--private', action='store_true', help='create the repository as private')
    parser.add_argument('--commit-message', default='Add timm_pss supernet')
    parser.add_argument('--revision', default=None, metavar='BRANCH',
                        help='upload to this branch of the repository instead of main (as timm push_to_hf_hub)')
    parser.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    parser.add_argument('--overwrite-readme', action='store_true',
                        help='replace a README.md already in the repository or folder with the generated card')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        where = publish(args.source, args.repo_id, dry_run=args.dry_run, private=args.private,
                        commit_message=args.commit_message, force=args.force, revision=args.revision,
                        create_pr=args.create_pr, overwrite_readme=args.overwrite_readme)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f'error: {e}\n')
    except OSError as e:
        parser.exit(1, f'error: {e}\n')
    print(f'{"wrote" if args.dry_run else "published"} {where}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
