"""Run-time adaptation (timm_pss.adapt): the controller's decisions on a fake clock, the server on a real supernet
(driven by a fake clock that advances by scripted latencies), bad input, threads sharing one model, reports."""
import math
import threading

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from timm_pss.adapt import (AdaptiveServer, ControlSettings, EntryInfo, LatencyController, LatencyTarget,
                            SupernetEntries, ladder, measure_latency, serving_report, start_rung, window_percentile)
from timm_pss.budget_table import LATENCY_METRIC

TINY = dict(num_classes=10, resolution_range=(16, 24, 8))
PREDICTED_MS = [2.0, 4.0, 6.0, 8.0]
TOP1 = [60.0, 70.0, 75.0, 80.0]


@pytest.fixture(scope='module')
def model(digits):
    """A tiny pss_mobilenetv1 with a 4-entry budget table calibrated on real digits images, its validation top-1
    and predicted latencies given (the controller reads them; what they are is up to the test)."""
    torch.manual_seed(0)
    net = timm.create_model('pss_mobilenetv1', **TINY).eval()
    images = F.interpolate(digits[0][:64], size=24, mode='bilinear', align_corners=False)
    loader = DataLoader(TensorDataset(images, digits[1][:64]), batch_size=32)
    space = net.space
    subnets = [space.min_subnet(), space.sample(rng=3, flops_range=(3e6, 5e6)),
               space.sample(rng=4, flops_range=(5e6, 8e6)), space.max_subnet()]
    timm_pss.fill_budget_table(net, subnets, loader, num_batches=1)
    net.set_table_metrics([{'top1': a, LATENCY_METRIC: ms} for a, ms in zip(TOP1, PREDICTED_MS)],
                      info={'latency_device': 'cpu'})
    return net


class FakeClock:
    """Seconds that move only when told: `advance(ms)`; thread-safe."""

    def __init__(self):
        self.now, self.lock = 0.0, threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, ms: float) -> None:
        with self.lock:
            self.now += ms / 1e3


def drive(controller, latencies, start_s=0.0, step_s=0.001):
    """Feed latencies one call at a time; the (call number, new rung) of every switch."""
    switches = []
    for n, ms in enumerate(latencies, 1):
        rung = controller.observe(ms, start_s + n * step_s)
        if rung is not None:
            switches.append((n, rung))
    return switches


# ---------------------------------------------------------------------------------------------- decision logic

def test_steps_down_when_the_window_misses_and_lands_where_the_estimate_fits():
    settings = ControlSettings(window=50, dwell_calls=20)
    c = LatencyController([1, 2, 4], LatencyTarget(ms=10), settings, start=2)
    # p95 10.5 ms at rung 2 (one call in ten over): rung 1's estimate 5.25 ms fits (1 - 0.2) * 10, so one rung
    # down, at the end of the dwell
    assert drive(c, ([9.0] * 9 + [15.0]) * 2) == [(20, 1)]
    c = LatencyController([1, 2, 4], LatencyTarget(ms=10), settings, start=2)
    # far over: straight to the rung whose estimate fits (or the fastest); and a window that already holds more
    # misses than a full one may (2 of 50 for p95) steps down at once, before the dwell is over
    assert drive(c, [40.0] * 20) == [(3, 0)]
    c = LatencyController([1, 2, 4], LatencyTarget(ms=10), settings, start=2)
    assert drive(c, [15.0] * 3) == [(3, 1)]


def test_steps_up_only_with_headroom_one_rung_at_a_time():
    c = LatencyController([1, 2, 4], LatencyTarget(ms=10), ControlSettings(dwell_calls=20), start=0)
    assert drive(c, [3.0] * 20) == [(20, 1)]  # rung 1's estimate 6 ms <= 8 ms
    assert drive(c, [6.0] * 500) == []  # rung 2's estimate 12 ms > 8 ms: stays, and is not over the target
    assert c.rung == 1


def test_hysteresis_band_holds_still():
    c = LatencyController([1, 1.1, 4], LatencyTarget(ms=10), ControlSettings(dwell_calls=20), start=1)
    # 9 ms: under the target (no step down), but rung 2's estimate is over the headroom limit (no step up)
    assert drive(c, [9.0] * 2000) == []


