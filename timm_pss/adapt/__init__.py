"""Run-time adaptation: hold a latency target while the machine's load changes, by switching between the entries
of a budget table (or the exported entries of `python -m timm_pss.export`, `ExportedEntries`) as measured latency
allows.

    server = AdaptiveServer(SupernetEntries(model), LatencyTarget(ms=20, percentile=95))
    y = server(x)            # runs on the entry the controller picked, timed
    print(server.report())   # p50 / p95 / p99, miss rate, switches, time per entry, mean served accuracy

Modules: `policy` (the pure decision logic: target, settings, `LatencyController`), `entries` (the interface the
controller switches between, the supernet implementation, the ladder, measuring), `server` (timing, switching,
locking, reports). docs/adaptation.md is the user guide.
"""
from .entries import (
    ACCURACY_METRIC, EntryInfo, ExportedEntries, ServingEntries, SupernetEntries, ladder, measure_latency,
)
from .policy import ControlSettings, LatencyController, LatencyTarget, start_rung, window_percentile
from .server import AdaptiveServer, AdaptReport, ServedCall, serving_report

__all__ = ['ACCURACY_METRIC', 'AdaptiveServer', 'AdaptReport', 'ControlSettings', 'EntryInfo', 'ExportedEntries',
           'LatencyController',
           'LatencyTarget', 'ServedCall', 'ServingEntries', 'SupernetEntries', 'ladder', 'measure_latency',
           'serving_report', 'start_rung', 'window_percentile']
