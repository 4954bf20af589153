"""Nothing lost, nothing silent (library): refused loads change nothing, hostile input fails with a clear error,
bounded spaces, and `with timm_pss.budget(...)` shared by threads."""
import json
import math
import sys
import threading

import numpy as np
import pytest
import torch
import timm
from timm.models import save_for_hf
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from timm_pss import SearchSpace, parse_flops
from timm_pss.units import parse_latency
from timm_pss.convert_reference import parse_reference_pools
from timm_pss.latency import LatencyTable, build_lut, fit_overhead_ms
from timm_pss.pss import PrioritizedSubnetSampler
from timm_pss.slimmable import SlimBatchNormBase
from support import outputs_per_budget

SMALL = dict(num_classes=10, resolution_range=(32, 64, 16))


def _loader(n=16, size=64):
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=8)


def _subnets(space, count):
    """`count` subnets from the min to the max subnet, every group at the same fraction of its choices."""
    return [timm_pss.Subnet(space.resolutions[round(k * (len(space.resolutions) - 1) / (count - 1))],
                            tuple(c[round(k * (len(c) - 1) / (count - 1))] for c in space.width_choices))
            for k in range(count)]


def _filled(count=3, seed=0):
    """A small pss_mobilenetv1 with a real budget table of `count` entries spread over its FLOPs span."""
    torch.manual_seed(seed)
    model = timm.create_model('pss_mobilenetv1', **SMALL).eval()
    timm_pss.fill_budget_table(model, _subnets(model.space, count), _loader(), num_batches=2,
                               metrics=[{'top1': 50.0 + i, 'heldout_top1': 40.0 + i} for i in range(count)])
    return model


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """One torch thread: exact, repeatable outputs, and no oversubscription of a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def state_dicts():
    """(a 3-entry model's state dict, another model's 4-entry state dict)."""
    return _filled(count=3).state_dict(), _filled(count=4, seed=1).state_dict()


def _loaded(state_dict):
    model = timm.create_model('pss_mobilenetv1', **SMALL).eval()
    model.load_state_dict(state_dict)
    return model


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _table_text(state_dict):
    return bytes(state_dict['pss_budget_table'].tolist()).decode()


def _with_table_text(state_dict, text):
    return dict(state_dict, pss_budget_table=torch.tensor(list(text.encode()), dtype=torch.uint8))


def _last_bn(model):
    return [n for n, m in model.named_modules() if isinstance(m, SlimBatchNormBase)][-1]


def _corrupt(kind, sd, model):
    """`sd` (another model's state dict, a 4-entry table) with one defect of the given kind."""
    last = _last_bn(model)
    sd = dict(sd)
    if kind == 'last_var_shape':
        sd[f'{last}.budget_running_var'] = sd[f'{last}.budget_running_var'][:, :-1].clone()
    elif kind in ('last_var_nan', 'last_var_negative', 'last_mean_inf'):
        key = f'{last}.budget_running_{"mean" if kind == "last_mean_inf" else "var"}'
        sd[key] = sd[key].clone()
        sd[key][-1, 3] = {'last_var_nan': math.nan, 'last_var_negative': -1.0, 'last_mean_inf': math.inf}[kind]
    elif kind == 'metric_nan':
        doc = json.loads(_table_text(sd))
        doc['entries'][1]['metrics']['heldout_top1'] = math.nan
        sd = _with_table_text(sd, json.dumps(doc))
    elif kind in ('metric_infinity', 'flops_1e400'):
        doc = json.loads(_table_text(sd))
        old, new = (('"heldout_top1": 41.0', '"heldout_top1": Infinity') if kind == 'metric_infinity' else
                    (f'"flops": {doc["entries"][0]["flops"]}', '"flops": 1e400'))
        assert _table_text(sd).count(old) == 1
        sd = _with_table_text(sd, _table_text(sd).replace(old, new))
    elif kind == 'deep_nesting':
        sd = _with_table_text(sd, '[' * 100_000 + ']' * 100_000)
    elif kind == 'metric_true':
        doc = json.loads(_table_text(sd))
        doc['entries'][1]['metrics']['heldout_top1'] = True
        sd = _with_table_text(sd, json.dumps(doc))
    elif kind == 'stem_shape':  # ordinary weights, after a valid new table in key order
        sd['conv_stem.weight'] = sd['conv_stem.weight'][:-1].clone()
    elif kind == 'classifier_not_a_tensor':
        sd['classifier.bias'] = [0.0] * 10
    elif kind == 'unexpected_key':
        sd['head.extra.weight'] = torch.zeros(3)
    elif kind == 'missing_key':
        del sd['classifier.weight']
    return sd


CORRUPTIONS = {
    'last_var_shape': r'budget_running_var: shape \(4, \d+\) does not match',
    'last_var_nan': r'budget_running_var: entry 3, channel 3 is nan; .*finite and >= 0',
    'last_var_negative': r'budget_running_var: entry 3, channel 3 is -1.0; .*finite and >= 0',
    'last_mean_inf': r'budget_running_mean: entry 3, channel 3 is inf; .*must be finite',
    'metric_nan': r"pss_budget_table: entry 1 is malformed \(metric 'heldout_top1' is nan",
    'metric_infinity': r"pss_budget_table: entry 1 is malformed \(metric 'heldout_top1' is inf",
    'flops_1e400': r'pss_budget_table: entry 0 is malformed \("flops" must be a finite number',
    'deep_nesting': r'pss_budget_table: JSON nested too deeply',
    'metric_true': r'true / false are not numbers',
    'stem_shape': r'size mismatch for conv_stem.weight: the checkpoint has shape \(\d+, 3, 3, 3\)',
    'classifier_not_a_tensor': r"'classifier.bias' is a list, not a tensor",
    'unexpected_key': r"unexpected key 'head.extra.weight'",
    'missing_key': r"missing key 'classifier.weight'",
}


@pytest.mark.parametrize('kind', list(CORRUPTIONS))
def test_refused_load_leaves_the_model_exactly_as_it_was(kind, x, state_dicts):
    model = _loaded(state_dicts[0])
    model.set_budget_entry(1)
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_table, before_active = model.budget_table, (model.active_subnet, model.active_budget_index)
    with torch.no_grad():
        before_y = model(x)
    before_outputs = outputs_per_budget(model, x)
    model.set_budget_entry(1)
    bad = _corrupt(kind, state_dicts[1], model)
    with pytest.raises((ValueError, RuntimeError), match=CORRUPTIONS[kind]):  # RuntimeError: torch's, for weights
        model.load_state_dict(bad)
    assert (model.active_subnet, model.active_budget_index) == before_active
    with torch.no_grad():
        assert torch.equal(model(x), before_y)
    after_sd = model.state_dict()
    assert list(after_sd) == list(before_sd)
    for key, value in before_sd.items():
        assert after_sd[key].shape == value.shape and torch.equal(after_sd[key], value), key
    assert model.budget_table == before_table
    for a, b in zip(outputs_per_budget(model, x), before_outputs):
        assert torch.equal(a, b) and torch.isfinite(a).all()


def test_a_load_serves_the_new_tables_top_entry(x, state_dicts):
    model = _loaded(state_dicts[1])
    model.set_budget_entry(3)
    model.load_state_dict(state_dicts[0])  # a 3-entry table: entry 3 no longer exists
    table = model.budget_table
    top, entry = table.select(max(e.flops for e in table))
    assert model.active_budget_index == top and model.active_subnet == entry.subnet
    assert all(m.budget_index == top for m in model.modules() if isinstance(m, SlimBatchNormBase))
    with torch.no_grad():
        y = model(x)
        model.set_budget_entry(top)
        assert torch.equal(model(x), y)
    model.set_budget_entry(1)
    model.load_state_dict(timm.create_model('pss_mobilenetv1', **SMALL).state_dict())  # no table: cleared
    assert model.active_budget_index is None and len(model.budget_table) == 0
    assert model.shared_stats_subnet == model.space.max_subnet()  # a dense checkpoint's statistics
    # refilling the table releases the entry: the subnet runs on the shared statistics it had before
    model.load_state_dict(state_dicts[0])
    model.set_budget_entry(1)
    timm_pss.fill_budget_table(model, [model.space.min_subnet()], _loader(n=8), num_batches=1)
    assert model.active_budget_index is None and model.shared_stats_subnet is None


def test_a_refused_fill_leaves_the_model_as_it_was(x, state_dicts):
    """Non-finite calibration statistics (NaN images) or metrics: refused, table and shared statistics kept."""
    model = _loaded(state_dicts[0])
    model.set_budget_entry(1)
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_outputs = outputs_per_budget(model, x)
    model.set_budget_entry(1)
    nan_images = DataLoader(TensorDataset(torch.full((8, 3, 64, 64), math.nan), torch.zeros(8)), batch_size=8)
    with pytest.raises(ValueError, match=r'calibration gave non-finite BN statistics'):
        timm_pss.fill_budget_table(model, [model.space.min_subnet()], nan_images, num_batches=1)
    with pytest.raises(ValueError, match="metric 'top1' is nan; metrics must be finite"):
        timm_pss.fill_budget_table(model, [model.space.min_subnet()], _loader(n=8), num_batches=1,
                                   metrics=[{'top1': math.nan}])
    assert model.active_budget_index == 1
    after_sd = model.state_dict()
    assert list(after_sd) == list(before_sd) and all(torch.equal(after_sd[k], v) for k, v in before_sd.items())
    assert all(torch.equal(a, b) for a, b in zip(outputs_per_budget(model, x), before_outputs))


@pytest.mark.parametrize('value', [math.inf, -math.inf, math.nan], ids=['inf', '-inf', 'nan'])
def test_calibration_on_non_finite_images_changes_nothing(x, state_dicts, value):
    model = _loaded(state_dicts[0])
    model.set_subnet(model.space.min_subnet())
    timm_pss.calibrate_bn(model, _loader(n=8), num_batches=1)
    model.set_budget_entry(1)
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_outputs = outputs_per_budget(model, x)
    model.set_budget_entry(1)
    bad = [torch.full((8, 3, 64, 64), value)]
    with pytest.raises(ValueError, match='calibration gave non-finite BN statistics.*left as they were'):
        timm_pss.calibrate_bn(model, bad, num_batches=1)
    assert model.active_budget_index == 1 and model.shared_stats_subnet == model.space.min_subnet()
    after_sd = model.state_dict()
    assert all(torch.equal(after_sd[k], v) for k, v in before_sd.items())
    assert all(torch.equal(a, b) for a, b in zip(outputs_per_budget(model, x), before_outputs))


@pytest.mark.parametrize('budget, shown', [('1e400', "'1e400'"), ('1e309M', "'1e309M'"),
                                           (10 ** 400, 'an integer of 401 digits'),
                                           (-10 ** 400, 'a negative integer of 401 digits')],
                         ids=['1e400', '1e309M', '10**400', '-10**400'])
def test_huge_budgets_are_value_errors_naming_the_input(budget, shown):
    with pytest.raises(ValueError, match=f'positive finite number .*got {shown}'):
        parse_flops(budget)
    if budget != '1e309M':  # not a latency string at all
        with pytest.raises(ValueError, match=f'latency budget must be a positive finite .*got {shown}'):
            parse_latency(budget)


def test_set_budget_of_a_huge_number_keeps_state(state_dicts):
    model = _loaded(state_dicts[0])
    entry = model.set_budget_entry(0)
    with pytest.raises(ValueError, match='positive finite number'):
        model.set_budget(10 ** 400)
    assert model.active_subnet == entry.subnet and model.active_budget_index == 0


def test_set_budget_entry_refuses_bools_and_non_integers(state_dicts):
    model = _loaded(state_dicts[0])
    model.set_budget_entry(0)
    for bad in (True, False, 1.0, '1', None):
        with pytest.raises(TypeError, match='entry index is an int'):
            model.set_budget_entry(bad)
    assert model.active_budget_index == 0
    assert model.set_budget_entry(np.int64(1)) == model.budget_table[1]


def test_num_candidates_refuses_reversed_ranges(v2_space):
    space = v2_space
    assert space.num_candidates((2e8, 3e8)) > 0 and space.num_candidates((2e8, 2e8)) == 0
    for bad in ((3e8, 2e8), (math.nan, 3e8), ('a', 'b'), (1,)):
        with pytest.raises(ValueError, match='flops_range must be two numbers'):
            space.num_candidates(bad)


# bounded spaces

def test_a_space_is_bounded(tmp_path):
    with pytest.raises(ValueError, match=r'holds 301 resolutions up to 1224 px; a space allows at most 256 '
                                         r'resolutions of at most 8192 px'):
        timm.create_model('pss_mobilenetv1', resolution_range=(24, 24 + 4 * 300, 4), device='meta')
    with pytest.raises(ValueError, match='at most 8192 px'):
        timm.create_model('pss_mobilenetv1', resolution_range=(24, 10_024, 10_000), device='meta')
    with pytest.raises(ValueError, match="group 'g' has 2000 width choices; a space allows at most 1024"):
        SearchSpace(['g'], [range(8, 8 * 2001, 8)], [32], ())
    space = SearchSpace(['g'], [range(8, 64, 8)], [32], ())
    space.bank_size = 1 << 30
    with pytest.raises(ValueError, match='bank_size is 1073741824; the candidate bank holds 1 .. 4194304'):
        space.num_candidates((0, 1))
    # the hostile config.json: refused at once, before any weights are read
    folder = tmp_path / 'hostile'
    save_for_hf(timm.create_model('pss_mobilenetv1', **SMALL), str(folder), safe_serialization=True)
    config = json.loads((folder / 'config.json').read_text())
    config['model_args']['resolution_range'] = [24, 1000000, 4]
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='holds 249995 resolutions up to 1000000 px; a space allows at most 256'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


# latency tables

def test_overhead_fit_is_clamped_at_zero():
    assert fit_overhead_ms([-0.2, -0.103, 0.05]) == 0.0  # median -0.103: would predict below the blocks' sum
    assert fit_overhead_ms([0.4, 0.12345678, 0.2]) == 0.2
    with pytest.raises(ValueError, match='at least one'):
        fit_overhead_ms([])


def test_negative_overhead_is_refused_on_load():
    model = timm.create_model('pss_mobilenetv2', resolution_range=(32, 32, 8), width_range=(0.9, 1.0))
    table = build_lut(model, threads=1, warmup=0, repeats=1, overhead_subnets=0)
    doc = json.loads(table.to_json())
    doc['overhead_ms'] = -0.103
    with pytest.raises(ValueError, match=r'"overhead_ms" must be a finite number >= 0.*got -0.103'):
        LatencyTable.from_json(json.dumps(doc))


# resume state: pools

@pytest.fixture(scope='module')
def v2_space():
    return timm.create_model('pss_mobilenetv2', device='meta').space


def _sampler_with_pools(space, seed=7):
    sampler = PrioritizedSubnetSampler(space, num_pools=4, pool_size=2, seed=seed)
    for i in range(40):
        p = sampler.propose()
        sampler.update(p.bucket, p.subnet, -i / 10)
    return sampler


def test_a_bad_pool_state_is_refused_and_changes_nothing(v2_space):
    good = json.loads(json.dumps(_sampler_with_pools(v2_space, seed=1).state_dict()))
    assert all(good['pools'])
    outside = json.loads(json.dumps(good))
    outside['pools'][0][0][0] = good['pools'][3][0][0]  # a subnet of the top bucket in the bottom pool
    nan_score = json.loads(json.dumps(good))
    nan_score['pools'][2][0][1] = math.nan
    inf_score = json.loads(json.dumps(good))
    inf_score['pools'][1][-1][1] = -math.inf
    cases = [(outside, r'pool 0 \(.*\): subnet .* outside its bucket'),
             (nan_score, r'pool 2 .*score of subnet .* is nan; pool scores must be finite'),
             (inf_score, r'pool 1 .*score of subnet .* is -inf; pool scores must be finite')]
    for state, match in cases:
        sampler = _sampler_with_pools(v2_space)
        before = json.dumps(sampler.state_dict())
        with pytest.raises(ValueError, match=match):
            sampler.load_state_dict(state)
        assert json.dumps(sampler.state_dict()) == before
    sampler = _sampler_with_pools(v2_space)
    sampler.load_state_dict(good)
    assert sampler.state_dict() == good


def test_reference_pools_with_a_nan_score_are_refused(v2_space):
    space = v2_space
    a, b = _subnets(space, 3)[:2]

    def cfg(subnet):
        return str({'resolution': subnet.resolution,
                    'stage_cout_mults': [w / m for w, m in zip(subnet.widths, space.max_widths)]})

    good = {'pools': {'flops': {150: {cfg(a): -1.2, cfg(b): -0.7}}}}
    assert max(parse_reference_pools(good, space)[150.0], key=lambda e: e[1])[0] == b
    for score in (math.nan, math.inf, 'nan'):
        bad = {'pools': {'flops': {150: {cfg(a): -1.2, cfg(b): score}}}}
        with pytest.raises(ValueError, match=r'pool flops/150: subnet .* has score .*; pool scores must be finite'):
            parse_reference_pools(bad, space)


# local-dir: folders

def test_local_dir_without_model_safetensors_is_refused(tmp_path):
    folder = tmp_path / 'run'
    model = timm.create_model('pss_mobilenetv1', **SMALL)
    save_for_hf(model, str(folder), safe_serialization=True)
    (folder / 'model.safetensors').unlink()
    torch.save(model.state_dict(), folder / 'checkpoint-0.pth.tar')  # what timm would fall back to
    with pytest.raises(FileNotFoundError, match=r'run/model.safetensors is missing'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


# threads

def test_budget_blocks_are_thread_safe_on_one_shared_model(state_dicts):
    """Two threads share one model, each `with budget(model, B): model(x)` at its own budget, 60 times."""
    model = _loaded(state_dicts[0])
    budgets = [model.budget_table[0].flops, model.budget_table[2].flops]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    threads_before, interval_before = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(1)
    try:
        reference = {}
        with torch.no_grad():
            for b in budgets:
                with timm_pss.budget(model, b):
                    reference[b] = model(x)
        assert not torch.equal(reference[budgets[0]], reference[budgets[1]])
        start_subnet = model.set_subnet(model.space.max_subnet())
        wrong, errors = [], []
        barrier = threading.Barrier(2)

        def work(b):
            try:
                barrier.wait()
                for _ in range(60):
                    with torch.no_grad(), timm_pss.budget(model, b):
                        y = model(x)
                    if not torch.equal(y, reference[b]):
                        wrong.append(b)
            except Exception as e:  # noqa: BLE001  (counted: the test asserts there are none)
                errors.append(repr(e))

        sys.setswitchinterval(1e-5)  # hand the GIL over often, so unsafe code interleaves every time
        workers = [threading.Thread(target=work, args=(b,)) for b in budgets]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval_before)
        torch.set_num_threads(threads_before)
    assert errors == [] and wrong == []
    assert model.active_subnet == start_subnet and model.active_budget_index is None


def test_half_precision_that_would_break_entry_statistics_is_refused(x, state_dicts):
    model = _loaded(state_dicts[0])
    norm = next(m for m in model.modules() if isinstance(m, SlimBatchNormBase))
    norm.budget_running_var[0, 0] = 1e6  # above float16's 65504
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='would make the per-entry BN statistics .* infinite'):
        model.half()
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    model.bfloat16()  # bfloat16's range holds them
    assert torch.isfinite(norm.budget_running_var).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['float16', 'bfloat16'])
def test_low_precision_inputs_of_another_size_are_resized(dtype):
    from timm_pss.resolution import resize_to_resolution
    x = torch.rand(2, 3, 40, 40)
    y = resize_to_resolution(x.to(dtype), 24)
    assert y.dtype == dtype and y.shape == (2, 3, 24, 24)
    torch.testing.assert_close(y.float(), resize_to_resolution(x, 24), atol=1e-2, rtol=1e-2)
