"""Smoke tests: each benchmark runs end to end with tiny settings and its correctness checks pass.

bench_models, bench_budget, bench_pss and speed run in this process through their `main(argv)` (what their command
line calls), which saves a Python and torch start-up each; latency.py (it sets its process's allocator) and pareto.py
(it starts train_pss.py runs) run as the command lines they are."""
import subprocess
import sys
from pathlib import Path

import torch

from support import SUBPROCESS_TIMEOUT, import_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    """Run a benchmark script in a child process; returns its stdout (asserting exit 0)."""
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), *args],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _main(name, capsys, *args):
    """Run benchmarks/`name`.py's main(args) here; returns what it printed (asserting exit status 0)."""
    threads = torch.get_num_threads()
    try:
        status = import_benchmark(name).main(list(args))
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert status == 0, out[-2000:] + err[-2000:]
    return out


def test_quick_caps_every_listed_option_and_nothing_else():
    bench_pss = import_benchmark('bench_pss')
    full = bench_pss.parse_args(['--baseline-sizes', '50', '500000', '--per-bucket', '100'])
    assert full.baseline_sizes == [50, 500_000] and full.per_bucket == 100 and full.steps == 20
    quick = bench_pss.parse_args(['--quick', '--baseline-sizes', '50', '500000', '--per-bucket', '100'])
    assert quick.baseline_sizes == [50, 100_000] and quick.per_bucket == 100 and quick.steps == 3
    assert quick.progress == full.progress and quick.image_size == 32


def test_run_parts_reports_every_part_and_fails_if_any_check_failed(capsys):
    harness = import_benchmark('harness')
    threads = torch.get_num_threads()
    reported = []

    def report(ok):
        return lambda results: reported.append(results) or ok

    try:
        status = harness.run_parts(['a', 'b'], [(1, str.upper, report(False)), (None, len, report(True))],
                                   'FAILED: part one says NO.')
        assert status == 1 and reported == [['A', 'B'], [1, 1]]
        assert capsys.readouterr().err == 'FAILED: part one says NO.\n' and torch.get_num_threads() == 1
        assert harness.run_parts(['a'], [(None, len, report(True))], 'FAILED') == 0
        assert capsys.readouterr().err == ''
    finally:
        torch.set_num_threads(threads)


def test_bench_models_quick(capsys):
    out = _main('bench_models', capsys, '--quick', '--models', 'pss_mobilenetv2')
    assert 'flops_many subnets/s' in out and 'supernet/dense' in out
    assert '| pss_mobilenetv2 |' in out


def test_bench_budget_quick(capsys):
    out = _main('bench_budget', capsys, '--quick', '--models', 'pss_mobilenetv2')
    assert 'set_budget' in out and 'speed-up' in out
    assert '| pss_mobilenetv2 |' in out


def test_bench_pss_quick(capsys):
    out = _main('bench_pss', capsys, '--quick')
    assert 'buckets reached' in out and '47/47' in out and 'PSS/uniform' in out


def test_speed_quick(capsys):
    out = _main('speed', capsys, '--quick', '--models', 'pss_mobilenetv2')
    for header in ('flops_many subnets/s', 'buckets reached', '47/47', 'PSS/uniform', 'set_budget',
                   'supernet/dense', 'exported/dense', 'FLOPs / max', 'latency / max', 'speed-up vs max',
                   '## Summary', 'exported / dense at 25/50/100%', 'latency / max at 25% FLOPs',
                   'leaf cuts/dense, per round', '95% interval of the median',
                   'supernet/slicing views, per round: median [95% interval]', 'loss and grads equal'):
        assert header in out, header
    assert '| pss_mobilenetv2 |' in out and 'Correctness checks: all passed.' in out


