"""CPU the front end spends recording one request's metrics (acme_ca.metrics.recorder).

usage: .venv/bin/python benchmarks/metrics_overhead.py [--requests 200000]

Each mode runs in a fresh interpreter, since prometheus_client chooses multiprocess or
in-memory values when it is first imported: `multiprocess` as `acme-ca serve` runs it
(a run directory in PROMETHEUS_MULTIPROC_DIR), `memory` (no directory), and `off` (the
recorder that records nothing). A request is what `AcmeApp.handle` adds: two
perf_counter() calls and one `Metrics.request` over a mix of routes, 1 in 10 a problem
document. Figures: µs of this process's CPU per request (getrusage), best of 5.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile

_MODES = ("multiprocess", "memory", "off")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(mode: str, requests: int) -> float:
    import time

    from acme_ca.errors import ProblemType
    from acme_ca.metrics.recorder import NO_METRICS, Metrics, PrometheusMetrics

    metrics: Metrics = NO_METRICS if mode == "off" else PrometheusMetrics()
    routes = ("newNonce", "newOrder", "authz", "challenge", "order", "finalize", "certificate")
    mix = [
        (routes[i % len(routes)], "POST", 400 if i % 10 == 0 else 200,
         str(ProblemType.BAD_NONCE) if i % 10 == 0 else None)
        for i in range(70)
    ]  # fmt: skip
    best = float("inf")
    for _ in range(5):
        start = _cpu()
        for i in range(requests):
            endpoint, method, status, problem = mix[i % 70]
            started = time.perf_counter()
            metrics.request(endpoint, method, status, problem, time.perf_counter() - started)
        best = min(best, (_cpu() - start) / requests)
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--mode", choices=_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(f"{_measure(args.mode, args.requests):.2f}")
        return 0
    for mode in _MODES:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory(prefix="metrics-overhead-") as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            argv = [sys.executable, __file__, "--mode", mode, "--requests", str(args.requests)]
            # S603: this interpreter running this file.
            out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)  # noqa: S603
        print(f"{mode:>12}: {out.stdout.strip()} µs of CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
