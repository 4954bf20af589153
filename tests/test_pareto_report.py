"""benchmarks/pareto.py and its rooms (pareto_protocol, pareto_report, pareto_runs, harness's paired statistics) as
pure functions: paired t-intervals, AUC, the entry a budget serves, min-subnet marks, CSV formats, IDX subsets,
refused methods, reuse of finished runs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from timm_pss.dataset_setup import idx_bytes, read_idx

from support import import_benchmark

ROOT = Path(__file__).resolve().parents[1]
harness = import_benchmark('harness')
pareto = import_benchmark('pareto')
protocol = import_benchmark('pareto_protocol')
report = import_benchmark('pareto_report')
runs = import_benchmark('pareto_runs')


def test_t_quantiles_match_the_tables():
    assert harness.t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert harness.t_quantile_975(4) == pytest.approx(2.776, abs=1e-3)
    assert harness.t_quantile_975(10_000) == pytest.approx(1.960, abs=1e-3)


def test_paired_difference_is_the_mean_and_t_interval_of_per_seed_differences():
    mean, low, high = harness.paired_difference([11, 12, 13], [10, 10, 10])
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == pytest.approx(2)
    assert (low, high) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    # pairing: a constant per-seed gap has no width, however much the seeds differ
    assert harness.paired_difference([50, 70, 90], [49, 69, 89]) == pytest.approx((1, 1, 1))
    with pytest.raises(ValueError, match='at least two seeds'):
        harness.paired_difference([1.0], [0.0])


def test_normalised_auc_is_the_mean_accuracy_over_the_flops_span():
    assert harness.normalised_auc([1, 2, 5], [80, 80, 80]) == pytest.approx(80)
    assert harness.normalised_auc([0, 10], [0, 100]) == pytest.approx(50)
    assert harness.normalised_auc([0, 1, 4], [60, 90, 90]) == pytest.approx((75 * 1 + 90 * 3) / 4)
    with pytest.raises(ValueError):
        harness.normalised_auc([3], [1])


def test_rows_of_run_read_the_entry_set_budget_picks():
    entries = [dict(flops=1e6, top1=60.0, heldout_top1=70.0), dict(flops=2e6, top1=75.0, heldout_top1=65.0),
               dict(flops=3e6, top1=80.0, heldout_top1=80.0)]
    rows = protocol.rows_of_run('pss', 3, entries, np.array([1e6, 2.5e6, 3e6]), min_flops=1e6)
    # at 2.5M the 2M entry fits but the cheaper 1M entry has the better held-out accuracy: set_budget serves that
    assert [(r['entry_mflops'], r['top1'], r['is_min_subnet']) for r in rows] == [(1, 60, 1), (1, 60, 1), (3, 80, 0)]
    assert rows[1]['budget_mflops'] == 2.5 and rows[0]['method'] == 'pss' and rows[0]['seed'] == 3


def _rows(gaps, methods=('pss', 'uniform'), seeds=(0, 1, 2)):
    """Rows at two budgets; at the second, pss is better than uniform by `gaps` (one per seed)."""
    rows = []
    for m in methods:
        for s, gap in zip(seeds, gaps):
            rows.append(dict(method=m, seed=s, budget_mflops=1.0, entry_mflops=1.0, top1=50.0 + s, is_min_subnet=1))
            rows.append(dict(method=m, seed=s, budget_mflops=2.0, entry_mflops=2.0,
                             top1=70.0 + 5 * s + (gap if m == 'pss' else 0), is_min_subnet=int(m == 'uniform')))
    return rows


def test_report_marks_min_subnet_rows_and_gives_paired_intervals():
    text = report.report(_rows([2.0, 3.0, 4.0]), ['pss', 'uniform'], [0, 1, 2], 'test')
    lines = {line.split('|')[1].strip(): line for line in text.splitlines() if line.startswith('| ')}
    assert '| all ' in lines['1.00'] and '3/6' in lines['2.00']
    half = 4.302653 / math.sqrt(3)
    assert f'+3.00 [{3 - half:+.2f}, {3 + half:+.2f}]' in text and '+0.00 [+0.00, +0.00]' in text
    assert 'interval above zero at 1, below zero at 0 of the 1 budgets' in text


def test_an_ablation_run_reports_to_its_own_files_and_keeps_the_main_report():
    assert pareto.report_stem('fashion-mnist', ['pss', 'uniform', 'mutualnet', 'usnet']) == 'pareto_fashion_mnist'
    assert pareto.report_stem('digits', ['pss', 'uniform']) == 'pareto_digits'
    assert pareto.report_stem('fashion-mnist', ['pss', 'pss_zscore']) == 'pareto_fashion_mnist_ablations'
    assert pareto.report_stem('fashion-mnist', ['pss_refresh', 'pss', 'usnet']) == 'pareto_fashion_mnist_pss_refresh'
    assert pareto.report_stem('fashion-mnist', list(protocol.MAIN_METHODS)) == 'pareto_fashion_mnist'


def test_csv_round_trip_and_the_older_digits_format(tmp_path):
    rows = _rows([1.0, 2.0, 3.0])
    report.write_csv(tmp_path / 'r.csv', rows)
    assert report.read_csv(tmp_path / 'r.csv') == rows
    # the older format: method,seed,budget_flops,top1, plus auc / mean / std rows
    old = report.read_csv(ROOT / 'benchmarks' / 'results' / 'pareto.csv')
    assert len(old) == 3 * 3 * 11 and {r['method'] for r in old} == {'pss', 'uniform', 'mutualnet'}
    first = [r for r in old if r['budget_mflops'] == min(o['budget_mflops'] for o in old)]
    assert len(first) == 9 and all(r['is_min_subnet'] == 1 for r in first)
    assert all(r['is_min_subnet'] is None for r in old if r not in first)


def test_idx_subset_files_read_back_with_torchvision(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / 'x-images-idx3-ubyte').write_bytes(idx_bytes(images))
    (tmp_path / 'x-labels-idx1-ubyte').write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)))
    assert np.array_equal(read_idx(tmp_path / 'x-images-idx3-ubyte'), images)
    assert read_idx(tmp_path / 'x-labels-idx1-ubyte').tolist() == [0, 1, 2, 3, 4]


def test_methods_whose_options_train_pss_lacks_are_refused(monkeypatch, capsys):
    monkeypatch.setitem(protocol.METHODS, 'future', protocol.Method('future', ('--pss-no-such-option',)))
    monkeypatch.setitem(protocol.METHODS, 'badchoice', protocol.Method('bad', ('--pss-sampler', 'no-such-sampler')))
    reasons = protocol.unsupported_methods(['pss', 'uniform', 'mutualnet', 'future', 'badchoice'])
    assert set(reasons) == {'future', 'badchoice'} and '--pss-no-such-option' in reasons['future']
    with pytest.raises(SystemExit) as exit_info:
        pareto.parse_args(['--methods', 'pss', 'future'])
    assert exit_info.value.code == 2 and 'method future needs' in capsys.readouterr().err


def test_a_finished_run_is_reused_and_one_with_other_settings_refused(tmp_path, monkeypatch, capsys):
    args = pareto.parse_args(['--dataset', 'digits', '--methods', 'pss', 'uniform', '--output', str(tmp_path / 'runs'),
                              '--records', str(tmp_path / 'records')])
    run = tmp_path / 'runs' / 'pss-seed0'
    run.mkdir(parents=True)
    (run / 'results.json').write_text('{"entries": []}')
    cmd = protocol.run_command('pss', 0, args)
    (run / 'benchmark.json').write_text(json.dumps(dict(command=cmd, wall_s=60.0, cpu_s=55.0, resumed=False)))

    def no_training(*a, **k):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(runs.subprocess, 'Popen', no_training)
    folder, timing = runs.train('pss-seed0', cmd, args, None)
    # a run that finished in its run folder is copied into the records folder and read from there
    assert folder == tmp_path / 'records' / 'pss-seed0' and timing['reused'] and timing['wall_s'] == 60.0
    assert sorted(p.name for p in folder.iterdir()) == ['benchmark.json', 'results.json']
    # another machine (another run folder, the same records): reused, not trained
    args.output = tmp_path / 'elsewhere'
    assert runs.train('pss-seed0', cmd, args, None)[1]['reused']
    args.epochs += 1
    with pytest.raises(SystemExit) as exit_info:
        runs.train('pss-seed0', protocol.run_command('pss', 0, args), args, None)
    assert exit_info.value.code == 2 and 'other settings' in capsys.readouterr().err


def test_a_run_s_settings_leave_out_the_machine(tmp_path):
    """The data folder and the device are added when a run starts, not recorded: records match on any machine."""
    args = pareto.parse_args(['--methods', 'pss', 'standalone', '--output', str(tmp_path)])
    cmd = protocol.run_command('pss', 3, args)
    assert '--data-dir' not in cmd and '--device' not in cmd and cmd[-4:] == ['--seed', '3', '--epochs', '12']
    subnet = protocol.Subnet(16, (8,) * 14)
    assert protocol.run_command('standalone', 3, args, subnet)[-2:] == ['--subnet', subnet.to_json()]
    assert runs.machine_args(args, tmp_path) == ['--data-dir', str(tmp_path.resolve()), '--device', 'cpu']
    args.device, args.jobs = 'cuda', 4
    assert runs.machine_args(args, None)[:2] == ['--device', 'cuda'] and '--pin-mem' in runs.machine_args(args, None)
    assert args.records == ROOT / 'benchmarks' / 'results' / 'runs_fashion_mnist'


def test_standalone_needs_the_pss_reference_and_a_gpu_needs_cuda(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        pareto.parse_args(['--methods', 'uniform', 'standalone'])
    assert exit_info.value.code == 2 and 'add pss to --methods' in capsys.readouterr().err
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit):
        pareto.parse_args(['--device', 'cuda'])
    assert 'torch sees no CUDA device' in capsys.readouterr().err
    assert pareto.parse_args(['--methods', 'pss', 'uniform']).jobs >= 1


def test_time_left_uses_each_method_s_own_run_time():
    assert runs.time_left({}, ['pss'], 1) is None
    walls = {'pss': [600.0, 400.0], 'standalone': [300.0]}
    assert runs.time_left(walls, ['pss', 'standalone', 'usnet'], 1) == pytest.approx(500 + 300 + 1300 / 3)
    assert runs.time_left(walls, ['pss', 'pss'], 2) == pytest.approx(500)


def test_standalone_architectures_are_the_ends_and_the_middle_entries_pss_serves():
    space = protocol.space_of(protocol.PROTOCOLS['fashion-mnist'])
    budgets = protocol.evaluation_budgets(space, 8)
    indices = protocol.standalone_budget_indices(budgets)
    assert indices[0] == 0 and indices[-1] == len(budgets) - 1 and len(indices) == 4
    lo, hi = space.flops_span
    assert abs(budgets[indices[1]] - (lo + (hi - lo) / 3)) <= (hi - lo) / 8
    small, mid = protocol.Subnet(20, space.min_widths), protocol.Subnet(28, space.min_widths)
    entries = [dict(flops=lo, resolution=16, widths=' '.join(map(str, space.min_widths)), heldout_top1=60.0, top1=1.0),
               dict(flops=space.flops(small), resolution=20, widths=' '.join(map(str, small.widths)),
                    heldout_top1=50.0, top1=1.0),
               dict(flops=space.flops(mid), resolution=28, widths=' '.join(map(str, mid.widths)),
                    heldout_top1=70.0, top1=1.0)]
    assert entries[2]['flops'] < budgets[indices[1]]
    chosen = protocol.standalone_architectures(entries, budgets, space)
    assert list(chosen.values()) == [space.min_subnet(), mid, mid, space.max_subnet()]
    # where the table serves the min subnet, its largest entry within the budget is trained alone instead
    entries[2]['heldout_top1'] = 40.0
    assert list(protocol.standalone_architectures(entries, budgets, space).values())[1] == mid


def test_the_report_compares_supernets_with_models_trained_alone_and_gives_costs_and_diagnostics():
    rows = _rows([2.0, 3.0, 4.0], methods=('pss', 'standalone'))
    costs = {'pss': [dict(cpu_s=600.0, wall_s=600.0)] * 3,
             'standalone': [dict(cpu_s=300.0, wall_s=300.0, parts=dict(min=dict(cpu_s=100.0, wall_s=1.0),
                                                                        max=dict(cpu_s=200.0, wall_s=1.0)))] * 3}
    run = [dict(epoch='0', pool='mean', top_member_prob='0.4', effective_members='4.0', spearman_score_vs_fresh='0.1'),
           dict(epoch='1', pool='mean', top_member_prob='0.9', effective_members='1.5', spearman_score_vs_fresh='0.3')]
    text = report.report(rows, ['pss', 'standalone'], [0, 1, 2], 'test', costs=costs, diagnostics={'pss': [run] * 3})
    section = text.split('## Supernet − models trained alone')[1].split('## ')[0]
    half = 4.302653 / math.sqrt(3)
    assert f'+3.00 [{3 - half:+.2f}, {3 + half:+.2f}]' in section and '| PSS − trained alone' in section
    assert '2.00x the models trained alone' in text and 'min 100, max 200' in text
    assert '0.40 → 0.90' in text and '4.00 → 1.50' in text and '0.10 → 0.30' in text


def test_from_csv_re_reports_the_stored_digits_runs(tmp_path, capsys):
    assert pareto.main(['--dataset', 'digits', '--from-csv', str(ROOT / 'benchmarks' / 'results' / 'pareto.csv'),
                        '--results', str(tmp_path)]) == 0
    text = (tmp_path / 'pareto_digits.md').read_text()
    assert [p.name for p in tmp_path.iterdir()] == ['pareto_digits.md']
    assert 'PSS − uniform in-bucket' in text and 'PSS − MutualNet-style' in text and '| all ' in text
    assert '+3.95 [-5.32, +13.22]' in text  # AUC, PSS - uniform: the committed report's value
    assert text == (ROOT / 'benchmarks' / 'results' / 'pareto_digits.md').read_text()


def test_missing_fashion_mnist_files_name_the_package_and_leave_no_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pareto.main(['--quick', '--methods', 'pss', 'uniform', '--fashion-source', str(tmp_path / 'none'),
                     '--output', str(tmp_path / 'runs')])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and 'apt-get install -y dataset-fashion-mnist' in err[0]
    assert not (tmp_path / 'runs').exists()


def test_a_diverged_run_is_listed_and_left_out_of_its_pairs_only():
    rows = [r for r in _rows([2.0, 3.0, 4.0]) if not (r['method'] == 'uniform' and r['seed'] == 1)]
    why = 'epoch 0, step 20: training diverged: non-finite cross-entropy'
    text = report.report(rows, ['pss', 'uniform'], [0, 1, 2], 'test', {('uniform', 1): why})
    assert f'uniform in-bucket seed 1 diverged and has no accuracy: {why}' in text
    assert 'mean paired difference over 2 seeds' in text and '(n=2)' in text
    uniform_auc = [line for line in text.splitlines() if line.startswith('| AUC')][0]
    assert '(n=2)' in uniform_auc


def test_a_diverged_training_run_is_recorded_and_reused(tmp_path, monkeypatch):
    """train_pss.py stopping on a non-finite loss (exit 1, its one-line reason) is a result of that method and seed:
    recorded in benchmark.json and not trained again; any other failure stops the benchmark."""
    args = pareto.parse_args(['--dataset', 'digits', '--methods', 'pss', 'uniform', '--output', str(tmp_path),
                              '--records', str(tmp_path / 'records')])
    (tmp_path / 'pss-seed0.log').write_text('Train: 0 [0/84]\ntrain_pss.py: error: epoch 0, step 3: training '
                                            'diverged: non-finite cross-entropy (the max subnet: nan); lower the '
                                            'learning rate (--lr, --warmup-epochs)\n')

    class Exited:
        pid = 0

    def exited_with(code):
        def popen(cmd, **kwargs):  # train_pss.py claims its run folder, then stops
            (tmp_path / cmd[cmd.index('--experiment') + 1]).mkdir(exist_ok=True)
            return Exited()
        monkeypatch.setattr(runs.subprocess, 'Popen', popen)
        monkeypatch.setattr(runs.os, 'wait4', lambda pid, opts: (pid, code << 8, type('U', (), dict(
            ru_utime=1.0, ru_stime=0.0))()))

    exited_with(1)
    folder, timing = runs.train('pss-seed0', protocol.run_command('pss', 0, args), args, None)
    assert timing['diverged'].startswith('epoch 0, step 3: training diverged') and not timing['reused']
    assert json.loads((folder / 'benchmark.json').read_text())['diverged'] == timing['diverged']
    _, again = runs.train('pss-seed0', protocol.run_command('pss', 0, args), args, None)
    assert again['reused'] and again['diverged'] == timing['diverged']
    (tmp_path / 'uniform-seed0.log').write_text('Traceback ...\nRuntimeError: boom\n')
    with pytest.raises(RuntimeError, match='failed'):
        runs.train('uniform-seed0', protocol.run_command('uniform', 0, args), args, None)


def test_the_models_trained_alone_of_a_seed_count_as_one_run_with_their_times_summed():
    parts = {'min': dict(wall_s=10.0, cpu_s=8.0, reused=True), 'max': dict(wall_s=30.0, cpu_s=25.0, reused=False,
                                                                          diverged='epoch 1, step 2: training diverged')}
    total = runs.summed_timing(parts)
    assert (total['wall_s'], total['cpu_s'], total['reused']) == (40.0, 33.0, False)
    assert total['parts']['max'] == dict(cpu_s=25.0, wall_s=30.0) and total['diverged'].startswith('max: epoch 1')
    assert 'diverged' not in runs.summed_timing({'min': parts['min']})
