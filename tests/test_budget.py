"""Budget tables and set_budget: storage in the state dict, every load path, selection rules, wrappers, bad input."""
import copy
import math
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import timm
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from support import outputs_per_budget
from timm_pss import BudgetEntry, BudgetTable, Subnet, parse_flops

NAME = 'pss_mobilenetv2'


def _loader(seed=0, n=16, size=128):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g) * 1.5 + 0.3
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=8, shuffle=False)


def _subnets(space, count):
    f_min, f_max = space.flops(space.min_subnet()), space.flops(space.max_subnet())
    step = (f_max - f_min) / (count - 1)
    middle = [space.sample(rng=i, flops_range=(f_min + i * step, f_min + (i + 1) * step)) for i in range(1, count - 1)]
    return [space.min_subnet()] + middle + [space.max_subnet()]


def _filled(count=4, name=NAME, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10).eval()
    subnets = _subnets(model.space, count)
    timm_pss.fill_budget_table(model, subnets, _loader(), num_batches=2,
                               metrics=[{'top1': 50.0 + i, 'score': -1.0 / (i + 1)} for i in range(count)])
    return model


@pytest.fixture(scope='module')
def filled():
    return _filled()


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))


def _assert_same_model(a, b, x):
    assert a.budget_table == b.budget_table
    for ya, yb in zip(outputs_per_budget(a, x), outputs_per_budget(b, x)):
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def test_table_contents_and_printing(filled):
    table = filled.budget_table
    assert len(table) == 4
    flops = [e.flops for e in table]
    assert flops == sorted(flops) and flops[0] == filled.space.flops(filled.space.min_subnet())
    assert all(e.flops == filled.space.flops(e.subnet) for e in table)
    assert [e.metrics['top1'] for e in table] == [50.0, 51.0, 52.0, 53.0]
    text = str(table)
    assert text.splitlines()[0] == 'BudgetTable (4 entries)'
    assert 'FLOPs' in text and 'top1' in text and 'score' in text and '53' in text
    assert len(text.splitlines()) == 2 + 4


def test_table_lives_in_the_state_dict(filled):
    sd = filled.state_dict()
    assert sd['pss_budget_table'].dtype == torch.uint8
    bn_keys = [k for k in sd if k.endswith('.budget_running_mean')]
    assert len(bn_keys) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in filled.modules())
    assert sd['bn1.budget_running_mean'].shape == (4, 32)
    # an empty table adds nothing: the untrained supernet's keys are its dense twin's
    assert list(timm.create_model(NAME).state_dict()) == list(timm.create_model('mobilenetv2_100').state_dict())


def test_round_trip_load_state_dict(filled, x):
    fresh = timm.create_model(NAME, num_classes=10).eval()
    fresh.load_state_dict(filled.state_dict(), strict=True)
    _assert_same_model(filled, fresh, x)


