"""Percentiles, summaries, JSON round trip, tables, and the /proc CPU reader."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time

import pytest

from acme_ca.bench.report import (
    LatencySummary,
    LevelResult,
    Recorder,
    percentile,
    render_comparison,
    render_levels,
    write_plot,
)
from acme_ca.bench.runner import process_tree_cpu_seconds


def test_percentile_interpolates_linearly() -> None:
    # numpy.percentile's default ("linear") gives these values.
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0


def test_percentile_of_nothing_is_nan_and_q_is_bounded() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_recorder_ignores_requests_outside_the_timed_section() -> None:
    rec = Recorder()
    rec.on_request("newAccount", 0.5, 201)
    rec.active = True
    rec.on_request("newOrder", 0.01, 201)
    rec.on_request("newOrder", 0.02, 400)
    rec.on_request("authz", 0.03, 0)
    assert rec.request_count == 3
    assert "newAccount" not in rec.requests
    assert rec.request_errors == {"newOrder": 1, "authz": 1}


def _result(concurrency: int, issued: int, elapsed: float, stop: str = "count") -> LevelResult:
    rec = Recorder()
    rec.active = True
    for i in range(issued):
        rec.issued(0.010 + i * 0.001)
        rec.on_request("newOrder", 0.001, 201)
    rec.failed("urn:ietf:params:acme:error:rateLimited")
    return LevelResult.build(
        concurrency=concurrency,
        recorder=rec,
        elapsed=elapsed,
        stop_reason=stop,
        server_cpu_seconds=0.5,
        client_cpu_seconds=0.25,
    )


def test_level_result_rates_and_json_round_trip() -> None:
    result = _result(4, 10, 2.0)
    assert result.issuances_per_second == 5.0
    assert result.requests_per_second == 5.0
    assert result.server_cpu_per_issuance == 0.05
    assert result.errors == {"urn:ietf:params:acme:error:rateLimited": 1}
    again = LevelResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()


def test_empty_latency_summary_serialises_as_nulls() -> None:
    doc = LatencySummary.of([]).to_json()
    assert doc == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    assert math.isnan(LatencySummary.from_json(doc).p99)


def test_tables_show_rates_ratios_and_stalls() -> None:
    base = [_result(1, 10, 1.0), _result(4, 10, 1.0, "stall")]
    other = [_result(1, 20, 1.0)]
    levels = render_levels(base)
    assert "10.00" in levels
    assert "stall" in levels
    assert "rateLimited x1" in levels
    table = render_comparison({"pebble": base, "acme-ca": other})
    row1, row4 = table.splitlines()[2:]
    assert row1.split()[0] == "1"
    assert row1.endswith("2.00x")
    assert "(stall)" in row4
    assert row4.endswith("-")  # no acme-ca result at 4


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="it is installed")
def test_plot_without_matplotlib_says_so() -> None:
    assert "matplotlib is not installed" in (write_plot({}, "/nonexistent/x.png") or "")


def test_cpu_of_a_process_tree_includes_live_children() -> None:
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen(  # a parent whose child burns CPU, then both wait
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {busy!r}]); "
            "time.sleep(30)",
        ],
    )
    try:
        deadline = time.monotonic() + 10
        seconds = 0.0
        while time.monotonic() < deadline and seconds < 0.3:
            time.sleep(0.05)
            seconds = process_tree_cpu_seconds(parent.pid)
        assert seconds >= 0.3
    finally:
        parent.kill()
        parent.wait(timeout=5)


def test_cpu_of_a_missing_process_is_an_error() -> None:
    with pytest.raises(ProcessLookupError):
        process_tree_cpu_seconds(2**22 + 12345)
    assert process_tree_cpu_seconds(os.getpid()) > 0
