"""A train_pss.py run folder: the files that mark one, and loading its trained supernet.

A finished run folder is a Hub folder (config.json, model.safetensors with the budget table) plus the run's
checkpoints and results, so publishing and the other tools that take a run load it the same way, and refuse to
write into one.
"""
import json
from pathlib import Path
from typing import Union

import timm

from .errors import first_line
from .files import check_output_dir

__all__ = ['RUN_MARKERS', 'check_output_folder', 'check_run_config', 'load_run']

RUN_MARKERS = ('args.yaml', 'last.pth.tar', 'summary.csv')  # files only a train_pss.py run folder holds


def check_output_folder(path: Union[str, Path], force: bool = False) -> Path:
    """The folder rule of every command that writes a folder (publish, export, convert_reference): new or empty,
    or with `force` one holding other files, never a run folder (any of `RUN_MARKERS` or a `*.pth.tar`)."""
    return check_output_dir(path, force=force, protected=RUN_MARKERS + ('*.pth.tar',))


def check_run_config(path: Path) -> dict:
    """A run's config.json, parsed and checked as far as timm's loader needs: a JSON object naming a timm_pss
    supernet as its architecture. Raises ValueError naming the file and the fix."""
    rewrite = f'rewrite it with `python train_pss.py --resume {path.parent} --pss-finalize-only`'
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not valid JSON ({e}); the run did not finish writing it, {rewrite}') from None
    except RecursionError:
        raise ValueError(f'{path} is nested too deeply to be a model config; {rewrite}') from None
    if not isinstance(config, dict):
        raise ValueError(f'{path} holds a JSON {type(config).__name__}, not the object timm writes; {rewrite}')
    supernets = timm.list_models('pss_*')
    if config.get('architecture') not in supernets:
        raise ValueError(f'{path}: architecture {config.get("architecture")!r} is not a timm_pss supernet (one of '
                         f'{", ".join(supernets)}); {rewrite}')
    return config


def load_run(source: Union[str, Path]):
    """The supernet of a train_pss.py run folder (or any Hub folder); it must carry a budget table."""
    folder = Path(source)
    if folder.is_file():
        folder = folder.parent
    if not (folder / 'config.json').is_file() or not (folder / 'model.safetensors').is_file():
        raise FileNotFoundError(f'{folder} is not a run or Hub folder: it needs config.json and model.safetensors '
                                f'(a finished train_pss.py run writes both)')
    check_run_config(folder / 'config.json')
    try:
        model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    except (RuntimeError, TypeError) as e:  # weights that do not fit the architecture config.json describes
        raise ValueError(f'{folder}: model.safetensors does not fit its config.json ({first_line(e)}); write both '
                         f'again with `python train_pss.py --resume {folder} --pss-finalize-only`') from None
    if not len(model.budget_table):
        raise ValueError(f'{folder}/model.safetensors has no budget table; build it first with '
                         f'`python train_pss.py --resume {folder} --pss-finalize-only`')
    return model