def test_pareto_quick_on_fashion_mnist_resumes_and_reports(tmp_path):
    """The Fashion-MNIST harness end to end on tiny IDX files, PSS and the models trained alone: runs, records, csv,
    plot, report; a re-run on another machine (a new run folder, the same records) trains nothing."""
    from support import write_fashion_mnist_gz
    source = write_fashion_mnist_gz(tmp_path / 'src', num_train=192, num_test=256)
    args = ['--dataset', 'fashion-mnist', '--quick', '--methods', 'pss', 'standalone', '--fashion-source', str(source),
            '--records', str(tmp_path / 'records'), '--jobs', '1']
    out = _run('pareto.py', *args, '--output', str(tmp_path / 'runs'))
    assert '[4/4 runs done' in out and 'PSS − trained alone' in out and 'AUC (mean top-1)' in out
    assert '## Supernet − models trained alone' in out and 'x the models trained alone' in out
    rows = (tmp_path / 'runs' / 'pareto_fashion_mnist.csv').read_text().splitlines()
    assert rows[0] == 'method,seed,budget_mflops,entry_mflops,top1,is_min_subnet'
    assert len(rows) == 1 + 2 * 2 * 4  # methods x seeds x (min subnet + 3 pools' edges)
    first = rows[1].split(',')
    assert first[:2] == ['pss', '0'] and first[2] == first[3] and first[5] == '1'  # the min budget: the min subnet
    assert '| all ' in (tmp_path / 'runs' / 'pareto_fashion_mnist.md').read_text()
    assert (tmp_path / 'runs' / 'pareto_fashion_mnist.png').read_bytes()[:4] == b'\x89PNG'
    records = sorted(p.name for p in (tmp_path / 'records').iterdir())
    assert 'pss-seed1' in records and 'standalone-min-seed0' in records and len(records) == 2 + 2 * 4
    assert sorted(p.name for p in (tmp_path / 'records' / 'pss-seed0').iterdir()) == [
        'benchmark.json', 'pss_diagnostics.csv', 'results.json']
    again = _run('pareto.py', *args, '--output', str(tmp_path / 'elsewhere'))
    assert again.count(': reused;') == 4 and _report(again) == _report(out)
    reported = _run('pareto.py', *args, '--output', str(tmp_path / 'elsewhere'), '--report-only')
    assert 'seeds every method finished: [0, 1]' in reported and _report(reported) == _report(out)


def _report(out):
    """The report sections of pareto.py's output, without the line naming where it wrote them."""
    return [line for line in out.split('\n## ', 1)[1].splitlines() if not line.startswith('- wrote ')]


def test_standalone_refuses_an_architecture_outside_the_space(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'standalone.py'), '--subnet',
                           '{"resolution": 30, "widths": [8]}', '--epochs', '1', '--output', str(tmp_path),
                           '--experiment', 'x'], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith('standalone.py: error: --subnet') and 'give max, min' in last
    assert not (tmp_path / 'x').exists()


def test_bench_latency_quick(tmp_path):
    out = _run('latency.py', '--quick', '--models', 'pss_mobilenetv2', '--save-dir', str(tmp_path))
    assert 'LUT tau' in out and 'FLOPs tau' in out and 'LUT MAPE' in out and 'within +-10%' in out
    assert '### Where the error comes from' in out and 'sum-of-segments MAPE' in out and 'repeat tau' in out
    assert "### The machine's speed" in out and 'drift during the build' in out and 'rescaled within +-10%' in out
    assert '| pss_mobilenetv2 |' in out
    from timm_pss.latency import LatencyTable
    (path,) = tmp_path.glob('pss_mobilenetv2_cpu_1t_b1.json')
    assert LatencyTable.load(path).model == 'pss_mobilenetv2'


def test_deploy_quick(trained_run, capsys):
    run, _ = trained_run
    assert import_benchmark('deploy').main([str(run), '--quick']) == 0
    out = capsys.readouterr().out
    assert 'ort int8 (ms)' in out and 'int8 / eager' in out and out.count('| 00_') == 2
