"""Latency lookup tables: built for real on tiny spaces, then JSON, prediction, interpolation and every error."""
import copy
import itertools
import json
import math
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import timm_pss.latency
import timm_pss.latency.__main__
import timm_pss.latency.build
import timm_pss.latency.device
from timm_pss import Subnet, SubnetBatch
from timm_pss.latency import AUTO_MAX_GRID, FORMAT, LatencyBlock, LatencyTable, cpu_name, build_lut, predict_latency
from timm_pss.latency.build import grid_axes, probe_widths
from timm_pss.latency.segments import forward_segments
from support import SUBPROCESS_TIMEOUT

TINY = dict(resolution_range=(32, 40, 8))
FAST = dict(threads=1, warmup=0, repeats=3, overhead_subnets=3)


@pytest.fixture(scope='module')
def model():
    return timm.create_model('pss_mobilenetv2', **TINY)


@pytest.fixture(scope='module')
def table(model):
    return build_lut(model, **FAST)


def _edited(table, edit):
    """A table from `table`'s JSON after `edit(dict)`."""
    d = json.loads(table.to_json())
    edit(d)
    return LatencyTable.from_dict(d)


def _block(d, name):
    return next(b for b in d['blocks'] if b['name'] == name)


def _grid_sum(table, subnet):
    """Sum of the subnet's own grid entries over all blocks, plus the overhead."""
    total = 0.0
    for b in table.blocks:
        index = (b.resolutions.index(subnet.resolution),) + tuple(
            w.index(subnet.widths[g]) for g, w in zip(b.groups, b.widths))
        total += b.ms[index]
    return total + table.overhead_ms


# ---------------------------------------------------------------------------------------------- contents

def test_metadata_and_blocks(model, table):
    assert table.model == 'pss_mobilenetv2' and table.num_classes == 1000
    assert table.device == 'cpu' and table.device_name == cpu_name() and table.threads == 1
    assert table.torch_version == torch.__version__ and table.dtype == 'float32' and table.batch_size == 1
    assert table.space.to_dict() == model.space.to_dict()
    names = [b.name for b in table.blocks]
    assert names[0] == 'stem' and names[-1] == 'head' and len(names) == 2 + sum(len(s) for s in model.blocks)
    groups = {b.name: [table.group_names[g] for g in b.groups] for b in table.blocks}
    assert groups['stem'] == ['conv_stem']
    assert groups['blocks.6.0'] == ['blocks.5', 'blocks.6']      # first block of a stage: its input and output group
    assert groups['blocks.5.1'] == ['blocks.5']                   # residual block: one group
    assert groups['head'] == ['blocks.6', 'conv_head']
    # small grids are measured at every width and resolution of the space
    for b in table.blocks:
        assert b.resolutions == model.space.resolutions
        assert b.widths == tuple(model.space.width_choices[g] for g in b.groups)
        assert (b.ms > 0).all()
    assert table.grid_size == sum(b.ms.size for b in table.blocks)
    assert table.build['repeats'] == 3 and len(table.build['overhead_fit']) == 3
    assert table.build['probe_subnets'] == 66  # blocks.6.0: 6 x 11 widths
    assert 'pss_mobilenetv2' in repr(table) and 'cpu' in repr(table)


def test_build_restores_model_and_threads():
    m = timm.create_model('pss_mobilenetv2', **TINY).train()
    m.blocks[0].eval()
    subnet = m.set_subnet(m.space.min_subnet())
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        table = build_lut(m, **dict(FAST, overhead_subnets=1))
        assert torch.get_num_threads() == 2 and table.threads == 1
    finally:
        torch.set_num_threads(before)
    assert m.training and not m.blocks[0].training and m.active_subnet == subnet


def test_speed_drift_is_the_median_of_last_over_first_end_to_end_times():
    drift = timm_pss.latency.build.speed_drift
    # per subnet: median of the later half / median of the earlier half (the middle sample of an odd count in neither)
    assert drift([[10.0, 9.0, 50.0, 12.0, 10.8], [10.0, 11.0], [20.0, 30.0], [5.0]]) == pytest.approx(0.2)
    assert drift([[4.0], []]) is None