def test_noisy_timings_do_not_make_it_oscillate():
    rng, calls = np.random.default_rng(0), 10000
    target, settings = LatencyTarget(ms=10, percentile=95), ControlSettings()
    # rung 1 serves ~5 ms with heavy-tailed noise (its p95 well under 10 ms), rung 2 ~2x that: never tried
    c = LatencyController([1, 2, 4], target, settings, start=1)
    assert drive(c, 5.0 * rng.lognormal(0, 0.25, calls)) == []
    # a rung whose cost ratio says it fits but whose calls then miss: tried again ever more rarely (doubling bar)

    def switches(settings):
        c, n_switches = LatencyController([1, 1.2, 4], target, settings, start=0), 0
        for n in range(1, calls + 1):
            n_switches += c.observe((5.0 if c.rung == 0 else 12.0) * rng.lognormal(0, 0.1), n * 1e-3) is not None
        return n_switches
    backing_off = switches(settings)
    assert 2 <= backing_off <= 2 * (2 + math.ceil(math.log2(settings.max_backoff_calls / settings.backoff_calls))
                                    + calls // settings.max_backoff_calls)
    # without the backoff it would retry after every dwell: many times more switches
    assert switches(ControlSettings(backoff_calls=1, max_backoff_calls=1)) > 10 * backing_off


def test_minimum_dwell_in_calls_and_seconds():
    c = LatencyController([1, 2], LatencyTarget(ms=10), ControlSettings(dwell_calls=5, dwell_s=1.0), start=0)
    # calls 1 ms apart with ample headroom: no step up before a second has passed since the start
    assert drive(c, [1.0] * 999, step_s=0.001) == []
    assert c.observe(1.0, 1.0) == 1
    c = LatencyController([1, 2], LatencyTarget(ms=10), ControlSettings(dwell_calls=5), start=0)
    assert drive(c, [1.0] * 5) == [(5, 1)]  # and none before dwell_calls calls


def test_starts_from_the_predicted_latency():
    target = LatencyTarget(ms=10)
    assert start_rung([2.0, 5.0, 9.0], target, headroom=0.2) == 1  # the highest within 8 ms
    assert start_rung([2.0, 5.0, 9.0], target, headroom=0.0) == 2
    assert start_rung([9.5, 12.0], target, headroom=0.2) == 0  # none within the headroom: the fastest
    assert start_rung([], target, headroom=0.2) == 0 and start_rung([3.0, None], target, headroom=0.2) == 0
    with pytest.raises(ValueError, match='latency target 1 ms is below the fastest entry.s latency \\(2 ms'):
        start_rung([2.0, 5.0], LatencyTarget(ms=1), headroom=0.2)


def test_window_percentile_and_ladder():
    assert window_percentile([1, 2, 3, 4], 50) == 2.5
    with pytest.raises(ValueError, match='latency window is empty'):
        window_percentile([], 95)
    infos = [EntryInfo('a', flops=1, accuracy=50), EntryInfo('b', flops=3, accuracy=49),  # b: slower, less accurate
             EntryInfo('c', flops=2, accuracy=60), EntryInfo('d', flops=4, accuracy=70)]
    assert ladder(infos) == [0, 2, 3]
    assert ladder(infos, latency_ms=[1.0, 0.5, 3.0, 4.0]) == [1, 0, 2, 3]  # measured speed orders it
    assert ladder([EntryInfo('a', flops=2), EntryInfo('b', flops=1)]) == [1, 0]  # no accuracies: all, by FLOPs
    # held-out accuracy (selection) decides which entries stay, not the validation accuracy that is reported
    held_out = [EntryInfo('a', flops=1, accuracy=50, selection=60), EntryInfo('b', flops=2, accuracy=55, selection=59),
                EntryInfo('c', flops=3, accuracy=54, selection=61)]
    assert ladder(held_out) == [0, 2]


@pytest.mark.parametrize('make, match', [
    (lambda: LatencyTarget(ms=0), 'latency target .ms. must be a finite number > 0'),
    (lambda: LatencyTarget(ms=5, percentile=0), 'percentile must be a number in \\(0, 100\\]'),
    (lambda: LatencyTarget(ms=5, deadline_ms=float('nan')), 'deadline_ms must be'),
    (lambda: ControlSettings(window=10, dwell_calls=20), 'dwell_calls \\(20\\) must be at most window \\(10\\)'),
    (lambda: ControlSettings(headroom=1.0), 'headroom must be a number in \\[0, 1\\)'),
    (lambda: ControlSettings(window=0), 'window must be an int > 0'),
    (lambda: LatencyController([], LatencyTarget(ms=5)), 'at least one entry'),
    (lambda: LatencyController([2, 1], LatencyTarget(ms=5)), 'ascending'),
])
def test_bad_settings_are_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------------------------------------- server, real model

def scripted_server(model, target_ms, load, settings=ControlSettings(window=20, dwell_calls=10, backoff_calls=50)):
    """A server on `model` whose fake clock advances, on every forward, by the active entry's predicted latency
    times `load[0]` (a one-item list the test changes)."""
    clock = FakeClock()
    handle = model.register_forward_hook(
        lambda m, i, o: clock.advance(PREDICTED_MS[m.active_budget_index] * load[0]))
    server = AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=target_ms), settings, clock=clock)
    return server, handle


