"""Smoke tests: each benchmark runs end to end with tiny settings and its correctness checks pass."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
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
