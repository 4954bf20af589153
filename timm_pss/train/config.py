"""-c/--config: the defaults a YAML file sets, converted and checked as the command line treats each value."""
import argparse
import difflib
import logging

import yaml
from timm.utils import ParseKwargs

_logger = logging.getLogger('train_pss')


def config_value(action: argparse.Action, value):
    """`value` from a YAML config converted and checked as the command line would treat it for `action`; raises
    ValueError saying what is allowed."""
    if value is None:
        return None
    if action.nargs == 0:  # flags (store_true, BooleanOptionalAction)
        if not isinstance(value, bool):
            raise ValueError(f'{value!r} is not true or false')
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            raise ValueError(f'{value!r} is not a mapping of keyword arguments')
        return value
    many = action.nargs not in (None, '?')
    if many != isinstance(value, (list, tuple)):
        raise ValueError(f'{value!r} is not {"a list" if many else "a single value"}')
    values = list(value) if many else [value]
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise ValueError(f'{value!r} has {len(values)} values, {action.nargs} expected')
    if action.nargs == '+' and not values:
        raise ValueError('an empty list; give at least one value')
    converted = []
    for v in values:
        if isinstance(v, (dict, list, bool)) and action.type is not None:
            raise ValueError(f'{v!r} is not a {getattr(action.type, "__name__", "value")}')
        if action.type is int and isinstance(v, float) and not v.is_integer():
            raise ValueError(f'{v!r} is not an integer')
        try:
            v = action.type(v) if action.type is not None else v
        except (TypeError, ValueError) as e:
            raise ValueError(f'{v!r} is not a valid {getattr(action.type, "__name__", "value")} ({e})') from None
        if action.choices is not None and v not in action.choices:
            raise ValueError(f'{v!r} is not one of {", ".join(map(str, action.choices))}')
        converted.append(v)
    return converted if many else converted[0]


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The defaults a YAML config sets: our own keys, converted and checked like command-line values.

    Accepts timm's args.yaml (what timm's train.py writes, and timm's published hparams): keys this script does not
    use are logged in one warning and skipped, as timm's train.py skips them; a `data` key (timm's old positional
    dataset path) is read as `data_dir`. An unknown `pss_*` key is our own option misspelt: an error.
    """
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        parser.error(f'-c/--config {path}: cannot read it ({e.strerror or e})')
    except UnicodeDecodeError:
        parser.error(f'-c/--config {path} is not UTF-8 text; give a YAML file of option names and values')
    except RecursionError:
        parser.error(f'-c/--config {path} is nested too deeply for a config; give a flat mapping of option names to '
                     f'values')
    except yaml.YAMLError as e:
        parser.error(f'-c/--config {path} is not valid YAML ({" ".join(str(e).split())})')
    config = {} if config is None else config
    if not isinstance(config, dict):
        parser.error(f'-c/--config {path} holds a {type(config).__name__}, not a mapping of option names to values')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    config = dict(config)
    if config.get('data') and not config.get('data_dir'):
        config['data_dir'] = config['data']
    config.pop('data', None)
    defaults, unused = {}, []
    for key, value in config.items():
        if key in actions:
            try:
                defaults[key] = config_value(actions[key], value)
            except ValueError as e:
                parser.error(f'-c/--config {path}: {key}: {e}')
        elif str(key).startswith('pss_'):
            close = difflib.get_close_matches(key, [k for k in actions if k.startswith('pss_')], n=1)
            hint = f'did you mean {close[0]}?' if close else 'see --help for the --pss-* options'
            parser.error(f'-c/--config {path}: unknown key {key} ({hint})')
        else:
            unused.append(str(key))
    if unused:
        _logger.warning(f'{path}: {len(unused)} key(s) not used by train_pss.py, ignored: {", ".join(sorted(unused))}')
    return defaults