def test_server_follows_the_load_on_a_real_model(model):
    load = [1.0]
    server, handle = scripted_server(model, target_ms=7.0, load=load)
    try:
        assert server.entry == 1  # predicted 4 ms: the highest within (1 - 0.2) * 7 ms
        x = torch.randn(1, 3, 24, 24)
        phases = [(1.0, 60), (3.0, 150), (1.0, 100)]
        served = []
        for factor, calls in phases:
            load[0] = factor
            served.append([server.serve(lambda r: F.interpolate(x, size=r)) for _ in range(calls)])
    finally:
        handle.remove()
    idle, busy, idle_again = served
    assert {c.entry for c in idle} == {1}
    assert busy[-1].entry == 0  # 3x load: 12 ms at entry 1 is over; entry 0 runs 6 ms
    assert all(c.latency_ms <= 7.0 for c in busy[50:])
    assert idle_again[-1].entry == 1  # back up once the bar is over; entry 2 (6 ms) is never within 5.6 ms
    report = server.report()
    entries = [c.entry for phase in served for c in phase]
    latencies = [c.latency_ms for phase in served for c in phase]
    assert report.calls == 310 and report.switches == sum(c.switched_to is not None for p in served for c in p) >= 2
    assert report.mean_accuracy == pytest.approx(np.mean([TOP1[e] for e in entries]))
    assert report.miss_rate == pytest.approx(np.mean(np.array(latencies) > 7.0))
    assert report.p99_ms == pytest.approx(np.percentile(latencies, 99))
    assert report.calls_per_entry == {'#0': entries.count(0), '#1': entries.count(1)}
    assert report.seconds_per_entry['#0'] == pytest.approx(sum(l for l, e in zip(latencies, entries) if e == 0) / 1e3)
    assert 'mean served accuracy' in str(report) and model.active_budget_index == server.entry


def test_served_output_is_the_entry_s_own_and_the_input_matches_its_resolution(model):
    server = AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=1000))
    assert server.entry == 3 and server.resolution == model.budget_table[3].subnet.resolution
    x = torch.randn(1, 3, 24, 24)
    seen = []
    model.set_budget_entry(0)  # someone else switches the shared model: the next call goes back to entry 3
    call = server.serve(lambda r: seen.append(r) or x)
    assert seen == [24] and call.entry == 3 and model.active_budget_index == 3
    model.set_budget_entry(3)
    with torch.no_grad():
        torch.testing.assert_close(call.output, model(x), rtol=0, atol=0)


