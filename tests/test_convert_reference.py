"""The reference-checkpoint converter, on checkpoints written in the reference layout (the converter's docstring)."""
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import timm
from torch import nn

import timm_pss
from timm_pss.convert_reference import main as convert_main

V2_BLOCK_CONVS = [(0, 1), (3, 4), (6, 7)]  # body indices of (conv, BN) pairs; ReLU6 between


def _reference_names(model_name):
    if model_name == 'pss_mobilenetv1':
        names = ['features.0.0', 'features.0.1']
        for i in range(1, 14):
            names += [f'features.{i}.{j}' for j in (0, 1, 3, 4)]
        return names + ['classifier.0']
    names = ['features.0.0', 'features.0.1']
    for i in range(1, 18):
        pairs = V2_BLOCK_CONVS[:2] if i == 1 else V2_BLOCK_CONVS  # the t=1 block has no expand conv
        names += [f'features.{i}.body.{j}' for pair in pairs for j in pair]
    return names + ['features.18.0', 'features.18.1', 'classifier.0']


def _write_reference(path: Path, model_name: str, pools: dict):
    torch.manual_seed(1)
    model = timm.create_model(model_name).eval()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    names = _reference_names(model_name)
    assert len(names) == len(layers)
    state = OrderedDict()
    for ref, m in zip(names, layers):
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            state[f'module.{ref}.weight'] = m.weight.detach().clone()
            state[f'module.{ref}.bias'] = m.bias.detach().clone()
            state[f'module.{ref}.bn.running_mean'] = m.running_mean.clone()
            state[f'module.{ref}.bn.running_var'] = m.running_var.clone()
            state[f'module.{ref}.bn.num_batches_tracked'] = torch.tensor(100)
        else:
            state[f'module.{ref}.weight'] = m.weight.detach().clone()
            if m.bias is not None:
                state[f'module.{ref}.bias'] = m.bias.detach().clone()
    arch_pools = {'pools': {'flops': {t: {str(cfg): score for cfg, score in entries} for t, entries in pools.items()}}}
    torch.save({'model': state, 'optimizer': {}, 'lr_scheduler': {}, 'last_epoch': 249, 'arch_pools': arch_pools,
                'torch_rng_state': torch.get_rng_state()}, path)
    return model


def _cfg(space, subnet, target):
    mults = [w / base for w, base in zip(subnet.widths, space.max_widths)]
    return {'resolution': subnet.resolution, 'stage_cout_mults': mults, 'infer_metric': 'flops',
            'infer_metric_target': target}


@pytest.fixture(scope='module')
def calib_folder(tmp_path_factory):
    from timm_pss.data import DigitsDataset
    root = tmp_path_factory.mktemp('calib')
    for i, (image, label) in enumerate(DigitsDataset('val', image_size=32)):
        if i >= 16:
            break
        (root / f'c{label}').mkdir(exist_ok=True)
        image.save(root / f'c{label}' / f'{i}.png')
    return root


def _pools(space):
    a1, a2 = space.sample(rng=1, flops_range=(140e6, 160e6)), space.sample(rng=2, flops_range=(140e6, 160e6))
    b1 = space.sample(rng=3, flops_range=(240e6, 260e6))
    return {150: [(_cfg(space, a1, 150), -1.2), (_cfg(space, a2, 150), -0.7)], 250: [(_cfg(space, b1, 250), -0.5)]}, \
        [a2, b1]


def test_convert_with_calibration(tmp_path, calib_folder, capsys):
    space = timm.create_model('pss_mobilenetv2', device='meta').space
    pools, best = _pools(space)
    original = _write_reference(tmp_path / 'ref.pth', 'pss_mobilenetv2', pools)
    out = tmp_path / 'out'
    assert convert_main([str(tmp_path / 'ref.pth'), '--model', 'pss_mobilenetv2', '--out', str(out), '--trust-pickle',
                         '--calib-data', str(calib_folder), '--calib-batches', '1']) == 0
    assert 'calibrated budget table' in capsys.readouterr().out
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    ours, theirs = model.state_dict(), original.state_dict()
    for key, value in theirs.items():
        if not key.endswith('num_batches_tracked'):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    subnets = [e.subnet for e in model.budget_table]
    assert sorted(subnets, key=space.flops) == sorted(best + [space.max_subnet(), space.min_subnet()], key=space.flops)
    scores = {e.subnet: e.metrics.get('score') for e in model.budget_table}
    assert scores[best[0]] == -0.7 and scores[best[1]] == -0.5
    entry = model.set_budget('200M')
    assert entry.subnet == best[0]


def test_convert_without_calibration_leaves_set_budget_refusing(tmp_path, capsys):
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    s = space.sample(rng=0, flops_range=(300e6, 310e6))
    _write_reference(tmp_path / 'ref.pth', 'pss_mobilenetv1', {300: [(_cfg(space, s, 300), -0.3)]})
    out = tmp_path / 'out'
    assert convert_main([str(tmp_path / 'ref.pth'), '--model', 'pss_mobilenetv1', '--out', str(out),
                         '--trust-pickle']) == 0
    assert 'NOT calibrated' in capsys.readouterr().out
    assert (out / 'reference_subnets.json').is_file()
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    with pytest.raises(RuntimeError, match='no budget table'):
        model.set_budget('400M')