def test_a_machine_that_slows_during_the_build_is_measured_and_warned(model, table, monkeypatch):
    """Injected slowdown: every whole forward spins longer than the one before, as a throttling host would make it
    (CPU time, so the retake rule does not see it). The build records the drift and warns. The build's clock is
    this thread's CPU time, so other processes on a busy machine neither spoil samples nor add drift."""
    assert isinstance(table.build['speed_drift'], float)
    monkeypatch.setattr(timm_pss.latency.build, 'time',
                        types.SimpleNamespace(perf_counter=time.thread_time, thread_time=time.thread_time))
    slow = copy.deepcopy(model)
    calls = []

    def spin(module, args):
        calls.append(None)
        end = time.thread_time() + 2e-5 * len(calls)
        while time.thread_time() < end:
            pass

    slow.register_forward_pre_hook(spin)
    with pytest.warns(RuntimeWarning, match=r'slower at the end of the build than at its start'):
        slowed = build_lut(slow, **FAST)
    assert slowed.build['speed_drift'] > timm_pss.latency.build.SPEED_DRIFT_WARNING
    assert json.loads(slowed.to_json())['build']['speed_drift'] == slowed.build['speed_drift']


# ---------------------------------------------------------------------------------------------- predicting

def test_predict_equals_grid_sum_and_predict_many(table, model):
    batch = model.space.sample_many(64, rng=0)
    many = table.predict_many(batch)
    assert many.dtype == np.float64 and many.shape == (64,)
    assert np.array_equal(many, table.predict_many(batch.resolutions, batch.widths))
    for i in range(len(batch)):
        subnet = batch.subnet(i)
        assert table.predict(subnet) == many[i]
        assert table.predict(subnet) == pytest.approx(_grid_sum(table, subnet), rel=1e-12)
    assert predict_latency(table, batch.subnet(0)) == many[0]
    assert np.array_equal(predict_latency(table, batch), many)
    assert np.array_equal(predict_latency(table, batch.subnets()[:5]), many[:5])


def test_interpolation_between_grid_points(table, model):
    """Keep only the end widths of group blocks.6 (11 choices): widths between them are interpolated linearly."""
    g = model.space.group_names.index('blocks.6')
    choices = model.space.width_choices[g]
    lo, hi = choices[0], choices[-1]

    def keep_ends(d):
        for b in d['blocks']:
            if 'blocks.6' in b['groups']:
                k = b['groups'].index('blocks.6')
                ms = np.asarray(b['ms'])
                b['ms'] = np.take(ms, [0, ms.shape[k + 1] - 1], axis=k + 1).tolist()
                b['widths'][k] = [lo, hi]
    coarse = _edited(table, keep_ends)
    base = model.space.max_subnet()

    def at(width):
        return Subnet(base.resolution, base.widths[:g] + (width,) + base.widths[g + 1:])
    assert coarse.predict(at(lo)) == pytest.approx(table.predict(at(lo)), rel=1e-12)
    assert coarse.predict(at(hi)) == pytest.approx(table.predict(at(hi)), rel=1e-12)
    for w in choices[1:-1]:
        t = (w - lo) / (hi - lo)
        expected = (1 - t) * coarse.predict(at(lo)) + t * coarse.predict(at(hi))
        assert coarse.predict(at(w)) == pytest.approx(expected, rel=1e-9)


def test_multilinear_lookup_is_exact_for_bilinear_latency():
    """A block whose latency is bilinear in (resolution, width) is reproduced exactly between grid points."""
    res, widths = [32, 48, 64], [8, 16, 40]
    f = np.vectorize(lambda r, w: 0.5 + 0.01 * r + 0.02 * w + 0.001 * r * w)
    block = LatencyBlock('b', [0], res, [widths], f(*np.meshgrid(res, widths, indexing='ij')))
    r = np.array([32, 40, 56, 64, 33.5])
    w = np.array([[8], [24], [16], [40], [39]], dtype=np.float64)
    np.testing.assert_allclose(block.lookup(r, w), f(r, w[:, 0]), rtol=1e-12)
    ints = np.arange(32, 65), np.arange(8, 41)[:, None]  # the integer fast path gives the same values
    np.testing.assert_allclose(block.lookup(*ints), f(ints[0], ints[1][:, 0]), rtol=1e-12)
    assert np.array_equal(block.lookup(*ints), block.lookup(ints[0].astype(float), ints[1].astype(float)))


