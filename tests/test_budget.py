"""Budget tables in the state dict: every load path (state dict, safetensors, another head, another size, EMA),
malformed tables, BN calibration per entry, export, wrappers."""
import copy
import socket

import pytest
import torch
import torch.distributed as dist
import timm
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config
from timm.utils import ModelEmaV3

from budget_support import NAME, assert_same_model, filled_supernet, random_image_loader, spread_subnets
from budget_support import filled, x  # noqa: F401  (fixtures: one filled supernet per module)
import timm_pss
from timm_pss import BudgetEntry, BudgetTable, Subnet


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
    assert_same_model(filled, fresh, x)


def test_round_trip_safetensors(filled, x, tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file(filled.state_dict(), str(path))
    fresh = timm.create_model(NAME, num_classes=10).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    assert_same_model(filled, fresh, x)
    # timm's own loading path (pretrained_cfg_overlay file=...) and a features_only model from it
    via_timm = timm.create_model(NAME, num_classes=10, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    assert_same_model(filled, via_timm, x)
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
    assert_same_model(filled, copy.deepcopy(filled), x)
    ema = ModelEmaV3(filled, decay=0.9)
    assert ema.module.budget_table == filled.budget_table
    ema.update(filled)
    entry = timm_pss.set_budget(ema, '200M')
    assert ema.module.active_subnet == entry.subnet
    assert_same_model(filled, ema.module, x)


def test_load_resizes_to_a_table_of_another_size(x):
    big, small = filled_supernet(count=5, seed=1), filled_supernet(count=2, seed=2)
    target = copy.deepcopy(big)
    target.load_state_dict(small.state_dict(), strict=True)
    assert_same_model(small, target, x)
    target.load_state_dict(big.state_dict(), strict=True)
    assert_same_model(big, target, x)
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
        timm_pss.calibrate_bn(reference, random_image_loader(), num_batches=2)
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
    timm_pss.calibrate_bn(model, random_image_loader(), num_batches=1)
    assert model.training and all(m.training for m in model.modules())
    assert [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta
    with pytest.raises(ValueError, match='positive integer'):
        timm_pss.calibrate_bn(model, random_image_loader(), num_batches=0)
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
    timm_pss.fill_budget_table(model, spread_subnets(model.space, 3), random_image_loader(), num_batches=1)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