def test_round_trip_safetensors(filled, x, tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file(filled.state_dict(), str(path))
    fresh = timm.create_model(NAME, num_classes=10).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    _assert_same_model(filled, fresh, x)
    # timm's own loading path (pretrained_cfg_overlay file=...) and a features_only model from it
    via_timm = timm.create_model(NAME, num_classes=10, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    _assert_same_model(filled, via_timm, x)
    features = timm.create_model(NAME, features_only=True, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
    # features_only builds a 1000-class supernet before dropping the head: the same entries, FLOPs recounted
    assert [e.subnet for e in features.budget_table] == [e.subnet for e in filled.budget_table]
    entry = timm_pss.set_budget(features, features.budget_table[1].flops)
    assert features.active_subnet == entry.subnet == filled.budget_table[1].subnet
    assert features.feature_info.channels()[-1] == entry.subnet.widths[-2]
    filled.set_budget(filled.budget_table[1].flops)
    with torch.no_grad():
        torch.testing.assert_close(features(x)[-1], filled.forward_intermediates(x, intermediates_only=True)[-1])


def test_loading_into_another_head_recounts_flops(filled, x):
    """Transfer learning: trained weights + table into a model with a new head keep entries and statistics."""
    sd = {k: v for k, v in filled.state_dict().items() if not k.startswith('classifier.')}
    target = timm.create_model(NAME, num_classes=1000).eval()
    target.load_state_dict(sd, strict=False)
    for ours, theirs in zip(target.budget_table, filled.budget_table):
        assert ours.subnet == theirs.subnet and ours.metrics == theirs.metrics
        assert ours.flops == target.space.flops(ours.subnet) > theirs.flops
    for i, entry in enumerate(filled.budget_table):
        filled.set_budget(entry.flops)
        target.set_budget(target.budget_table[i].flops)
        with torch.no_grad():
            torch.testing.assert_close(target.forward_features(x), filled.forward_features(x), rtol=0, atol=0)


def test_entries_keep_storage_order():
    a, b = Subnet(160, (8,)), Subnet(128, (8,))
    table = BudgetTable(['g'], [BudgetEntry(200, a), BudgetEntry(100, b)])
    assert [e.flops for e in BudgetTable.from_json(table.to_json())] == [200, 100]
    assert table.select(150) == (1, table[1]) and table.select(1000) == (0, table[0])
    assert table.select(50, strict=False) == (1, table[1])


def test_deepcopy_and_model_ema(filled, x):
    _assert_same_model(filled, copy.deepcopy(filled), x)
    ema = ModelEmaV3(filled, decay=0.9)
    assert ema.module.budget_table == filled.budget_table
    ema.update(filled)
    entry = timm_pss.set_budget(ema, '200M')
    assert ema.module.active_subnet == entry.subnet
    _assert_same_model(filled, ema.module, x)


def test_load_resizes_to_a_table_of_another_size(x):
    big, small = _filled(count=5, seed=1), _filled(count=2, seed=2)
    target = copy.deepcopy(big)
    target.load_state_dict(small.state_dict(), strict=True)
    _assert_same_model(small, target, x)
    target.load_state_dict(big.state_dict(), strict=True)
    _assert_same_model(big, target, x)
    # a checkpoint without a table (timm's dense weights) clears it
    target.load_state_dict(timm.create_model('mobilenetv2_100', num_classes=10).state_dict(), strict=True)
    assert len(target.budget_table) == 0 and 'pss_budget_table' not in target.state_dict()


def test_budget_table_follows_a_replaced_buffer_even_when_its_id_is_recycled(filled, monkeypatch):
    # CPython recycles the addresses of freed objects, so a table tensor loaded after another may get the id the
    # cached one had, at the same version: the decoded-table cache must not serve the old table then. Injected:
    # every object shares one id, as if each replacement landed on the freed address.
    from timm_pss import budget_storage as storage_module
    monkeypatch.setattr(storage_module, 'id', lambda obj: 1, raising=False)
    model, other = copy.deepcopy(filled), copy.deepcopy(filled)
    other.set_table_metrics([{'top1': 10.0 + i} for i in range(len(filled.budget_table))])
    state = other.state_dict()
    model.load_state_dict(filled.state_dict())
    before = model.budget_table  # cached at the loaded tensor's version
    model.load_state_dict(state)  # a new buffer tensor, copied into once: the same version as before
    assert model.budget_table == other.budget_table != before
    assert [e.metrics['top1'] for e in model.budget_table] == [10.0 + i for i in range(len(before))]


def test_malformed_tables_fail_naming_the_key(filled):
    good = filled.state_dict()
    target = timm.create_model(NAME, num_classes=10)

    def load(**changes):
        sd = dict(good, **changes)
        for k in [k for k, v in changes.items() if v is None]:
            del sd[k]
        target.load_state_dict(sd)

    with pytest.raises(ValueError, match='pss_budget_table: not valid JSON'):
        load(pss_budget_table=torch.tensor(list(b'{nope'), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'pss_budget_table: expected a 1-D uint8'):
        load(pss_budget_table=torch.zeros(3))
    bad_entry = good['pss_budget_table'].clone()
    text = bytes(bad_entry.tolist()).decode().replace('"resolution": 128', '"resolution": 127')
    with pytest.raises(ValueError, match=r'pss_budget_table: entry 0 is not in this model.s space: resolution 127'):
        load(pss_budget_table=torch.tensor(list(text.encode()), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'blocks\.1\.0\.bn1\.budget_running_mean: shape \(3, 96\)'):
        load(**{'blocks.1.0.bn1.budget_running_mean': torch.zeros(3, 96)})
    with pytest.raises(ValueError, match=r'bn1\.budget_running_var: missing'):
        load(**{'bn1.budget_running_var': None})
    with pytest.raises(ValueError, match='without a budget table'):
        load(pss_budget_table=None)
    other = timm.create_model('pss_mobilenetv1', num_classes=10)
    with pytest.raises(ValueError, match='made for channel groups'):
        other.load_state_dict(good, strict=False)


def test_set_budget_selection_rules(filled):
    table = filled.budget_table
    f = [e.flops for e in table]
    for i, flops in enumerate(f):
        assert filled.set_budget(flops) == table[i] and filled.active_budget_index == i
        assert filled.active_subnet == table[i].subnet
    assert filled.set_budget(f[2] - 1) == table[1]
    assert filled.set_budget(10 * f[-1]) == table[-1]
    assert filled.set_budget(f'{f[1] / 1e6 + 0.01:.2f}M') == table[1]
    with pytest.raises(ValueError, match=r'below the smallest budget-table entry, 67\.88M \(67883008 MACs\)'):
        filled.set_budget(f[0] - 1)
    with pytest.warns(UserWarning, match='below the smallest'):
        assert filled.set_budget(f[0] - 1, strict=False) == table[0]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        filled.set_budget(f[0])  # at the smallest entry: no warning


def test_select_ties_prefer_higher_top1():
    a, b = Subnet(128, (8,)), Subnet(160, (8,))
    table = BudgetTable(['g'], [BudgetEntry(100, a, {'top1': 1.0}), BudgetEntry(100, b, {'top1': 2.0}),
                                BudgetEntry(50, a, {})])
    assert table.select(100)[1].subnet == b
    assert table.select(99)[1].flops == 50
    assert BudgetTable(['g'], [BudgetEntry(100, a), BudgetEntry(100, b)]).select(100)[0] == 0


@pytest.mark.parametrize('text, value', [
    ('300M', 3e8), ('1.2G', 1.2e9), ('300 MFLOPs', 3e8), ('1.5 GMACs', 1.5e9), ('300e6', 3e8), ('  250m ', 2.5e8),
    ('69150208', 69150208.0), ('2k', 2e3), (3e8, 3e8), (300_000_000, 3e8), ('0.5T', 5e11), ('300 flops', 300.0),
])
def test_parse_flops(text, value):
    assert math.isclose(parse_flops(text), value)


@pytest.mark.parametrize('bad', ['', 'abc', '300X', '3OOM', '-5M', 'nan', float('nan'), float('inf'), -1, 0, None,
                                 True, [300], '1.2.3G'])
def test_parse_flops_refuses(bad):
    with pytest.raises(ValueError):
        parse_flops(bad)


def test_set_budget_bad_input_keeps_state(filled):
    before = filled.set_budget('200M')
    for bad in ['lots', float('nan'), -3, None]:
        with pytest.raises(ValueError):
            filled.set_budget(bad)
        assert filled.active_subnet == before.subnet


def test_empty_table_error():
    model = timm.create_model(NAME, device='meta')
    assert len(model.budget_table) == 0 and str(model.budget_table) == 'BudgetTable (empty)'
    with pytest.raises(RuntimeError, match='no budget table.*fill_budget_table'):
        model.set_budget('200M')


def test_set_budget_equals_fresh_calibration(filled, x):
    """Outputs after set_budget == outputs after set_subnet + calibrate_bn on the same data; no forward needed."""
    calls = []
    handle = filled.register_forward_pre_hook(lambda *a: calls.append(1))
    expected = []
    try:
        for entry in filled.budget_table:
            calls.clear()
            filled.set_budget(entry.flops)
            assert not calls, 'set_budget ran a forward pass'
            with torch.no_grad():
                expected.append(filled(x))
    finally:
        handle.remove()
    reference = timm.create_model(NAME, num_classes=10).eval()
    reference.load_state_dict(filled.state_dict())
    for entry, y in zip(filled.budget_table, expected):
        reference.set_subnet(entry.subnet)
        timm_pss.calibrate_bn(reference, _loader(), num_batches=2)
        assert reference.training is False
        with torch.no_grad():
            torch.testing.assert_close(reference(x), y, rtol=1e-5, atol=1e-5)
    # and the per-entry statistics really differ from the shared ones
    filled.set_budget(filled.budget_table[0].flops)
    with torch.no_grad():
        y_entry = filled(x)
        filled.set_subnet(filled.budget_table[0].subnet)
        assert not torch.allclose(filled(x), y_entry)


def test_calibrate_bn_restores_modes_and_validates():
    model = timm.create_model(NAME, num_classes=10).train()
    momenta = [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    timm_pss.calibrate_bn(model, _loader(), num_batches=1)
    assert model.training and all(m.training for m in model.modules())
    assert [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta
    with pytest.raises(ValueError, match='positive integer'):
        timm_pss.calibrate_bn(model, _loader(), num_batches=0)
    with pytest.raises(ValueError, match='no batches'):
        timm_pss.calibrate_bn(model, [], num_batches=1)


def test_export_after_set_budget_carries_entry_statistics(filled, x):
    entry = filled.set_budget(filled.budget_table[2].flops)
    exported = timm_pss.export_subnet(filled)
    r = entry.subnet.resolution
    xr = torch.nn.functional.interpolate(x, size=(r, r), mode='bilinear', antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(exported(xr), filled(x), rtol=1e-5, atol=1e-5)
    assert resolve_data_config(model=filled)['input_size'] == (3, r, r)
    assert exported.pretrained_cfg['input_size'] == (3, r, r)


def test_budget_context_manager_restores(filled):
    start = filled.set_subnet(filled.space.sample(rng=4))
    with timm_pss.budget(filled, '150M') as entry:
        assert filled.active_subnet == entry.subnet and filled.active_budget_index is not None
    assert filled.active_subnet == start and filled.active_budget_index is None
    filled.set_budget('250M')
    index = filled.active_budget_index
    with pytest.raises(KeyError):
        with timm_pss.budget(filled, '150M'):
            raise KeyError('boom')
    assert filled.active_budget_index == index


def test_free_set_budget_through_wrappers(filled, tmp_path):
    entry = filled.budget_table[1]
    assert timm_pss.set_budget(torch.compile(filled), entry.flops) == entry
    assert timm_pss.set_budget(torch.nn.DataParallel(filled), entry.flops) == entry
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(filled))
        assert timm_pss.set_budget(ddp, entry.flops) == entry
        assert ddp.module.active_subnet == entry.subnet
    finally:
        dist.destroy_process_group()
    with pytest.raises(TypeError, match='not a timm_pss supernet'):
        timm_pss.set_budget(torch.nn.Linear(2, 2), '1M')


def test_reset_classifier_keeps_table(filled, x):
    model = copy.deepcopy(filled)
    entry = model.set_budget('200M')
    model.reset_classifier(3)
    assert model.active_budget_index is not None and model.active_subnet == entry.subnet
    assert len(model.budget_table) == 4
    with torch.no_grad():
        assert model(x).shape == (2, 3)


def test_fill_budget_table_leaves_shared_statistics_alone():
    model = timm.create_model(NAME, num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}
    timm_pss.fill_budget_table(model, _subnets(model.space, 3), _loader(), num_batches=1)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_select_by_latency_rules():
    s = [Subnet(128, (8 * i,)) for i in range(1, 5)]
    table = BudgetTable(['g'], [BudgetEntry(100 * i, sub, {'latency_ms': 1.0 + i, 'top1': 10.0 * i})
                                for i, sub in enumerate(s)], info={'latency_device': 'cpu'})
    assert table.select(latency_ms=3.5)[0] == 2 and table.select(latency_ms='3ms')[0] == 2
    assert table.select(latency_ms=100)[0] == 3 and table.select(latency_ms='1 ms')[0] == 0
    assert table.select(150)[0] == 1  # FLOPs selection unchanged
    with pytest.raises(ValueError, match='latency budget 0.5 ms is below the smallest budget-table entry, 1 ms'):
        table.select(latency_ms=0.5)
    assert table.select(latency_ms=0.5, strict=False)[0] == 0
    with pytest.raises(ValueError, match='exactly one budget'):
        table.select(150, latency_ms=2)
    with pytest.raises(ValueError, match='exactly one budget'):
        table.select()
    for bad in ('fast', -1, 0, float('nan'), '5 s', True):
        with pytest.raises(ValueError, match='latency budget'):
            table.select(latency_ms=bad)
    no_latency = BudgetTable(['g'], [BudgetEntry(100, s[0], {'top1': 1.0})])
    with pytest.raises(ValueError, match='records no predicted latency .*record_latency'):
        no_latency.select(latency_ms=5)
    assert BudgetTable.from_json(table.to_json()) == table and table.info == {'latency_device': 'cpu'}


def test_select_skips_entries_a_cheaper_one_beats_on_heldout_data():
    s = [Subnet(128, (8 * i,)) for i in range(1, 5)]
    held = [70.0, 60.0, 80.0, 80.0]  # entry 1 is dominated by entry 0; 2 and 3 tie, so the larger wins
    table = BudgetTable(['g'], [BudgetEntry(100 * (i + 1), sub, {'heldout_top1': h}) for i, (sub, h)
                                in enumerate(zip(s, held))])
    assert [table.select(b)[0] for b in (100, 250, 300, 1000)] == [0, 0, 2, 3]


def test_set_budget_entry_activates_that_entry(filled):
    for i, entry in enumerate(filled.budget_table):
        assert filled.set_budget_entry(i) == entry and filled.active_budget_index == i
    assert filled.set_budget_entry(-1) == filled.budget_table[-1]
    with pytest.raises(IndexError, match='entry 99 does not exist; the table has 4 entries'):
        filled.set_budget_entry(99)


def test_keep_active_restores_subnet_and_budget_entry_even_when_the_body_raises(filled, x):
    entry = filled.set_budget_entry(2)
    with torch.no_grad():
        before = filled(x)
    with pytest.raises(KeyError):
        with filled.keep_active() as kept:
            assert kept == entry.subnet
            filled.set_budget_entry(0)
            filled.set_subnet(filled.space.sample(rng=3))
            raise KeyError('boom')
    assert filled.active_subnet == entry.subnet and filled.active_budget_index == 2
    with torch.no_grad():
        assert torch.equal(filled(x), before)  # the entry's own statistics again, not the shared ones
    start = filled.set_subnet(filled.space.sample(rng=5))
    with filled.keep_active():
        filled.set_budget('250M')
    assert filled.active_subnet == start and filled.active_budget_index is None


def test_keep_active_drops_the_entry_when_the_block_replaces_the_table(filled):
    model = copy.deepcopy(filled)
    entry = model.set_budget_entry(1)
    with model.keep_active():
        timm_pss.fill_budget_table(model, [model.space.min_subnet()], _loader(n=8, size=32), num_batches=1)
    assert model.active_subnet == entry.subnet and model.active_budget_index is None


def test_activate_is_the_checked_door_for_subnet_and_entry(filled):
    entry = filled.budget_table[1]
    assert filled.activate(entry.subnet, 1) == entry.subnet and filled.active_budget_index == 1
    assert filled.activate(entry.subnet) == entry.subnet and filled.active_budget_index is None
    filled.activate(filled.budget_table[-1].subnet, -1)
    assert filled.active_budget_index == len(filled.budget_table) - 1
    filled.set_budget_entry(2)
    with pytest.raises(ValueError, match='entry 1 holds BN statistics for .*budget_index=None'):
        filled.activate(filled.budget_table[2].subnet, 1)
    with pytest.raises(IndexError, match='entry 7 does not exist; the table has 4 entries'):
        filled.activate(entry.subnet, 7)
    with pytest.raises(TypeError, match='entry index is an int'):
        filled.activate(entry.subnet, '1')
    with pytest.raises(ValueError, match='group'):
        filled.activate(Subnet(filled.space.resolutions[0], (1,) * len(filled.space.group_names)))
    assert filled.active_subnet == filled.budget_table[2].subnet and filled.active_budget_index == 2


def test_callers_that_switch_and_restore_keep_the_budget_entry(filled, x):
    from timm_pss.pss import fresh_scores
    model = copy.deepcopy(filled)
    images, labels = torch.randn(4, 3, 128, 128), torch.zeros(4, dtype=torch.long)
    restorers = {
        'fresh_scores': lambda: fresh_scores(model, [model.space.min_subnet()], images, labels),
        'reset_classifier': lambda: model.reset_classifier(10),
    }
    for name, call in restorers.items():
        entry = model.set_budget_entry(2)
        call()
        assert (model.active_subnet, model.active_budget_index) == (entry.subnet, 2), name


def test_choose_parses_the_budget_once_and_says_when_it_is_below_every_entry(filled):
    table = filled.budget_table
    smallest = table[0].flops
    assert table.choose(smallest) == (0, table[0], False)
    assert table.choose(smallest - 1, strict=False) == (0, table[0], True)
    assert table.select(smallest - 1, strict=False) == (0, table[0])
    with pytest.warns(UserWarning, match='below the smallest budget-table entry'):
        filled.set_budget(smallest - 1, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        filled.set_budget(smallest)


def test_print_model_shows_the_active_subnet(filled):
    filled.set_subnet(filled.space.max_subnet())
    full = repr(filled)
    assert '(conv_stem): SlimConv2d(in=3/3, out=32/32,' in full and 'budget_entry' not in full
    entry = filled.set_budget_entry(0)
    small = repr(filled)
    assert small != full
    stem, head = entry.subnet.widths[0], entry.subnet.widths[-2]  # stem and last stage output widths
    assert f'(conv_stem): SlimConv2d(in=3/3, out={stem}/32,' in small
    assert f'channels={stem}/32, budget_entry=0,' in small
    assert f'(conv_head): SlimConv2d(in={head}/320, out=1280/1280,' in small


def test_the_budget_table_module_is_not_shadowed_by_the_budget_function():
    import importlib
    module = importlib.import_module('timm_pss.budget_table')
    assert module.BudgetTable is BudgetTable and module.parse_flops is parse_flops
    import timm_pss.budget_table as imported
    assert imported is module
    assert callable(timm_pss.budget) and timm_pss.budget.__module__ == 'timm_pss.supernet'


def _table(rows):
    """A table of (flops, heldout_top1) entries for a 1-group space (selection only: no model needed)."""
    return BudgetTable(['g'], [BudgetEntry(int(f), Subnet(32, (8 * (i + 1),)), {'heldout_top1': h, 'top1': h})
                               for i, (f, h) in enumerate(rows)])


def test_serving_budgets_select_the_entry_they_name():
    # entry 1 is beaten by the cheaper entry 0 (never served); entries 2 and 3 are 700 MACs apart, so rounding
    # entry 2's FLOPs up to 2 decimals of MMACs would reach the better entry 3: it gets its exact MACs instead
    table = _table([(5_000_000, 80.0), (6_000_000, 70.0), (10_203_656, 85.0), (10_204_356, 90.0)])
    labels = table.serving_budgets()
    assert labels == ['5.00M', None, '10203656', '10.21M']
    for i, label in enumerate(labels):
        if label is not None:
            assert table.select(label)[0] == i
    assert table.choose(6_000_000).index == 0  # what "not served" means


def test_table_text_keeps_decimals_and_long_lists_say_how_many_more():
    table = _table([(1_000_000 * (i + 1), 90.0 + i) for i in range(8)])
    assert '90.00' in str(table) and '91.00' in str(table)
    with pytest.raises(ValueError, match=r'entries \[0, 1, 2, 3, 4, \.\.\. \(3 more\)\]'):
        table.select(latency_ms=5)


def test_a_json_boolean_metric_is_refused_not_read_as_one():
    text = _table([(1_000_000, 90.0)]).to_json().replace('"top1": 90.0', '"top1": true')
    with pytest.raises(ValueError, match='entry 0 is malformed .*true / false are not numbers'):
        BudgetTable.from_json(text)
