"""Run `acme-ca bench` against one `acme-ca serve` on a given data directory (or database)
and record the memory of the serving processes (issue 5: throughput and memory with a
seeded database).

Starts `acme-ca challtestsrv` (DNS answering 127.0.0.1) and `acme-ca serve --workers N`,
runs the benchmark with its own http-01 responder, samples VmRSS of the server's parent
and worker processes (/proc/PID/status) every 0.2 s while it runs, and writes the
bench JSON plus an "rss" section. Every process it starts is stopped by its PID.

usage: .venv/bin/python benchmarks/serve_and_bench.py --data-dir D [--database URL]
           [--workers 2] [--concurrency 8] [--count 300] [--label L] --json OUT
           [--profile-seconds S --profile-out FILE]   (py-spy on one worker, raw format)
"""

# S603/S310: a benchmark driver that runs our own executables and fetches our own https URL.
# ruff: noqa: S603, S310

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((HOST, 0))
        port: int = tcp.getsockname()[1]
    return port


def free_udp_tcp_port() -> int:
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(c) for c in text]
    except OSError:
        pass
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process so far (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Peak and last VmRSS of a process and its children (uvicorn's workers)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.peak_total = 0
        self.cpu: dict[int, float] = {}

    def sample(self) -> None:
        total = 0
        for pid in [self._pid, *children(self._pid)]:
            rss = rss_kib(pid)
            if rss is None:
                continue
            self.last[pid] = rss
            self.cpu[pid] = cpu_seconds(pid) or 0.0
            self.peak[pid] = max(self.peak.get(pid, 0), rss)
            total += rss
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.sample()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _wait_ready(url: str, root: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            context = ssl.create_default_context(cafile=str(root))
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {_STARTUP_TIMEOUT}s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--database")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", default="8")
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--label", default="acme-ca")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--profile-seconds", type=float, help="py-spy record one worker this long")
    p.add_argument("--profile-out", type=Path)
    p.add_argument("--profile-format", default="raw", choices=["raw", "speedscope", "flamegraph"])
    p.add_argument(
        "--profile-mode",
        choices=["cpu", "gil", "wait"],
        default="gil",
        help="py-spy samples: gil = only holding the GIL (Python CPU); "
        "wait = --idle --threads (where time waits, per thread)",
    )
    args = p.parse_args(argv)

    work = args.json.parent
    work.mkdir(parents=True, exist_ok=True)
    dns, mgmt, port, http01, revocation = (
        free_udp_tcp_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    )
    acme = str(BIN / "acme-ca")
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: (work / f"{args.label}-{name}.log").open("wb") for name in ("ctsrv", "serve")}
    try:
        procs.append(
            subprocess.Popen(
                [acme, "challtestsrv", "--dns", f"{HOST}:{dns}", "--management", f"{HOST}:{mgmt}"],
                stdout=logs["ctsrv"],
                stderr=subprocess.STDOUT,
            )
        )
        serve = [acme, "serve", "--data-dir", str(args.data_dir), "--listen", f"{HOST}:{port}"]
        serve += ["--dns-resolver", f"{HOST}:{dns}", "--http-01-port", str(http01)]
        serve += ["--allow-private-addresses", "--workers", str(args.workers)]
        serve += ["--revocation-listen", f"{HOST}:{revocation}", "--log-level", "warning"]
        if args.database:
            serve += ["--database", args.database]
        server = subprocess.Popen(serve, stdout=logs["serve"], stderr=subprocess.STDOUT)
        procs.append(server)
        directory = f"https://{HOST}:{port}/directory"
        root = args.data_dir / "root.pem"
        _wait_ready(directory, root, server, work / f"{args.label}-serve.log")
        time.sleep(1.0)  # let the workers finish starting before measuring
        sampler = RssSampler(server.pid)
        sampler.sample()
        idle_total = sum(sampler.last.values())
        cpu_before = dict(sampler.cpu)
        sampler.start()
        profiler: subprocess.Popen[bytes] | None = None
        if args.profile_seconds and args.profile_out:
            workers = children(server.pid)
            target = workers[-1] if workers else server.pid
            profiler = subprocess.Popen(
                [
                    str(BIN / "py-spy"),
                    "record",
                    "-p",
                    str(target),
                    "-d",
                    str(int(args.profile_seconds)),
                    "-r",
                    "200",
                    "-f",
                    args.profile_format,
                    "-o",
                    str(args.profile_out),
                    *{"cpu": [], "gil": ["--gil"], "wait": ["--idle", "--threads"]}[
                        args.profile_mode
                    ],
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(profiler)
        bench = [acme, "bench", "--directory", directory, "--ca-bundle", str(root)]
        bench += ["--concurrency", args.concurrency, "--count", str(args.count)]
        bench += ["--duration", str(args.duration), "--stall-timeout", "10"]
        bench += ["--responder-listen", f"{HOST}:{http01}", "--server-pid", str(server.pid)]
        bench += ["--label", args.label, "--json", str(args.json), "--no-progress"]
        result = subprocess.run(bench, check=False, timeout=args.duration + 120)
        sampler.stop()
        if profiler is not None:
            profiler.wait(timeout=args.profile_seconds + 60)
        doc: dict[str, Any] = json.loads(args.json.read_text())
        doc["rss"] = {
            "idle_total_kib": idle_total,
            "peak_total_kib": sampler.peak_total,
            "peak_kib_by_pid": {str(k): v for k, v in sampler.peak.items()},
            "last_kib_by_pid": {str(k): v for k, v in sampler.last.items()},
            "parent_pid": server.pid,
        }
        doc["cpu_s_by_pid"] = {
            str(pid): round(cpu - cpu_before.get(pid, 0.0), 3) for pid, cpu in sampler.cpu.items()
        }
        doc["serve_argv"] = serve
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        peak = ", ".join(
            f"{'parent' if pid == server.pid else 'worker'} {pid}: {kib / 1024:.0f} MiB"
            for pid, kib in sampler.peak.items()
        )
        print(f"RSS peak: {peak}; total {sampler.peak_total / 1024:.0f} MiB", flush=True)
        print(f"CPU seconds during the run by PID: {doc['cpu_s_by_pid']}", flush=True)
        return result.returncode
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs.values():
            log.close()


if __name__ == "__main__":
    sys.exit(main())