def test_unreachable_load_warns_once_and_keeps_the_fastest(model):
    load = [10.0]
    server, handle = scripted_server(model, target_ms=7.0, load=load)
    try:
        with pytest.warns(RuntimeWarning, match='missed on the fastest entry'):
            for _ in range(100):
                server(torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert server.entry == 0 and server.report().miss_rate > 0.5


def test_bad_input(model):
    with pytest.raises(RuntimeError, match='no budget table to adapt over'):
        SupernetEntries(timm.create_model('pss_mobilenetv1', **TINY))
    with pytest.raises(ValueError, match='latency target 1 ms is below the fastest entry.s latency \\(2 ms'):
        AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=1))
    with pytest.raises(ValueError, match='latency target 0.5 ms is below the fastest entry.s latency \\(3 ms'):
        AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=0.5), latency_ms=[3.0, 4.0, 5.0, 6.0])
    with pytest.raises(ValueError, match='one positive finite latency per entry \\(4\\)'):
        AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=5), latency_ms=[3.0])
    with pytest.raises(TypeError, match='LatencyTarget'):
        AdaptiveServer(SupernetEntries(model), 20)
    server = AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=100))
    with pytest.raises(ValueError, match='no calls served yet'):
        server.report()
    with pytest.raises(ValueError, match='no calls served yet'):
        serving_report([], [], server.infos, 10.0)
    elsewhere = timm.create_model('pss_mobilenetv1', **TINY)
    elsewhere.load_state_dict(model.state_dict())
    elsewhere.set_table_metrics([{} for _ in range(4)], info={'latency_device': 'cuda:0'})
    with pytest.raises(ValueError, match='predicted for cuda:0, the model is on cpu'):
        SupernetEntries(elsewhere)


def test_measured_latency_orders_and_starts_the_ladder(model):
    entries = SupernetEntries(model)
    measured = measure_latency(entries, repeats=2, warmup=1)
    assert len(measured) == 4 and all(v > 0 for v in measured)
    server = AdaptiveServer(entries, LatencyTarget(ms=max(measured) * 10), latency_ms=measured)
    assert [server.infos[i].latency_ms for i in range(4)] == measured
    assert server.entry == 3  # every measured latency is within the headroom: the most accurate


@pytest.mark.filterwarnings('ignore:latency target .* missed on the fastest entry')
def test_threads_sharing_one_model_each_run_on_the_entry_chosen_for_them(model):
    """Several threads, one model: the fake clock swings between slow and fast forwards so the controller switches
    while calls come in; every call's output must equal a direct call of its input on the entry it reports."""
    clock, forwards = FakeClock(), [0]

    def advance(module, args, output):
        forwards[0] += 1
        clock.advance(30.0 if (forwards[0] // 40) % 2 == 0 else 0.2)
    handle = model.register_forward_hook(advance)
    settings = ControlSettings(window=6, dwell_calls=3, backoff_calls=3, max_backoff_calls=3)
    server = AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=10), settings, clock=clock)
    inputs = torch.randn(4, 20, 1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    results = [[] for _ in range(4)]

    def client(t):
        for x in inputs[t]:
            results[t].append((x, server.serve(x)))
    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        handle.remove()
    calls = [r for per_thread in results for r in per_thread]
    assert len(calls) == 80 and server.report().switches >= 2 and len({c.entry for _, c in calls}) >= 2
    with torch.no_grad():
        for x, call in calls:
            model.set_budget_entry(call.entry)
            torch.testing.assert_close(call.output, model(x), rtol=0, atol=0)


def test_benchmark_quick_runs_end_to_end(model, tmp_path, capsys):
    """benchmarks/adapt.py's main on a saved run folder with its smoke-test settings: the report and the plot; an
    existing --output is refused before any work."""
    from timm.models import save_for_hf

    from support import import_benchmark
    run = tmp_path / 'run'
    save_for_hf(model, str(run), model_args=TINY, safe_serialization=True)
    out, png = tmp_path / 'adapt.txt', tmp_path / 'adapt.png'
    bench = import_benchmark('adapt')
    threads = torch.get_num_threads()
    try:
        assert bench.main([str(run), '--quick', '--requests', '5', '--output', str(out), '--plot', str(png),
                           '--target-ms', '1000']) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert '| adaptive |' in text and '| fixed #3 |' in text and 'Goal (not checked with --quick)' in text
    assert png.stat().st_size > 0
    with pytest.raises(SystemExit):
        bench.parse_args([str(run), '--output', str(out)])
    assert 'exists; choose another path or pass --force' in capsys.readouterr().err
    try:
        assert bench.main([str(run), '--quick', '--target-ms', '0.001']) == 2
    finally:
        torch.set_num_threads(threads)
    assert 'latency target 0.001 ms is below the fastest entry' in capsys.readouterr().err
