"""The benchmark loop: N workers, one account each, issuing certificates against a server.

Each worker runs the whole RFC 8555 flow repeatedly: newOrder, fetch the
authorizations, present the challenges, respond, poll the authorizations, finalize
with a fresh CSR, poll the order, download and parse the certificate. A failed flow
counts as an error of its problem type and the worker goes on.

Timed section: account creation and the cert-key pool are set up before the clock
starts. With `count`, one fresh key per order is generated beforehand (so key
generation, slow for RSA, is not measured); with `duration` only, keys are made
inline. Polling is immediate first, then `poll_min_delay` doubling to
`poll_max_delay` (50 ms by default); Retry-After is honoured up to that cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509

from acme_ca.bench.client import (
    AcmeClient,
    AcmeProblem,
    AcmeResponse,
    Endpoint,
    PollFailed,
    build_csr,
)
from acme_ca.bench.http import TransportError
from acme_ca.bench.jws import KeyKind, PrivateKey, generate_key
from acme_ca.bench.report import LevelResult, Recorder
from acme_ca.bench.responder import ChallengeSolver, Dns01Solver, Http01Responder, Http01Solver

__all__ = ["BenchConfig", "ProgressHook", "process_tree_cpu_seconds", "run_benchmark", "run_level"]

# (concurrency, completed flows so far, flows wanted or None when bounded by time)
ProgressHook = Callable[[int, int, int | None], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    directory: str
    verify: str | bool = True
    count: int | None = 100  # flows attempted per level
    duration: float | None = None  # seconds per level
    names_per_order: int = 1
    domain_suffix: str = "bench.test"
    account_key: KeyKind = KeyKind.P256
    cert_key: KeyKind = KeyKind.P256
    challenge: str = "http-01"
    responder_host: str = "127.0.0.1"
    responder_port: int = 5002
    challtestsrv: str | None = None  # management URL, for dns-01
    server_pid: int | None = None
    stall_timeout: float = 10.0
    request_timeout: float = 30.0
    poll_timeout: float = 30.0
    poll_min_delay: float = 0.002
    poll_max_delay: float = 0.05

    def __post_init__(self) -> None:
        if self.count is None and self.duration is None:
            raise ValueError("give a count, a duration, or both")
        if self.challenge not in ("http-01", "dns-01"):
            raise ValueError(f"unsupported challenge {self.challenge!r}")
        if self.challenge == "dns-01" and not self.challtestsrv:
            raise ValueError("dns-01 needs the challtestsrv management URL")


def process_tree_cpu_seconds(pid: int) -> float:
    """User+system CPU of `pid`, its live descendants, and its reaped children (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # proc(5): the command may hold spaces and parentheses; fields follow the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        child = int(entry.name)
        parents[child] = int(fields[1])
        # utime, stime, cutime, cstime are fields 14-17; here shifted by the 2 skipped.
        times[child] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    if pid not in times:
        raise ProcessLookupError(pid)
    total = times[pid][0] + times[pid][1]  # own time, plus children already reaped
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                total += times[child][0] + times[child][1]
                frontier.append(child)
    return total / tick


def _problem_kind(exc: BaseException) -> str:
    if isinstance(exc, AcmeProblem):
        return exc.type
    if isinstance(exc, PollFailed):
        return exc.problem.type if exc.problem else f"resource {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timeout (polling)"
    if isinstance(exc, (httpx.HTTPError, TransportError)):
        return f"transport: {type(exc).__name__}"
    return f"client: {type(exc).__name__}: {exc}"[:120]


class _Level:
    """Shared state of the workers of one level."""

    def __init__(self, config: BenchConfig, concurrency: int, solver: ChallengeSolver) -> None:
        self.config = config
        self.concurrency = concurrency
        self.solver = solver
        self.recorder = Recorder()
        self.started = 0
        self.keys: list[PrivateKey] = []
        self.last_progress = 0.0
        self.done = asyncio.Event()

    def ticket(self) -> bool:
        count = self.config.count
        if count is not None and self.started >= count:
            return False
        self.started += 1
        return True

    def next_key(self) -> PrivateKey:
        return self.keys.pop() if self.keys else generate_key(self.config.cert_key)

    def names(self) -> list[str]:
        suffix = self.config.domain_suffix.strip(".")
        return [f"b{secrets.token_hex(6)}.{suffix}" for _ in range(self.config.names_per_order)]

    def completed(self) -> None:
        self.last_progress = time.monotonic()
        if self.config.count is not None and self.recorder.completed >= self.config.count:
            self.done.set()


async def _poll(
    client: AcmeClient, cfg: BenchConfig, url: str, until: set[str], endpoint: Endpoint
) -> AcmeResponse:
    return await client.poll(
        url,
        until=until,
        endpoint=endpoint,
        timeout=cfg.poll_timeout,
        min_delay=cfg.poll_min_delay,
        max_delay=cfg.poll_max_delay,
    )


async def _solve(client: AcmeClient, level: _Level, authz_urls: Sequence[str]) -> None:
    cfg = level.config
    solver = level.solver
    pending: list[tuple[str, str, str, str]] = []  # authz url, challenge url, identifier, token
    try:
        for url in authz_urls:
            authz = (await client.post_as_get(url, endpoint=Endpoint.AUTHZ)).body
            if authz.get("status") == "valid":
                continue  # reused authorization (RFC 8555 §7.1.3)
            chall = next(
                (c for c in authz.get("challenges", []) if c.get("type") == solver.challenge_type),
                None,
            )
            if chall is None:
                raise ValueError(f"no {solver.challenge_type} challenge offered")
            ident = str(authz["identifier"]["value"])
            token = str(chall["token"])
            await solver.present(ident, token, client.key_authorization(token))
            pending.append((url, str(chall["url"]), ident, token))
        for _, chall_url, _, _ in pending:
            await client.respond_challenge(chall_url)
        await asyncio.gather(
            *(_poll(client, cfg, url, {"valid"}, Endpoint.AUTHZ) for url, _, _, _ in pending)
        )
    finally:
        for _, _, ident, token in pending:
            with contextlib.suppress(Exception):
                await solver.cleanup(ident, token)


async def _issue(client: AcmeClient, level: _Level, key: PrivateKey) -> None:
    cfg = level.config
    names = level.names()
    order = await client.new_order(names)
    order_url = order.location
    if order_url is None:
        raise ValueError("newOrder answered without Location")
    await _solve(client, level, order.body.get("authorizations", []))

    csr = build_csr(key, names)
    try:
        body = (await client.finalize(order.body["finalize"], csr)).body
    except AcmeProblem as problem:
        # RFC 8555 §7.4: the order may lag its authorizations; wait for "ready", retry once.
        if not problem.type.endswith(":orderNotReady"):
            raise
        await _poll(client, cfg, order_url, {"ready", "valid"}, Endpoint.ORDER)
        body = (await client.finalize(order.body["finalize"], csr)).body
    if body.get("status") != "valid":
        body = (await _poll(client, cfg, order_url, {"valid"}, Endpoint.ORDER)).body
    pem = (await client.download_certificate(body["certificate"])).content
    leaf = x509.load_pem_x509_certificates(pem)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if set(sans.get_values_for_type(x509.DNSName)) != set(names):
        raise ValueError("the certificate does not name the order's identifiers")


async def _worker(client: AcmeClient, level: _Level) -> None:
    while level.ticket():
        key = level.next_key()
        start = time.perf_counter()
        try:
            await _issue(client, level, key)
        except Exception as exc:
            level.recorder.failed(_problem_kind(exc))
        else:
            level.recorder.issued(time.perf_counter() - start)
        level.completed()


async def run_level(
    config: BenchConfig,
    concurrency: int,
    solver: ChallengeSolver,
    *,
    progress: ProgressHook | None = None,
) -> LevelResult:
    """Run one level: set up accounts and keys, then time the workers until a bound."""
    level = _Level(config, concurrency, solver)
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=config.verify)
        if isinstance(config.verify, str)
        else config.verify
    )
    clients = [
        AcmeClient(
            config.directory,
            account_key=generate_key(config.account_key),
            verify=verify,
            timeout=config.request_timeout,
            on_request=level.recorder.on_request,
        )
        for _ in range(concurrency)
    ]
    try:
        try:
            await asyncio.gather(*(c.new_account(contact=()) for c in clients))
        except Exception as exc:
            level.recorder.failed(f"setup: {_problem_kind(exc)}")
            return LevelResult.build(
                concurrency=concurrency, recorder=level.recorder, elapsed=0.0, stop_reason="setup"
            )
        if config.count is not None:
            level.keys = [generate_key(config.cert_key) for _ in range(config.count)]
        return await _timed(config, level, clients, progress)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def _server_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return process_tree_cpu_seconds(pid)
    except (ProcessLookupError, OSError, ValueError):
        return None


