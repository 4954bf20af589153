"""A trained supernet wherever timm takes it: loads serve a budget entry, budget kwargs, warnings, `--reparam`,
ONNX through onnxruntime, timm-style scripts through `timm-pss-run`, and the run folder's config and outputs."""
import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import create_loader, resolve_data_config
from timm.utils.model import reparameterize_model
from timm.utils.onnx import onnx_export

import timm_pss
from support import SUBPROCESS_TIMEOUT
from timm_pss.data import DigitsDataset
from timm_pss.pss import evaluate_accuracy
from timm_pss.conversion import slimmable_layers

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tests' / 'data' / 'timm_style_script.py'


def _load(run, **kwargs):
    return timm.create_model(f'local-dir:{run}', pretrained=True, **kwargs).eval()


def _rows(run):
    with open(run / 'results.csv') as f:
        return list(csv.DictReader(f))


def _digits(run, split='val'):
    """The run's own digits split at its image size (32 px), as train_pss.py makes it."""
    args = __import__('yaml').safe_load((run / 'args.yaml').read_text())
    return DigitsDataset(split, image_size=32, heldout_fraction=args['pss_heldout_frac'], seed=args['seed'])


@pytest.fixture
def strict_warnings():
    """Every warning is an error inside the test: a forward that must be silent fails if it warns."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        yield


# 1. loads serve a budget entry, never the shared statistics

def test_a_loaded_run_serves_its_top_entry(trained_run, strict_warnings):
    run, _ = trained_run
    model = _load(run)
    table = model.budget_table
    top, _ = table.select(max(e.flops for e in table))
    assert model.active_budget_index == top and model.active_subnet == table[top].subnet
    x = torch.randn(4, 3, table[top].subnet.resolution, table[top].subnet.resolution)
    with torch.no_grad():
        served = model(x)  # strict_warnings: no statistics warning on an entry
        model.set_budget_entry(top)
        torch.testing.assert_close(served, model(x), rtol=0, atol=0)
    # a plain load_state_dict of the safetensors file does the same
    fresh = timm.create_model('pss_mobilenetv1', num_classes=10, resolution_range=(16, 24, 8)).eval()
    fresh.load_state_dict(load_file(run / 'model.safetensors'))
    assert fresh.active_budget_index == top
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), served, rtol=0, atol=0)


def test_budget_kwargs_pick_the_entry_after_the_weights_load(trained_run):
    run, _ = trained_run
    rows = _rows(run)
    for row in rows:
        if row['budget']:
            assert _load(run, budget=row['budget']).active_budget_index == int(row['entry'])
    assert _load(run, budget_entry=0).active_budget_index == 0
    assert _load(run, budget_entry=-1).active_budget_index == len(rows) - 1
    with pytest.raises(ValueError, match='cannot read .* as a FLOPs budget'):
        _load(run, budget='lots')
    with pytest.raises(ValueError, match='below the smallest budget-table entry'):
        _load(run, budget='1K')
    with pytest.raises(ValueError, match='at most one of budget=, latency_ms=, budget_entry='):
        _load(run, budget='8M', budget_entry=1)
    with pytest.raises(IndexError, match='entry 99 does not exist'):
        _load(run, budget_entry=99)
    with pytest.raises(ValueError, match='records no predicted latency'):
        _load(run, latency_ms=5)
    with pytest.raises(RuntimeError, match='no budget table'):
        timm.create_model('pss_mobilenetv1', budget='300M')


def test_budget_kwargs_through_torch_hub(trained_run):
    run, _ = trained_run
    config = json.loads((run / 'config.json').read_text())
    row = next(r for r in _rows(run) if r['budget'])
    model = torch.hub.load(str(ROOT), 'pss_mobilenetv1', source='local', pretrained=True, budget=row['budget'],
                           pretrained_cfg_overlay=dict(file=str(run / 'model.safetensors')), **config['model_args'])
    assert model.active_budget_index == int(row['entry'])


def test_eval_on_shared_statistics_warns_once(trained_run):
    run, _ = trained_run
    model = _load(run)
    model.set_subnet(model.budget_table[0].subnet)  # an entry's subnet, but on the shared statistics
    x = torch.randn(2, 3, model.active_subnet.resolution, model.active_subnet.resolution)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter('always')
        model(x)
        model(x)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and 'shared BN statistics' in messages[0] and 'set_budget' in messages[0]


def test_an_uncalibrated_subnet_warns_once_and_calibration_silences_it(digits, strict_warnings):
    model = timm.create_model('pss_mobilenetv1', num_classes=10, resolution_range=(16, 32, 8)).eval()
    x = digits[0][:8]
    with torch.no_grad():
        model(x)  # the max subnet on a new model's statistics (those of the dense model): silent
    model.set_subnet(model.space.min_subnet())
    x16 = torch.nn.functional.interpolate(x, size=16)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter('always')
        model(x16)
        model(x16)
    assert len(caught) == 1 and 'never calibrated' in str(caught[0].message) and 'calibrate_bn' in str(
        caught[0].message)
    timm_pss.calibrate_bn(model, [x], num_batches=1)  # 32 px batches for a 16 px subnet: resized, quietly
    assert model.shared_stats_subnet == model.active_subnet
    with torch.no_grad():
        model(x16)  # strict_warnings: calibrated, silent
    model.train()
    model(x16)  # a training step of the same subnet keeps them its own (as timm's train.py at one subnet does)
    assert model.shared_stats_subnet == model.active_subnet
    model.set_subnet(model.space.max_subnet())
    model(x)  # one of another subnet mixes them: they belong to no subnet any more
    assert model.shared_stats_subnet is None


def test_an_input_of_another_size_warns_once_and_resolution_kwarg_fits_it(strict_warnings):
    model = timm.create_model('pss_mobilenetv2', num_classes=10).eval()
    x = torch.randn(1, 3, 128, 128)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter('always')
        model(x)
        model(x)
    assert len(caught) == 1
    assert '128x128 is resized to the active subnet\'s 224x224' in str(caught[0].message)
    assert 'resolution=128' in str(caught[0].message)
    fixed = timm.create_model('pss_mobilenetv2', num_classes=10, resolution=128).eval()
    assert fixed.space.resolutions == (128,) and resolve_data_config({}, model=fixed)['input_size'] == (3, 128, 128)
    with torch.no_grad():
        fixed(x)  # strict_warnings: its own size, silent
    for bad in (0, -8, 1.5, 'big', True):
        with pytest.raises(ValueError, match='resolution= is an input size in pixels'):
            timm.create_model('pss_mobilenetv2', resolution=bad)


def test_resolution_kwarg_with_a_trained_table_of_other_sizes_says_what_to_do(trained_run):
    run, _ = trained_run
    with pytest.raises(ValueError, match='resolution=20 does not fit these weights.*budget= or budget_entry='):
        _load(run, resolution=20)


# 2. the run folder: config.json preprocesses as the run evaluated; outputs that tell the truth

def test_run_config_reproduces_the_runs_validation_numbers(trained_run):
    run, _ = trained_run
    config = json.loads((run / 'config.json').read_text())['pretrained_cfg']
    assert config['crop_pct'] == 1.0 and config['crop_mode'] == 'center' and config['interpolation'] == 'bilinear'
    assert config['tag'] == 'pss_digits'
    model = _load(run)
    assert tuple(config['input_size']) == (3,) + (model.active_subnet.resolution,) * 2  # the entry it serves
    # the run fed its validation images at the space's largest size (the model resized them for smaller entries):
    # an entry of that size is validated exactly as the run did, from the folder's config alone
    largest = max(model.space.resolutions)
    index = model.active_budget_index
    if model.active_subnet.resolution != largest:
        index = max(i for i, e in enumerate(model.budget_table) if e.subnet.resolution == largest)
        model.set_budget_entry(index)
    data_config = resolve_data_config({}, model=model)
    loader = create_loader(_digits(run), batch_size=128, is_training=False, use_prefetcher=False, **{
        k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')})
    top1, _ = evaluate_accuracy(model, loader)
    assert top1 == pytest.approx(model.budget_table[index].metrics['top1'], abs=1e-6)


def test_printed_budgets_select_the_entry_they_show(trained_run):
    run, log = trained_run
    model = _load(run)
    rows = _rows(run)
    for row in rows:
        if row['budget']:
            assert model.set_budget(row['budget']) == model.budget_table[int(row['entry'])]
            assert f"{row['budget']}" in log
        else:  # no budget serves it: a cheaper entry is at least as good on held-out data
            entry = model.budget_table[int(row['entry'])]
            assert model.budget_table.choose(entry.flops).entry != entry
    assert f'timm.create_model("local-dir:{run}", pretrained=True)' in log
    assert 'training ' in log and ' s, evaluation ' in log


# 3. --reparam: timm's reparameterize_model gives the static subnet

def test_reparameterize_model_gives_the_exported_subnet(trained_run):
    run, _ = trained_run
    model = _load(run)
    model.set_budget_entry(1)
    static = reparameterize_model(model)
    assert not slimmable_layers(static) and static.is_static and slimmable_layers(model)
    exported = timm_pss.export_subnet(model)
    res = model.active_subnet.resolution
    x = torch.randn(3, 3, res, res)
    with torch.no_grad():
        torch.testing.assert_close(static(x), exported(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(static(x), model(x), rtol=0, atol=1e-5)
        assert static(torch.randn(1, 3, res + 8, res + 8)).shape == (1, 10)  # static: any size, as it comes
    assert sum(p.numel() for p in static.parameters()) == sum(p.numel() for p in exported.parameters())
    with pytest.raises(RuntimeError, match='re-parameterized .* cannot switch'):
        static.set_budget_entry(0)


# 4. ONNX from the supernet's own forward, checked with onnxruntime

def _onnxruntime(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize('dynamo', [False, True], ids=['torchscript', 'dynamo'])
def test_onnx_export_of_the_supernet_at_its_resolution(trained_run, tmp_path, dynamo):
    run, _ = trained_run
    model = _load(run)
    res = model.active_subnet.resolution
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        expected = model(x).numpy()
    onnx_export(model, str(tmp_path / 'supernet.onnx'), example_input=x, use_dynamo=dynamo)
    assert np.abs(_onnxruntime(tmp_path / 'supernet.onnx', x) - expected).max() <= 1e-4
    with pytest.raises(Exception, match='exports at its active resolution only.*export_subnet'):
        onnx_export(model, str(tmp_path / 'other.onnx'), example_input=torch.randn(2, 3, res + 8, res + 8),
                    use_dynamo=dynamo)


def test_onnx_dynamic_size_supernet_graph_refuses_other_sizes_and_reparam_takes_them(trained_run, tmp_path):
    run, _ = trained_run
    model = _load(run)
    res = model.active_subnet.resolution
    x = torch.randn(2, 3, res, res)
    onnx_export(model, str(tmp_path / 'supernet.onnx'), example_input=x, dynamic_size=True)
    with pytest.raises(Exception, match='Reshape|reshape'):  # never a silently different graph
        _onnxruntime(tmp_path / 'supernet.onnx', torch.randn(1, 3, res + 8, res + 8))
    with pytest.raises(Exception, match='exports at its active resolution only'):
        onnx_export(model, str(tmp_path / 'dynamo.onnx'), example_input=x, dynamic_size=True, use_dynamo=True)
    static = reparameterize_model(model)
    onnx_export(static, str(tmp_path / 'static.onnx'), example_input=x, dynamic_size=True)
    other = torch.randn(1, 3, res + 8, res + 8)
    with torch.no_grad():
        expected = timm_pss.export_subnet(model)(other).numpy()
    assert np.abs(_onnxruntime(tmp_path / 'static.onnx', other) - expected).max() <= 1e-4


# 5. timm's scripts, one line away

def _script(*args):
    proc = subprocess.run([sys.executable, '-m', 'timm_pss.launch', str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_timm_style_scripts_see_pss_models_through_the_launcher(trained_run):
    run, _ = trained_run
    row = next(r for r in _rows(run) if r['budget'] and int(r['entry']) > 0)
    served = _script('--model', f'local-dir:{run}', '--pretrained', '--model-kwargs', f'budget={row["budget"]}')
    assert served['budget_index'] == int(row['entry']) and served['flops'] == int(row['flops'])
    assert served['input_size'][1] == served['resolution'] == int(row['resolution'])
    fixed = _script('--model', 'pss_mobilenetv2', '--model-kwargs', 'resolution=96', 'num_classes=10')
    assert fixed['resolution'] == 96 and fixed['input_size'] == [3, 96, 96] and fixed['budget_index'] is None
    plain = subprocess.run([sys.executable, str(SCRIPT), '--model', 'pss_mobilenetv2'], capture_output=True,
                           text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert plain.returncode != 0 and 'pss_mobilenetv2' in plain.stderr  # why the launcher exists
    missing = subprocess.run([sys.executable, '-m', 'timm_pss.launch', 'no_such_script.py'], capture_output=True,
                             text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith(
        'timm-pss-run: no_such_script.py is not a file')


def test_missing_weights_error_shows_the_working_call():
    from timm_pss.hub import missing_weights_error
    message = str(missing_weights_error('pss_mobilenetv1', {}, OSError('offline')))
    assert 'timm.create_model("local-dir:path/to/folder", pretrained=True)' in message
