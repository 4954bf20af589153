"""Loading a run or Hub folder that was damaged or tampered with, kept as a table of the cases tried:
`timm.create_model('local-dir:...')` raises naming the file (or timm's own JSON error where timm reads the file
before timm_pss is called), and `python -m timm_pss.publish` stops in one line with exit code 2."""
import json
import math
import shutil

import pytest
import timm

from timm_pss.publish import main as publish_main


def _variant(config: dict, key: str, value) -> dict:
    changed = json.loads(json.dumps(config))
    if key.startswith('pretrained_cfg.'):
        changed['pretrained_cfg'][key.split('.', 1)[1]] = value
    elif key.startswith('model_args.'):
        changed['model_args'][key.split('.', 1)[1]] = value
    else:
        changed[key] = value
    return changed


# (what is broken, config.json bytes or None, model.safetensors bytes or None, what publish's line says,
#  what local-dir's error says, or None where timm itself parses the file and raises its own error first)
def _cases(config: dict, weights: bytes):
    text = json.dumps(config).encode()
    return {
        'config_empty': (b'', None, 'is not valid JSON', None),
        'config_truncated': (text[:40], None, 'is not valid JSON', None),
        'config_not_utf8': (b'\xbf\xff\x00', None, 'is not valid JSON', None),
        'config_deeply_nested': (b'[' * 100_000 + b']' * 100_000, None, 'nested too deeply', None),
        'config_a_list': (b'[1, 2]', None, 'holds a JSON list', None),
        'config_another_architecture': (json.dumps(_variant(config, 'architecture', 'resnet18')).encode(), None,
                                        "architecture 'resnet18' is not a timm_pss supernet", None),
        'num_classes_nan': (json.dumps(_variant(config, 'num_classes', math.nan)).encode(), None,
                            "num_classes nan must be a whole number", "num_classes nan must be a whole number"),
        'num_classes_huge': (json.dumps(_variant(config, 'model_args.num_classes', 10 ** 12)).encode(), None,
                             'num_classes=1000000000000 must be a whole number',
                             'num_classes=1000000000000 must be a whole number'),
        'mean_nan': (json.dumps(_variant(config, 'pretrained_cfg.mean', [math.nan])).encode(), None,
                     "mean [nan] must be finite", "mean [nan] must be finite"),
        'std_zero': (json.dumps(_variant(config, 'pretrained_cfg.std', [0.0])).encode(), None,
                     "std [0.0] must be finite numbers above 0", "std [0.0] must be finite numbers above 0"),
        'weights_truncated': (None, weights[:len(weights) // 2], 'is not a readable safetensors file',
                              'is not a readable safetensors file'),
        'weights_empty': (None, b'', 'is not a readable safetensors file', 'is not a readable safetensors file'),
    }


CASES = ['config_empty', 'config_truncated', 'config_not_utf8', 'config_deeply_nested', 'config_a_list',
         'config_another_architecture', 'num_classes_nan', 'num_classes_huge', 'mean_nan', 'std_zero',
         'weights_truncated', 'weights_empty']


@pytest.mark.parametrize('case', CASES)
def test_a_damaged_folder_is_refused(trained_run, tmp_path, capsys, case):
    run, _ = trained_run
    folder = tmp_path / 'damaged'
    folder.mkdir()
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(run / name, folder / name)
    config_bytes, weight_bytes, publish_says, load_says = _cases(
        json.loads((run / 'config.json').read_text()), (run / 'model.safetensors').read_bytes())[case]
    if config_bytes is not None:
        (folder / 'config.json').write_bytes(config_bytes)
    if weight_bytes is not None:
        (folder / 'model.safetensors').write_bytes(weight_bytes)
    with pytest.raises(SystemExit) as e:
        publish_main([str(folder), '--repo-id', 'org/name', '--dry-run', str(tmp_path / 'hub')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and publish_says in err and 'Traceback' not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'hub').exists()
    if load_says is not None:
        with pytest.raises(ValueError, match=load_says.replace('[', r'\[').replace(']', r'\]')):
            timm.create_model(f'local-dir:{folder}', pretrained=True)


@pytest.mark.parametrize('repo_id', ['a b/c d', '../..', 'org/name..x', 'org/', 'org/na/me', 'org/' + 'n' * 97])
def test_publish_refuses_repo_ids_the_hub_would_not_take(trained_run, tmp_path, capsys, repo_id):
    run, _ = trained_run
    with pytest.raises(SystemExit) as e:
        publish_main([str(run), '--repo-id', repo_id, '--dry-run', str(tmp_path / 'hub')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and '--repo-id' in err and repr(repo_id) in err, err
    assert not (tmp_path / 'hub').exists()
