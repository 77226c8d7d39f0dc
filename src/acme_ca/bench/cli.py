"""Command line of the benchmark: `acme-ca bench` / `python -m acme_ca.bench`.

Parses options into a BenchConfig, runs the levels, prints tables, writes JSON and
an optional plot. Optional extras degrade politely: rich (progress bar, only on a
TTY), matplotlib (plot), uvloop (event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from acme_ca.bench.jws import KeyKind
from acme_ca.bench.report import LevelResult, render_endpoints, render_levels, write_plot
from acme_ca.bench.runner import BenchConfig, ProgressHook, run_benchmark

__all__ = ["build_parser", "main"]

_DEFAULT_COUNT = 100


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return levels


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acme-ca bench",
        description="Issue certificates from an ACME server as fast as it allows, and report.",
    )
    p.add_argument("--directory", required=True, help="the server's directory URL")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", metavar="PATH", help="CA certificates to trust for HTTPS")
    tls.add_argument("--insecure", action="store_true", help="do not verify the server's TLS")
    p.add_argument(
        "--concurrency", type=_levels, default=[1], metavar="N[,N...]", help="levels, in turn"
    )
    p.add_argument("--count", type=_positive(int), help="flows per level (default 100)")
    p.add_argument("--duration", type=_positive(float), metavar="SECONDS", help="per level")
    p.add_argument("--names-per-order", type=_positive(int), default=1, metavar="K")
    p.add_argument("--domain-suffix", default="bench.test")
    keys = [k.value for k in KeyKind]
    p.add_argument("--account-key", choices=keys, default=KeyKind.P256.value)
    p.add_argument("--cert-key", choices=keys, default=KeyKind.P256.value)
    p.add_argument("--challenge", choices=["http-01", "dns-01"], default="http-01")
    p.add_argument(
        "--responder-listen", type=_host_port, default=("127.0.0.1", 5002), metavar="HOST:PORT"
    )
    p.add_argument("--challtestsrv", metavar="URL", help="management URL, for dns-01")
    p.add_argument("--server-pid", type=int, metavar="PID", help="report the server's CPU")
    p.add_argument("--stall-timeout", type=_positive(float), default=10.0, metavar="SECONDS")
    p.add_argument("--request-timeout", type=_positive(float), default=30.0, metavar="SECONDS")
    p.add_argument("--poll-max-delay", type=_positive(float), default=0.05, metavar="SECONDS")
    p.add_argument("--label", default=None, help="name of the server, kept in the JSON")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="plot rates and latencies (matplotlib)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-endpoints", action="store_true", help="omit per-endpoint tables")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    return p


def _config(args: argparse.Namespace) -> BenchConfig:
    count = args.count
    if count is None and args.duration is None:
        count = _DEFAULT_COUNT
    verify: str | bool = args.ca_bundle or not args.insecure
    host, port = args.responder_listen
    return BenchConfig(
        directory=args.directory,
        verify=verify,
        count=count,
        duration=args.duration,
        names_per_order=args.names_per_order,
        domain_suffix=args.domain_suffix,
        account_key=KeyKind(args.account_key),
        cert_key=KeyKind(args.cert_key),
        challenge=args.challenge,
        responder_host=host,
        responder_port=port,
        challtestsrv=args.challtestsrv,
        server_pid=args.server_pid,
        stall_timeout=args.stall_timeout,
        request_timeout=args.request_timeout,
        poll_max_delay=args.poll_max_delay,
    )


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressHook | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    try:
        rich_progress: Any = importlib.import_module("rich.progress")
    except ImportError:
        yield None
        return
    bar = rich_progress.Progress(transient=True)
    tasks: dict[int, Any] = {}

    def hook(concurrency: int, done: int, total: int | None) -> None:
        if concurrency not in tasks:
            tasks[concurrency] = bar.add_task(f"concurrency {concurrency}", total=total)
        bar.update(tasks[concurrency], completed=done)

    with bar:
        yield hook


def _runner(choice: str) -> asyncio.Runner:
    if choice != "asyncio":
        try:
            uvloop: Any = importlib.import_module("uvloop")
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def to_json_document(
    config: BenchConfig, results: Sequence[LevelResult], *, label: str | None, loop: str
) -> dict[str, Any]:
    return {
        "tool": "acme-ca bench",
        "format": 1,
        "label": label,
        "directory": config.directory,
        "config": {
            "count": config.count,
            "duration_s": config.duration,
            "names_per_order": config.names_per_order,
            "account_key": str(config.account_key),
            "cert_key": str(config.cert_key),
            "challenge": config.challenge,
            "stall_timeout_s": config.stall_timeout,
            "poll_min_delay_s": config.poll_min_delay,
            "poll_max_delay_s": config.poll_max_delay,
            "cert_keys": "pregenerated" if config.count is not None else "inline",
            "event_loop": loop,
        },
        "levels": [r.to_json() for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"acme-ca bench: {exc}", file=sys.stderr)
        return 2
    with _runner(args.loop) as runner, _progress(not args.no_progress) as hook:
        loop_name = type(runner.get_loop()).__module__.split(".")[0]
        results = runner.run(run_benchmark(config, args.concurrency, progress=hook))
    print(f"{args.label or config.directory}: {config.challenge}, {config.cert_key} cert keys")
    print(render_levels(results))
    if not args.no_endpoints:
        for result in results:
            print()
            print(render_endpoints(result))
    if args.json:
        doc = to_json_document(config, results, label=args.label, loop=loop_name)
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
    if args.plot:
        error = write_plot({args.label or "server": results}, args.plot)
        if error:
            print(f"acme-ca bench: {error}", file=sys.stderr)
    return 0 if all(r.issued > 0 for r in results) else 1
