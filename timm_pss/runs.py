"""A train_pss.py run folder: the files that mark one, and loading its trained supernet.

A finished run folder is a Hub folder (config.json, model.safetensors with the budget table) plus the run's
checkpoints and results, so publishing and the other tools that take a run load it the same way, and refuse to
write into one.
"""
import json
from pathlib import Path
from typing import Union

import timm

from .files import check_output_dir

__all__ = ['RUN_MARKERS', 'check_output_folder', 'load_run']

RUN_MARKERS = ('args.yaml', 'last.pth.tar', 'summary.csv')  # files only a train_pss.py run folder holds


def check_output_folder(path: Union[str, Path], force: bool = False) -> Path:
    """The folder rule of every command that writes a folder (publish, export, convert_reference): new or empty,
    or with `force` one holding other files, never a run folder (any of `RUN_MARKERS` or a `*.pth.tar`)."""
    return check_output_dir(path, force=force, protected=RUN_MARKERS + ('*.pth.tar',))


def load_run(source: Union[str, Path]):
    """The supernet of a train_pss.py run folder (or any Hub folder); it must carry a budget table."""
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