async def _timed(
    config: BenchConfig, level: _Level, clients: list[AcmeClient], progress: ProgressHook | None
) -> LevelResult:
    server_cpu0 = _server_cpu(config.server_pid)
    client_cpu0 = time.process_time()
    level.recorder.active = True
    start = level.last_progress = time.monotonic()
    tasks = [asyncio.create_task(_worker(c, level)) for c in clients]
    all_done = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
    all_done.add_done_callback(lambda _: level.done.set())
    deadline = start + config.duration if config.duration is not None else None
    reason = "count"
    while not level.done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(level.done.wait(), timeout=0.2)
        now = time.monotonic()
        if progress is not None:
            progress(level.concurrency, level.recorder.completed, config.count)
        if level.done.is_set():
            break
        if deadline is not None and now >= deadline:
            reason = "duration"
            break
        if now - level.last_progress >= config.stall_timeout:
            reason = "stall"  # e.g. a deadlocked server: report the rate before it
            break
    end = time.monotonic()
    level.recorder.active = False
    for task in tasks:
        task.cancel()
    await all_done
    server_cpu1 = _server_cpu(config.server_pid)
    elapsed = (level.last_progress if reason in ("count", "stall") else end) - start
    server_cpu = (
        server_cpu1 - server_cpu0 if server_cpu0 is not None and server_cpu1 is not None else None
    )
    if progress is not None:
        progress(level.concurrency, level.recorder.completed, config.count)
    return LevelResult.build(
        concurrency=level.concurrency,
        recorder=level.recorder,
        elapsed=elapsed,
        stop_reason=reason,
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=round(time.process_time() - client_cpu0, 3),
    )


async def run_benchmark(
    config: BenchConfig, levels: Sequence[int], *, progress: ProgressHook | None = None
) -> list[LevelResult]:
    """Run each concurrency level in turn, sharing one challenge responder."""
    results: list[LevelResult] = []
    async with httpx.AsyncClient(timeout=config.request_timeout) as mgmt:
        if config.challenge == "dns-01":
            assert config.challtestsrv is not None
            solver: ChallengeSolver = Dns01Solver(config.challtestsrv, mgmt)
            for concurrency in levels:
                results.append(await run_level(config, concurrency, solver, progress=progress))
            return results
        async with Http01Responder(config.responder_host, config.responder_port) as responder:
            solver = Http01Solver(responder)
            for concurrency in levels:
                results.append(await run_level(config, concurrency, solver, progress=progress))
    return results
