"""`python -m timm_pss.export`: every budget entry of a trained digits run as checked static models with a manifest."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import timm_pss
from support import SUBPROCESS_TIMEOUT
from timm_pss import deploy
from timm_pss.deploy import DeployError, read_manifest
from timm_pss.files import TEMP_PREFIX
from timm_pss.runs import load_run


@pytest.fixture(scope='module')
def exported(trained_run, tmp_path_factory):
    """(run, output folder, the CLI's stdout): the min and max entries exported in every format, int8 included."""
    run, _ = trained_run
    out = tmp_path_factory.mktemp('deploy') / 'out'
    proc = subprocess.run([sys.executable, '-m', 'timm_pss.export', str(run), '--output', str(out), '--budgets', '0',
                           '-1', '--int8', '--dynamic-batch'], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return run, out, proc.stdout


def test_every_file_loads_and_matches_the_supernet(exported):
    import onnxruntime
    run, out, stdout = exported
    manifest = read_manifest(out)
    supernet = load_run(run).eval()
    assert [e['index'] for e in manifest.entries] == [0, len(supernet.budget_table) - 1]  # sorted by cost
    assert 'wrote 2 entries' in stdout
    for e in manifest.entries:
        supernet.set_budget_entry(e['index'])
        res = e['input_size'][1]
        assert res == supernet.active_subnet.resolution and e['flops'] == supernet.budget_table[e['index']].flops
        x = torch.randn(3, 3, res, res)
        with torch.no_grad():
            expected = supernet(x)
            loaded = timm.create_model(f'local-dir:{out / e["name"]}', pretrained=True).eval()
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-5)
            scripted = torch.jit.load(str(manifest.path(e, 'torchscript')))
            torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-4)
        for kind in ('onnx', 'int8'):
            session = onnxruntime.InferenceSession(str(manifest.path(e, kind)), providers=['CPUExecutionProvider'])
            y = session.run(None, {'input': x.numpy()})[0]
            assert y.shape == (3, 10)
            if kind == 'onnx':
                assert np.abs(y - expected.numpy()).max() <= 1e-4
        assert e['checks']['onnx_max_abs_diff'] <= 1e-4 and e['checks']['torchscript_max_abs_diff'] <= 1e-4
        int8 = e['checks']['int8']
        assert int8['val_images'] == 359 and 0 <= int8['top1_int8'] <= 100
        assert int8['top1_delta'] == pytest.approx(int8['top1_int8'] - int8['top1_fp32'])
        if e['input_size'][1] == max(supernet.space.resolutions):  # fed at the run's size: the run's own number
            assert int8['top1_fp32'] == pytest.approx(supernet.budget_table[e['index']].metrics['top1'], abs=1e-6)
    config = json.loads((out / manifest.entries[-1]['name'] / 'config.json').read_text())
    assert config['architecture'] == 'mobilenetv1_100'  # the max subnet is the dense model: no timm_pss needed
    assert json.loads((out / manifest.entries[0]['name'] / 'config.json').read_text())['architecture'] == 'timm_pss_subnet'


@pytest.mark.parametrize('damage', ['sha256', 'missing', 'json', 'format'])
def test_a_tampered_manifest_is_refused_in_one_line(exported, tmp_path, damage):
    import shutil
    _, out, _ = exported
    copy = tmp_path / 'copy'
    shutil.copytree(out, copy)
    manifest = read_manifest(copy)
    first = manifest.entries[0]
    if damage == 'sha256':
        with open(manifest.path(first, 'onnx'), 'r+b') as f:
            f.seek(100)
            f.write(b'\x00\x01\x02')
        match = 'does not match its recorded size and sha256'
    elif damage == 'missing':
        manifest.path(first, 'torchscript').unlink()
        match = 'model.torchscript.pt is missing'
    elif damage == 'json':
        (copy / 'manifest.json').write_text('{"format": ')
        match = 'not valid JSON'
    else:
        (copy / 'manifest.json').write_text(json.dumps({'format': 'something/9', 'entries': []}))
        match = 'expected a JSON object with "format"'
    with pytest.raises(ValueError, match=match) as error:
        read_manifest(copy)
    assert '\n' not in str(error.value)


def test_output_folder_rules_and_a_failed_entry_leaves_nothing(trained_run, tmp_path, monkeypatch):
    run, _ = trained_run
    model = load_run(run).eval()
    taken = tmp_path / 'taken'
    taken.mkdir()
    (taken / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='not empty'):
        deploy.export_budgets(model, taken, budgets=['0'], formats=['safetensors'])
    with pytest.raises(ValueError, match='training run folder'):
        deploy.export_budgets(model, run, budgets=['0'], formats=['safetensors'], force=True)
    with pytest.raises(ValueError, match='--budgets 99: entry 99 does not exist'):
        deploy.export_budgets(model, tmp_path / 'new', budgets=['99'])
    with pytest.raises(ValueError, match='--int8 needs calibration and validation images'):
        deploy.export_budgets(model, tmp_path / 'new', budgets=['0'], int8=True)
    # an injected failure: the second entry's ONNX check fails
    out = tmp_path / 'failing'
    real = deploy._max_diff
    calls = []

    def failing_diff(a, b):
        calls.append(None)
        return 1.0 if len(calls) > 1 else real(a, b)

    monkeypatch.setattr(deploy, '_max_diff', failing_diff)
    with pytest.raises(DeployError, match=r'onnxruntime.s outputs differ .*entries written before it: 00_'):
        deploy.export_budgets(model, out, budgets=['0', '-1'], formats=['onnx'])
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and names[1] == 'manifest.json' and not any(n.startswith(TEMP_PREFIX) for n in names)
    assert [e['index'] for e in read_manifest(out).entries] == [0]
    assert (taken / 'notes.txt').read_text() == 'mine'


@pytest.mark.parametrize('kind', ['onnx', 'int8'])
def test_the_adaptation_controller_serves_exported_entries(exported, kind):
    from timm_pss.adapt import AdaptiveServer, ExportedEntries, LatencyTarget, measure_latency
    _, out, _ = exported
    entries = ExportedEntries(out, kind)
    manifest = read_manifest(out)
    assert [i.name for i in entries.infos] == [e['name'] for e in manifest.entries]
    if kind == 'int8':
        assert [i.accuracy for i in entries.infos] == [e['checks']['int8']['top1_int8'] for e in manifest.entries]
    latency = measure_latency(entries, repeats=2)
    server = AdaptiveServer(entries, LatencyTarget(ms=1000 * max(latency)), latency_ms=latency)
    entry = server.entry
    x = np.random.default_rng(0).random((1, *entries.shapes[entry]), dtype=np.float32)
    y = server(x)
    assert np.array_equal(y, entries.sessions[entry].run(None, {'input': x})[0])
    report = server.report()
    assert report.calls == 1 and report.mean_accuracy == entries.infos[entry].accuracy
    with pytest.raises(ValueError, match="kind must be 'onnx' or 'int8'"):
        ExportedEntries(out, 'tflite')