def test_convert_refuses_untrusted_pickles_and_wrong_models(tmp_path, capsys):
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    s = space.sample(rng=0)
    _write_reference(tmp_path / 'ref.pth', 'pss_mobilenetv1', {300: [(_cfg(space, s, 300), -0.3)]})
    with pytest.raises(SystemExit) as e:
        convert_main([str(tmp_path / 'ref.pth'), '--model', 'pss_mobilenetv1', '--out', str(tmp_path / 'o')])
    assert e.value.code == 2 and 'trust-pickle' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()
    with pytest.raises(SystemExit):
        convert_main([str(tmp_path / 'ref.pth'), '--model', 'pss_mobilenetv2', '--out', str(tmp_path / 'o'),
                      '--trust-pickle'])
    assert 'not the same architecture' in capsys.readouterr().err
    bad = tmp_path / 'bad.pth'
    ckpt = torch.load(tmp_path / 'ref.pth', weights_only=False)
    ckpt['arch_pools'] = {'pools': {'flops': {300: {"__import__('os').system('echo pwned')": 1.0}}}}
    torch.save(ckpt, bad)
    with pytest.raises(SystemExit):
        convert_main([str(bad), '--model', 'pss_mobilenetv1', '--out', str(tmp_path / 'o2'), '--trust-pickle'])
    err = capsys.readouterr()
    assert 'cannot read subnet' in err.err and 'pwned' not in err.out


@pytest.mark.parametrize('held, force', [('args.yaml', True), ('last.pth.tar', True), ('checkpoint-3.pth.tar', True),
                                         ('notes.txt', False)], ids=['run-args', 'run-last', 'run-ckpt', 'not-empty'])
def test_convert_never_writes_over_a_run_folder_and_needs_force_for_others(tmp_path, capsys, held, force):
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    s = space.sample(rng=0, flops_range=(300e6, 310e6))
    _write_reference(tmp_path / 'ref.pth', 'pss_mobilenetv1', {300: [(_cfg(space, s, 300), -0.3)]})
    out = tmp_path / 'out'
    out.mkdir()
    (out / held).write_bytes(b'precious')
    (out / 'model.safetensors').write_bytes(b'a trained run')
    args = [str(tmp_path / 'ref.pth'), '--model', 'pss_mobilenetv1', '--out', str(out), '--trust-pickle']
    with pytest.raises(SystemExit) as stop:
        convert_main(args + (['--force'] if force else []))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert ('training run folder' if force else 'not empty') in err
    assert sorted(p.name for p in out.iterdir()) == sorted([held, 'model.safetensors'])
    assert (out / 'model.safetensors').read_bytes() == b'a trained run'
    if not force:  # a folder of other files is written with --force
        assert convert_main(args + ['--force']) == 0
        assert (out / 'notes.txt').read_bytes() == b'precious' and (out / 'config.json').is_file()


@pytest.mark.parametrize('case', ['folder', 'empty', 'truncated', 'missing_calib', 'nan_weight', 'negative_var'])
def test_convert_refuses_broken_input_in_one_line(tmp_path, capsys, case):
    """Broken checkpoints, a missing --calib-data folder and weights a model would run wrong with (NaN, negative
    BN running_var) stop with one line and exit code 2, and write nothing."""
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    ref = tmp_path / 'ref.pth'
    _write_reference(ref, 'pss_mobilenetv1', {300: [(_cfg(space, space.sample(rng=0), 300), -0.3)]})
    extra, expected = [], {
        'folder': 'is not a file', 'empty': 'is not a readable torch checkpoint',
        'truncated': 'is not a readable torch checkpoint', 'missing_calib': '--calib-data',
        'nan_weight': 'conv_stem.weight holds nan', 'negative_var': 'bn1.running_var holds -1.0'}[case]
    if case == 'folder':
        ref = tmp_path / 'a_folder'
        ref.mkdir()
    elif case in ('empty', 'truncated'):
        ref.write_bytes(b'' if case == 'empty' else ref.read_bytes()[:4096])
    elif case == 'missing_calib':
        extra = ['--calib-data', str(tmp_path / 'no_such_folder')]
    else:
        ckpt = torch.load(ref, weights_only=False)
        key = 'module.features.0.0.weight' if case == 'nan_weight' else 'module.features.0.1.bn.running_var'
        ckpt['model'][key].view(-1)[0] = math.nan if case == 'nan_weight' else -1.0
        torch.save(ckpt, ref)
    with pytest.raises(SystemExit) as e:
        convert_main([str(ref), '--model', 'pss_mobilenetv1', '--out', str(tmp_path / 'o'), '--trust-pickle', *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err and 'Traceback' not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists() or not any((tmp_path / 'o').iterdir())