def test_width_points_subsets_and_max_is_slower_than_min():
    """width_points=3 keeps the ends and the middle of each group's choices; the max subnet (9x the pixels, widest)
    is predicted slower than the min one."""
    m = timm.create_model('pss_mobilenetv2', resolution_range=(32, 96, 64))
    table = build_lut(m, width_points=3, **dict(FAST, overhead_subnets=0))
    assert table.overhead_ms == 0.0 and table.build['width_points'] == 3
    choices = m.space.width_choices[m.space.group_names.index('blocks.6')]
    head = next(b for b in table.blocks if b.name == 'head')
    assert head.widths[0] == (choices[0], choices[len(choices) // 2], choices[-1])
    assert all(len(w) <= 3 for b in table.blocks for w in b.widths)
    batch = m.space.sample_many(200, rng=1)
    assert np.isfinite(table.predict_many(batch)).all()
    assert table.predict(m.space.max_subnet()) > table.predict(m.space.min_subnet())


@pytest.mark.parametrize('name, probes', [('pss_mobilenetv2', 66), ('pss_mobilenetv1', 81), ('pss_resnet50', 113)])
def test_default_grids_and_probe_subnets(name, probes):
    """Default grids: every width where a block has <= AUTO_MAX_GRID combinations, nested evenly spaced subsets
    (ends included) elsewhere; the probe subnets visit every grid point, as few as the lower bound."""
    m = timm.create_model(name)
    segments = forward_segments(m, m.channel_plan())
    axes = grid_axes(m.space, segments, None)
    for seg, ax in zip(segments, axes):
        assert math.prod(len(a) for a in ax) <= AUTO_MAX_GRID or len(seg.groups) == 1
        for g, a in zip(seg.groups, ax):
            assert set(a) <= set(m.space.width_choices[g]) and (a[0], a[-1]) == (m.space.min_widths[g],
                                                                                   m.space.max_widths[g])
    if name == 'pss_mobilenetv2':
        assert all(ax == [m.space.width_choices[g] for g in seg.groups] for seg, ax in zip(segments, axes))
    widths = probe_widths(m.space, segments, axes)
    assert len(widths) == probes
    for w in widths:
        m.space.validate(Subnet(m.space.resolutions[0], w))
    for seg, ax in zip(segments, axes):
        assert set(itertools.product(*ax)) <= {tuple(w[g] for g in seg.groups) for w in widths}, seg.name


def test_resnet_table(monkeypatch):
    """The generic split works on ResNet (stem with maxpool, layerN.B bottlenecks, forward_head). With a small
    AUTO_MAX_GRID the 3-group first blocks get 2 widths per group, the 2-group ones 4: nested grids, so some probe
    forwards sit off a block's grid (their samples go to the other blocks only)."""
    monkeypatch.setattr(timm_pss.latency.build, 'AUTO_MAX_GRID', 16)
    m = timm.create_model('pss_resnet50', resolution_range=(32, 64, 32))
    table = build_lut(m, **dict(FAST, overhead_subnets=2))
    names = [b.name for b in table.blocks]
    assert names == ['stem'] + [f'layer{s}.{b}' for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)] + ['head']
    blocks = {b.name: b for b in table.blocks}
    groups = {n: [table.group_names[g] for g in b.groups] for n, b in blocks.items()}
    assert groups['layer2.0'] == ['layer1', 'layer2.0', 'layer2'] and groups['layer2.1'] == ['layer2', 'layer2.1']
    assert groups['head'] == ['layer4']
    assert [len(w) for w in blocks['layer2.0'].widths] == [2, 2, 2]
    assert blocks['layer2.1'].widths[0] == (128, 256, 384, 512)
    assert set(blocks['layer2.0'].widths[2]) < set(blocks['layer2.1'].widths[0])
    assert table.build['probe_subnets'] == 16 and (np.concatenate([b.ms.ravel() for b in table.blocks]) > 0).all()
    assert table.predict(m.space.max_subnet()) > table.predict(m.space.min_subnet())
    assert table.predict(m.space.max_subnet()) == pytest.approx(_grid_sum(table, m.space.max_subnet()), rel=1e-12)
    table.check_model(m)


# ---------------------------------------------------------------------------------------------- JSON

def test_json_round_trip(table, model, tmp_path):
    again = LatencyTable.from_json(table.to_json())
    assert again.to_dict() == table.to_dict()
    path = tmp_path / 'lut.json'
    table.save(path)
    loaded = LatencyTable.load(path)
    assert json.loads(path.read_text())['format'] == FORMAT
    batch = model.space.sample_many(100, rng=2)
    assert np.array_equal(loaded.predict_many(batch), table.predict_many(batch))
    assert loaded.overhead_ms == table.overhead_ms and loaded.device_name == table.device_name


@pytest.mark.parametrize('text, match', [
    ('not json', 'not valid JSON'),
    ('{"a": 1}', 'not a timm_pss latency table'),
    ('[1, 2]', 'not a timm_pss latency table'),
    (json.dumps({'format': FORMAT}), 'missing the key'),
])
def test_load_rejects_non_tables(text, match):
    with pytest.raises(ValueError, match=match):
        LatencyTable.from_json(text)


def test_malformed_tables_are_refused(table):
    def drop_block(d):
        d['blocks'] = [b for b in d['blocks'] if b['name'] != 'blocks.3.2']
    with pytest.raises(ValueError, match=r"lacks the entries of block\(s\) \['blocks.3.2'\]"):
        _edited(table, drop_block)
    with pytest.raises(ValueError, match=r"ms has shape \(1, 3\).*\(2, 3\)"):
        _edited(table, lambda d: _block(d, 'blocks.3.1')['ms'].pop())
    with pytest.raises(ValueError, match="'nope'.*not groups"):
        _edited(table, lambda d: _block(d, 'stem')['groups'].__setitem__(0, 'nope'))
    with pytest.raises(ValueError, match='blocks\\[0\\] must be an object with the keys'):
        _edited(table, lambda d: d['blocks'][0].pop('ms'))
    with pytest.raises(ValueError, match='finite and non-negative'):
        _edited(table, lambda d: _block(d, 'stem')['ms'][0].__setitem__(0, -1.0))
    with pytest.raises(ValueError, match='"overhead_ms" must be a finite number'):
        _edited(table, lambda d: d.__setitem__('overhead_ms', 'fast'))
    with pytest.raises(ValueError, match='"space" must be'):
        _edited(table, lambda d: d.__setitem__('space', {'groups': 3}))


# ---------------------------------------------------------------------------------------------- errors

def test_predict_outside_the_measured_grid(table, model):
    def only_32px(d):
        for b in d['blocks']:
            b['resolutions'], b['ms'] = [32], b['ms'][:1]
    narrow = _edited(table, only_32px)
    with pytest.raises(ValueError, match=r"block 'stem' has no entry for resolution 40.*covers 32"):
        narrow.predict(Subnet(40, model.space.max_widths))
    assert narrow.predict(Subnet(32, model.space.max_widths)) > 0

    def drop_widest(d):
        for b in d['blocks']:
            if 'blocks.6' in b['groups']:
                k = b['groups'].index('blocks.6')
                b['widths'][k] = b['widths'][k][:-1]
                b['ms'] = np.asarray(b['ms'])[(slice(None),) * (k + 1) + (slice(0, -1),)].tolist()
    trimmed = _edited(table, drop_widest)
    with pytest.raises(ValueError, match=r"block 'blocks.6.0' has no entry for group 'blocks.6' width 320; "
                                         r"the table covers 240..312 in steps of 8"):
        trimmed.predict(model.space.max_subnet())
    with pytest.raises(ValueError, match=r"width 320 \(subnet 1\)"):
        trimmed.predict_many(SubnetBatch.from_subnets([model.space.min_subnet(), model.space.max_subnet()]))


def test_predict_validates_subnets(table, model):
    with pytest.raises(ValueError, match="width 100 for group 'blocks.6' is not in the space"):
        table.predict(Subnet(32, model.space.max_widths[:7] + (100, 1280)))
    with pytest.raises(ValueError, match=r'widths must have shape \(N, 9\)'):
        table.predict_many(np.array([32]), np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match='a Subnet, a SubnetBatch or a list'):
        predict_latency(table, 'max')


def test_check_model(table, model):
    table.check_model(model)
    with pytest.raises(ValueError, match=r'built for pss_mobilenetv2 \(9 groups, resolutions 32, 40\).*'
                                         r'pss_mobilenetv2 \(9 groups, resolutions 32..48 in steps of 8\)'):
        table.check_model(timm.create_model('pss_mobilenetv2', resolution_range=(32, 48, 8)))
    with pytest.raises(ValueError, match='architecture pss_mobilenetv2 vs pss_mobilenetv1'):
        table.check_model(timm.create_model('pss_mobilenetv1', **TINY))
    with pytest.raises(ValueError, match='num_classes 1000 vs 10'):
        table.check_model(timm.create_model('pss_mobilenetv2', num_classes=10, **TINY))
    with pytest.raises(ValueError, match="group 'blocks.6' widths"):
        table.check_model(timm.create_model('pss_mobilenetv2', width_range=(0.5, 1.0), **TINY))


def test_check_device(table, monkeypatch):
    table.check_device(threads=1)
    table.check_device('cpu', threads=1)
    with pytest.raises(ValueError, match=r'built with 1 torch thread\(s\), this run uses 2'):
        table.check_device(threads=2)
    with pytest.raises(ValueError, match=r'built on cpu \(.*\), not on meta \(meta\)'):
        table.check_device('meta', threads=1)
    other = _edited(table, lambda d: d.__setitem__('device_name', 'Some Other CPU'))
    with pytest.raises(ValueError, match=r'built on cpu \(Some Other CPU\), not on cpu \(' + re.escape(cpu_name())):
        other.check_device(threads=1)
    # CPU names hold regex characters ('Intel(R) Xeon(R) ...'): the message names them as they are
    monkeypatch.setattr(timm_pss.latency.device, 'cpu_name', lambda: 'Intel(R) Core(TM) i9-0000 [test] CPU @ 9.99GHz')
    with pytest.raises(ValueError, match=re.escape('not on cpu (Intel(R) Core(TM) i9-0000 [test] CPU @ 9.99GHz)')):
        table.check_device(threads=1)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        gpu = _edited(table, lambda d: (d.__setitem__('device', 'cuda:0'), d.__setitem__('device_name', 'H100')))
        with pytest.raises(ValueError, match=r'built on cuda:0 \(H100\); device cuda:0 is not available'):
            gpu.check_device()


def test_build_argument_errors(model):
    with pytest.raises(ValueError, match='width_points must be an integer >= 2'):
        build_lut(model, width_points=1)
    with pytest.raises(ValueError, match=r'resolutions \[36\] are not resolutions of the space'):
        build_lut(model, resolutions=[32, 36])
    with pytest.raises(ValueError, match="model.to\\('cpu', torch.float64\\)"):
        build_lut(model, dtype=torch.float64)
    with pytest.raises(ValueError, match='features_only'):
        build_lut(timm.create_model('pss_mobilenetv2', features_only=True, **TINY))
    with pytest.raises(TypeError, match='not a timm_pss supernet'):
        build_lut(copy.deepcopy(torch.nn.Linear(2, 2)))


def test_cli_checks_the_output_path_before_measuring(tmp_path, monkeypatch, capsys):
    """--output in a missing folder, or an existing file without --force: exit 2 at once, nothing measured."""
    def no_measuring(*args, **kwargs):
        raise AssertionError('measured before checking --output')

    monkeypatch.setattr(timm_pss.latency.__main__, 'build_lut', no_measuring)
    tiny = ['--model', 'pss_mobilenetv1', '--resolutions', '16', '16', '8', '--width-range', '1.0', '1.0']
    existing = tmp_path / 'lut.json'
    existing.write_text('{"kept": true}')
    for output, expected in ((tmp_path / 'missing' / 'x.json', 'does not exist'), (existing, '--force')):
        with pytest.raises(SystemExit) as e:
            timm_pss.latency.main([*tiny, '--output', str(output)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert existing.read_text() == '{"kept": true}'


def test_python_dash_m_runs_the_package_command_line(tmp_path):
    """`python -m timm_pss.latency` runs `timm_pss/latency/__main__.py` (importing the package must not import it
    first: runpy would warn), and names itself so in its one-line usage errors (exit 2)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, '-W', 'error::RuntimeWarning', '-m', 'timm_pss.latency', '--model', 'nope',
                           '--output', str(tmp_path / 'lut.json')], capture_output=True, text=True, cwd=root,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.strip().splitlines()[-1].startswith('python -m timm_pss.latency: error: --model nope is not')
    assert 'Warning' not in proc.stderr and not (tmp_path / 'lut.json').exists()


@pytest.mark.parametrize('bad, expected', [
    (['--batch-size', '0'], '--batch-size must be a positive integer'),
    (['--threads', '0'], '--threads must be a positive integer'),
    (['--num-classes', '0'], '--num-classes must be a positive integer'),
    (['--device', 'bogus'], "--device 'bogus' is not usable here"),
    (['--resolutions', '32', '16', '8'], 'resolution range'),
    (['--width-range', '1.0', '0.5'], 'width'),
], ids=['batch-size-0', 'threads-0', 'num-classes-0', 'device-bogus', 'reversed-resolutions', 'reversed-widths'])
def test_cli_refuses_bad_settings_in_one_line(tmp_path, capsys, bad, expected):
    output = tmp_path / 'lut.json'
    with pytest.raises(SystemExit) as e:
        timm_pss.latency.main(['--model', 'pss_mobilenetv1', '--output', str(output), *bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not output.exists()


def test_a_deeply_nested_table_file_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / 'deep.json'
    path.write_text('[' * 100_000 + ']' * 100_000)
    with pytest.raises(ValueError, match='deep.json: latency table: JSON nested too deeply'):
        LatencyTable.load(path)
