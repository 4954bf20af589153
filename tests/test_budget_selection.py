"""set_budget and the table's selection rules: FLOPs and latency budgets, ties, held-out accuracy, bad input
that keeps the state, the active entry under switching, printing."""
import copy
import math
import warnings

import pytest
import torch
import timm

from budget_support import NAME, random_image_loader
from budget_support import filled, x  # noqa: F401  (fixtures: one filled supernet per module)
import timm_pss
from timm_pss import BudgetEntry, BudgetTable, Subnet, parse_flops


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
        timm_pss.fill_budget_table(model, [model.space.min_subnet()], random_image_loader(n=8, size=32), num_batches=1)
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
