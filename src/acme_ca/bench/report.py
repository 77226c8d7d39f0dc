"""Benchmark measurements: recording samples, summarising them, rendering tables and plots.

Pure bookkeeping and formatting: no network, no event loop. The runner feeds a
`Recorder`; `LevelResult` is the frozen summary of one concurrency level, and it
round-trips through JSON so that `compare` can put two servers side by side.
"""

from __future__ import annotations

import collections
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EndpointSummary",
    "LatencySummary",
    "LevelResult",
    "Recorder",
    "percentile",
    "render_comparison",
    "render_endpoints",
    "render_levels",
    "write_plot",
]


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    The same definition as numpy's default ("linear"); NaN for no samples.
    """
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySummary:
    """Seconds; NaN where there were no samples."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencySummary:
        return cls(
            count=len(samples),
            mean=sum(samples) / len(samples) if samples else math.nan,
            p50=percentile(samples, 50),
            p95=percentile(samples, 95),
            p99=percentile(samples, 99),
            max=max(samples) if samples else math.nan,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": _num(self.mean),
            "p50": _num(self.p50),
            "p95": _num(self.p95),
            "p99": _num(self.p99),
            "max": _num(self.max),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LatencySummary:
        return cls(
            count=int(doc["count"]),
            **{k: _float(doc.get(k)) for k in ("mean", "p50", "p95", "p99", "max")},
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSummary:
    latency: LatencySummary
    errors: int  # answers with status >= 400, and requests that got no answer

    def to_json(self) -> dict[str, Any]:
        return {**self.latency.to_json(), "errors": self.errors}


class Recorder:
    """Collects samples of one timed section. Only records while `active`."""

    def __init__(self) -> None:
        self.active = False
        self.requests: dict[str, list[float]] = collections.defaultdict(list)
        self.request_errors: collections.Counter[str] = collections.Counter()
        self.issuances: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def on_request(self, endpoint: str, seconds: float, status: int) -> None:
        if not self.active:
            return
        self.requests[endpoint].append(seconds)
        if status == 0 or status >= 400:
            self.request_errors[endpoint] += 1

    def issued(self, seconds: float) -> None:
        self.issuances.append(seconds)

    def failed(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def completed(self) -> int:
        return len(self.issuances) + self.errors.total()

    @property
    def request_count(self) -> int:
        return sum(len(v) for v in self.requests.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelResult:
    """One concurrency level. `elapsed` ends at the last completed flow when the
    count was reached or the server stalled, so rates are those before a stall."""

    concurrency: int
    issued: int
    failed: int
    elapsed: float
    requests: int
    issuance_latency: LatencySummary
    endpoints: Mapping[str, EndpointSummary]
    errors: Mapping[str, int]
    stop_reason: str  # "count" | "duration" | "stall" | "setup"
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float | None = None

    @property
    def issuances_per_second(self) -> float:
        return self.issued / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def server_cpu_per_issuance(self) -> float | None:
        if self.server_cpu_seconds is None or self.issued == 0:
            return None
        return self.server_cpu_seconds / self.issued

    @property
    def stalled(self) -> bool:
        return self.stop_reason == "stall"

    @classmethod
    def build(
        cls,
        *,
        concurrency: int,
        recorder: Recorder,
        elapsed: float,
        stop_reason: str,
        server_cpu_seconds: float | None = None,
        client_cpu_seconds: float | None = None,
    ) -> LevelResult:
        return cls(
            concurrency=concurrency,
            issued=len(recorder.issuances),
            failed=recorder.errors.total(),
            elapsed=elapsed,
            requests=recorder.request_count,
            issuance_latency=LatencySummary.of(recorder.issuances),
            endpoints={
                name: EndpointSummary(
                    latency=LatencySummary.of(samples), errors=recorder.request_errors[name]
                )
                for name, samples in sorted(recorder.requests.items())
            },
            errors=dict(recorder.errors.most_common()),
            stop_reason=stop_reason,
            server_cpu_seconds=server_cpu_seconds,
            client_cpu_seconds=client_cpu_seconds,
        )

    def to_json(self) -> dict[str, Any]:
        per_iss = self.server_cpu_per_issuance
        return {
            "concurrency": self.concurrency,
            "issued": self.issued,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed, 6),
            "issuances_per_s": round(self.issuances_per_second, 3),
            "requests": self.requests,
            "requests_per_s": round(self.requests_per_second, 3),
            "issuance_latency_s": self.issuance_latency.to_json(),
            "endpoints": {k: v.to_json() for k, v in self.endpoints.items()},
            "errors": dict(self.errors),
            "stop_reason": self.stop_reason,
            "stalled": self.stalled,
            "server_cpu_s": self.server_cpu_seconds,
            "server_cpu_s_per_issuance": None if per_iss is None else round(per_iss, 6),
            "client_cpu_s": self.client_cpu_seconds,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LevelResult:
        endpoints = {
            name: EndpointSummary(latency=LatencySummary.from_json(v), errors=int(v["errors"]))
            for name, v in doc["endpoints"].items()
        }
        return cls(
            concurrency=int(doc["concurrency"]),
            issued=int(doc["issued"]),
            failed=int(doc["failed"]),
            elapsed=float(doc["elapsed_s"]),
            requests=int(doc["requests"]),
            issuance_latency=LatencySummary.from_json(doc["issuance_latency_s"]),
            endpoints=endpoints,
            errors={str(k): int(v) for k, v in doc["errors"].items()},
            stop_reason=str(doc["stop_reason"]),
            server_cpu_seconds=doc.get("server_cpu_s"),
            client_cpu_seconds=doc.get("client_cpu_s"),
        )


def _ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def render_levels(results: Sequence[LevelResult]) -> str:
    """One row per concurrency level; latencies in milliseconds."""
    header = ["conc", "issued", "failed", "secs", "iss/s", "req/s", "p50ms", "p95ms", "p99ms"]
    header += ["srvCPUms/iss", "cliCPUms/iss", "stop"]
    rows = [
        [
            str(r.concurrency),
            str(r.issued),
            str(r.failed),
            f"{r.elapsed:.2f}",
            f"{r.issuances_per_second:.2f}",
            f"{r.requests_per_second:.1f}",
            _ms(r.issuance_latency.p50),
            _ms(r.issuance_latency.p95),
            _ms(r.issuance_latency.p99),
            _ms(r.server_cpu_per_issuance),
            _ms(r.client_cpu_seconds / r.issued if r.client_cpu_seconds and r.issued else None),
            r.stop_reason,
        ]
        for r in results
    ]
    out = _table(header, rows)
    errors = [f"  c={r.concurrency}: {k} x{v}" for r in results for k, v in r.errors.items()]
    return out + ("\nerrors:\n" + "\n".join(errors) if errors else "")


def render_endpoints(result: LevelResult) -> str:
    header = ["endpoint", "count", "errors", "p50ms", "p95ms", "p99ms", "maxms"]
    rows = [
        [
            name,
            str(s.latency.count),
            str(s.errors),
            _ms(s.latency.p50),
            _ms(s.latency.p95),
            _ms(s.latency.p99),
            _ms(s.latency.max),
        ]
        for name, s in result.endpoints.items()
    ]
    return f"concurrency {result.concurrency}, per endpoint:\n" + _table(header, rows)


def render_comparison(runs: Mapping[str, Sequence[LevelResult]]) -> str:
    """Side by side per concurrency level; ratios are each label's iss/s over the first's."""
    labels = list(runs)
    levels = sorted({r.concurrency for rs in runs.values() for r in rs})
    by = {label: {r.concurrency: r for r in rs} for label, rs in runs.items()}
    header = ["conc"]
    for i, label in enumerate(labels):
        header += [f"{label} iss/s", f"{label} p50ms", f"{label} p99ms", f"{label} CPUms/iss"]
        if i > 0:
            header.append(f"{label}/{labels[0]}")
    rows: list[list[str]] = []
    for level in levels:
        row = [str(level)]
        base = by[labels[0]].get(level)
        for i, label in enumerate(labels):
            r = by[label].get(level)
            if r is None:
                row += ["-", "-", "-", "-"] + (["-"] if i > 0 else [])
                continue
            mark = " (stall)" if r.stalled else ""
            row += [
                f"{r.issuances_per_second:.2f}{mark}",
                _ms(r.issuance_latency.p50),
                _ms(r.issuance_latency.p99),
                _ms(r.server_cpu_per_issuance),
            ]
            if i > 0:
                if base is not None and base.issuances_per_second > 0:
                    row.append(f"{r.issuances_per_second / base.issuances_per_second:.2f}x")
                else:
                    row.append("-")
        rows.append(row)
    return _table(header, rows)


def write_plot(runs: Mapping[str, Sequence[LevelResult]], path: str) -> str | None:
    """Issuances/s and p99 latency against concurrency. Returns an error message, or None."""
    try:
        # Optional dependency, imported by name so that type checking does not need it.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed; no plot written (pip install matplotlib)"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, results in runs.items():
        xs = [r.concurrency for r in results]
        ax1.plot(xs, [r.issuances_per_second for r in results], marker="o", label=label)
        ax2.plot(xs, [r.issuance_latency.p99 * 1000 for r in results], marker="o", label=label)
    for ax, title in ((ax1, "issuances/s"), (ax2, "p99 issuance latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(visible=True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
