"""Smoke tests: each benchmark runs end to end with tiny settings and its correctness checks pass."""
import subprocess
import sys
from pathlib import Path
from support import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), *args],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_bench_models_quick():
    out = _run('bench_models.py', '--quick', '--models', 'pss_mobilenetv2')
    assert 'flops_many subnets/s' in out and 'supernet/dense' in out
    assert '| pss_mobilenetv2 |' in out


def test_bench_budget_quick():
    out = _run('bench_budget.py', '--quick', '--models', 'pss_mobilenetv2')
    assert 'set_budget' in out and 'speed-up' in out
    assert '| pss_mobilenetv2 |' in out


def test_bench_pss_quick():
    out = _run('bench_pss.py', '--quick')
    assert 'buckets reached' in out and '47/47' in out and 'PSS/uniform' in out


def test_speed_quick():
    out = _run('speed.py', '--quick', '--models', 'pss_mobilenetv2')
    for header in ('flops_many subnets/s', 'buckets reached', '47/47', 'PSS/uniform', 'set_budget',
                   'supernet/dense', 'exported/dense', 'FLOPs / max', 'latency / max', 'speed-up vs max',
                   '## Summary', 'exported / dense at 25/50/100%', 'latency / max at 25% FLOPs'):
        assert header in out, header
    assert '| pss_mobilenetv2 |' in out and 'Correctness checks: all passed.' in out


def test_pareto_quick(tmp_path):
    out = _run('pareto.py', '--quick', '--output', str(tmp_path))
    assert 'AUC (mean top-1)' in out and 'PSS − uniform in-bucket' in out and 'US-Net global width' in out
    rows = (tmp_path / 'pareto.csv').read_text().splitlines()
    assert rows[0] == 'method,seed,budget_flops,top1' and any(r.startswith('prioritized,mean,') for r in rows)
    assert (tmp_path / 'pareto.png').stat().st_size > 10_000


def test_bench_latency_quick(tmp_path):
    out = _run('latency.py', '--quick', '--models', 'pss_mobilenetv2', '--save-dir', str(tmp_path))
    assert 'LUT tau' in out and 'FLOPs tau' in out and 'LUT MAPE' in out
    assert '| pss_mobilenetv2 |' in out
    from timm_pss.latency import LatencyTable
    (path,) = tmp_path.glob('pss_mobilenetv2_cpu_1t_b1.json')
    assert LatencyTable.load(path).model == 'pss_mobilenetv2'
