"""benchmarks/speed.py's bookkeeping: ratio spreads of interleaved timings, --output written atomically, and the
training section's leaf-cut variant."""
from pathlib import Path

import numpy as np
import pytest
import torch

from support import import_benchmark

ROOT = Path(__file__).resolve().parents[1]
harness = import_benchmark('harness')
speed = import_benchmark('speed')
speed_train = import_benchmark('speed_train')

QUICK = ['--quick', '--models', 'pss_mobilenetv2', '--sections', 'flops']


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_ratio_quartiles_are_those_of_the_per_round_ratios():
    # rounds pair up: a slow round slows both, so the per-round ratio stays 2 while the times spread
    assert harness.ratio_quartiles([2, 20, 200, 2000], [1, 10, 100, 1000]) == pytest.approx([2, 2, 2])
    q1, median, q3 = harness.ratio_quartiles([1, 2, 3, 4, 5], [1, 1, 1, 1, 1])
    assert (q1, median, q3) == pytest.approx((1.5, 3, 4.5))
    assert harness.ratio_quartiles([3], [2]) == pytest.approx([1.5, 1.5, 1.5])


def test_median_interval_is_the_sign_test_interval():
    # n = 15: P(4 <= B <= 11) = 0.965 >= 0.95 and P(5 <= B <= 10) = 0.882, so x(4) .. x(12)
    assert harness.median_interval(range(15, 0, -1)) == (4, 12)
    assert harness.median_interval([5, 1, 4, 2, 3, 6]) == (1, 6)  # n = 6: only (min, max), 0.969
    assert harness.median_interval([1, 2, 3, 4, 5]) is None  # n = 5: (min, max) covers 0.938
    assert harness.median_interval(range(45), confidence=0.99) == (13, 31)  # x(14) .. x(32), 0.993
    # the interval holds the median in about 95 % of samples (the statement it makes)
    rng = np.random.default_rng(0)
    inside = [low <= 0 <= high for low, high in (harness.median_interval(rng.standard_normal(15))
                                                   for _ in range(4000))]
    assert 0.95 <= np.mean(inside) <= 0.98


def test_output_is_the_printed_report(tmp_path, capsys):
    out = tmp_path / 'speed.txt'
    assert speed.main(QUICK + ['--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '## Vectorised FLOPs' in printed and out.read_text() == printed + 'rc=0\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['speed.txt']


def test_an_existing_output_is_refused_before_any_work_unless_forced(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'speed.txt'
    out.write_text('earlier results')
    monkeypatch.setattr(speed, 'run_section', lambda *a: pytest.fail('measured before checking --output'))
    with pytest.raises(SystemExit) as exit_info:
        speed.main(QUICK + ['--output', str(out)])
    assert exit_info.value.code == 2 and 'exists' in capsys.readouterr().err
    assert out.read_text() == 'earlier results'


def test_a_failed_run_leaves_the_old_output_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / 'speed.txt'
    out.write_text('earlier results')

    def broken(section, args):
        print('half a report')
        raise RuntimeError('injected failure')

    monkeypatch.setattr(speed, 'run_section', broken)
    with pytest.raises(RuntimeError, match='injected failure'):
        speed.main(QUICK + ['--output', str(out), '--force'])
    assert out.read_text() == 'earlier results'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['speed.txt']


def test_leaf_cut_copies_the_cut_but_keeps_its_gradient_from_the_full_weight():
    """The train section's 'leaf cuts' variant: cut_weight's values, a subnet-sized gradient of its own, none in the
    full weight (what the supernet's step costs without full-size gradients)."""
    from timm_pss.slimmable import cut_weight
    weight = torch.randn(6, 5, 3, 3, requires_grad=True)
    leaf = speed_train.leaf_cut(weight, 4, 3)
    assert leaf.is_leaf and leaf.requires_grad and leaf.is_contiguous()
    assert torch.equal(leaf, cut_weight(weight, 4, 3))
    (leaf * 2).sum().backward()
    assert weight.grad is None and leaf.grad.shape == (4, 3, 3, 3)
    assert speed_train.leaf_cut(weight, 6, 5) is weight  # a full-size cut is the weight, as with cut_weight
