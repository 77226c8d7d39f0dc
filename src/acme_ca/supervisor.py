"""`serve --workers N`: one listening socket in the supervisor, N uvicorn worker processes.

How connections reach workers decides how evenly they are loaded, since ACME clients
keep their connections alive. uvicorn's own multi-worker mode shares one listening
socket and whichever worker wakes first accepts: connections opened in a burst all
landed on one worker (measured: 31 of 32, one worker at 9 s of CPU and the other at
0.02 s). A socket per worker (SO_REUSEPORT) spreads them by a hash of the address,
which evens out only over many connections (of 8, 6-2 or worse about a third of the
time), and sends every connection to the first worker up while the others still
start (seen: all of a benchmark's 8 on one worker). So the supervisor accepts every
connection itself and hands it
(SCM_RIGHTS over a socket pair) to a ready worker: the one with the fewest handed
connections it has not yet acknowledged, then the fewest open ones. A worker says
when it is ready, acknowledges each connection as it takes it, and reports each
close. Connections wait in the kernel's backlog until a worker is up; the supervisor
keeps its copy of a connection until the worker's acknowledgement, so those a worker
never took (it died, or was stopped and then killed) go to another worker instead of
being lost; a stuck worker stops being chosen. The port is bound exclusively, by the
supervisor alone.

The supervisor restarts a worker that dies, and stops them all on SIGTERM/SIGINT; a
worker whose supervisor is gone (its socket pair closed) stops as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import multiprocessing
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from acme_ca.wfe.http_server import AcmeHttpProtocol

__all__ = ["WorkerSpec", "run_single", "run_workers"]

log = logging.getLogger(__name__)

_READY = b"R"
_TAKEN = b"+"
_CLOSED = b"-"
_HANDED = b"c"
_ACCEPTS_PER_TURN = 64
_SELECT_SECONDS = 0.5
_ALL_READY_SECONDS = 60.0
# A TLS handshake not done in this long is dropped (asyncio's default is 60 s).
_HANDSHAKE_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    host: str
    port: int
    certfile: str
    keyfile: str
    log_level: str
    app: str = "acme_ca.cli:app_factory"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _config(spec: WorkerSpec) -> uvicorn.Config:
    return uvicorn.Config(
        spec.app,
        host=spec.host,
        port=spec.port,
        factory=True,
        ssl_certfile=spec.certfile,
        ssl_keyfile=spec.keyfile,
        log_level=spec.log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http=AcmeHttpProtocol,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=5,
    )


def run_single(spec: WorkerSpec) -> None:
    """One process: uvicorn binds the port itself (exclusively)."""
    uvicorn.Server(_config(spec)).run()


# ---- the worker's side ----------------------------------------------------------------


class _HandedProtocol(AcmeHttpProtocol):
    """The front end's protocol, telling the supervisor when its connection closes."""

    on_closed: Callable[[], None] = staticmethod(lambda: None)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.on_closed()


class _HandedServer(uvicorn.Server):
    """uvicorn serving the connections the supervisor hands over `channel` (it listens
    on no socket of its own); lifespan, signals and graceful shutdown are uvicorn's."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self._channel = channel
        self._reading = False
        self._handshakes: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        if self.should_exit:
            return
        self._channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)
        self._reading = True
        self._tell(_READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stop_reading()
        for task in list(self._handshakes):
            task.cancel()
        await super().shutdown(sockets=sockets)
        self._channel.close()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._channel.fileno())

    def _tell(self, what: bytes) -> None:
        # The supervisor gone or slow: its counts are only a preference.
        with contextlib.suppress(OSError):
            self._channel.send(what)

    def _receive(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._channel, 16, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:
                # The supervisor is gone: stop as on SIGTERM.
                self._stop_reading()
                self.should_exit = True
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                self._tell(_TAKEN)
                if self.should_exit:
                    sock.close()
                    self._tell(_CLOSED)
                    continue
                task = asyncio.get_running_loop().create_task(self._serve_handed(sock))
                self._handshakes.add(task)
                task.add_done_callback(self._handshakes.discard)

    def _protocol(self) -> asyncio.Protocol:
        protocol = _HandedProtocol(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        protocol.on_closed = functools.partial(self._tell, _CLOSED)
        return protocol

    async def _serve_handed(self, sock: socket.socket) -> None:
        """TLS handshake, then the protocol owns the connection (and reports its close)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._protocol,
                sock,
                ssl=self.config.ssl,
                ssl_handshake_timeout=_HANDSHAKE_SECONDS,
            )
        except (OSError, asyncio.CancelledError, TimeoutError) as exc:
            # A failed or abandoned handshake: the protocol never saw the connection.
            sock.close()
            self._tell(_CLOSED)
            if isinstance(exc, asyncio.CancelledError):
                raise


def _worker_main(spec: WorkerSpec, channel: socket.socket) -> None:
    _HandedServer(_config(spec), channel).run()


# ---- the supervisor's side ------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    channel: socket.socket
    ready: bool = False
    """Serving: it said so once its startup was done."""
    open: int = 0
    """Connections handed to it and not reported closed."""
    pending: deque[socket.socket] = field(default_factory=deque)
    """The supervisor's copies of connections handed and not yet acknowledged, oldest
    first: handed again to another worker if this one dies without taking them."""


def _listen(spec: WorkerSpec) -> socket.socket:
    """The port, bound by the supervisor alone (no SO_REUSEPORT: nothing else may join)."""
    sock = socket.socket(_family(spec.host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Supervisor:
    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        self._spec = spec
        self._context = multiprocessing.get_context("spawn")
        self._selector = selectors.DefaultSelector()
        self._listener = _listen(spec)
        self._accepting = False
        self._all_started = False
        self._start_deadline = time.monotonic() + _ALL_READY_SECONDS
        self._workers: list[_Worker | None] = [None] * workers
        self.stopping = threading.Event()

    def _start(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(
            target=_worker_main, args=(self._spec, theirs), name="acme-ca-worker"
        )
        process.start()
        theirs.close()  # the worker has its own copy now
        ours.setblocking(False)
        self._workers[index] = _Worker(process=process, channel=ours)
        self._selector.register(ours, selectors.EVENT_READ, index)

    def _forget(self, index: int) -> None:
        """Its channel closed (the worker is gone or going): nothing more is handed to it."""
        worker = self._workers[index]
        if worker is not None and worker.channel.fileno() >= 0:
            self._selector.unregister(worker.channel)
            worker.channel.close()
        if worker is not None:
            worker.ready = False
            worker.open = 0
        self._accept_while_ready()
        if worker is not None:
            # Never taken by the dead worker (nobody read them): another one takes them.
            while worker.pending:
                self._hand(worker.pending.popleft())

    def _accept_while_ready(self) -> None:
        """Accept only while a worker is ready, and at start once all of them are (or
        after `_ALL_READY_SECONDS`): until then connections wait in the kernel's backlog,
        so that those opened at once are spread over every worker instead of going to the
        first one up. (A listener left readable would also spin the select.)"""
        states = [w is not None and w.ready for w in self._workers]
        if not self._all_started and (all(states) or time.monotonic() > self._start_deadline):
            self._all_started = True
        ready = any(states) if self._all_started else False
        if ready and not self._accepting:
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        elif not ready and self._accepting:
            self._selector.unregister(self._listener)
        self._accepting = ready

    def _hand(self, conn: socket.socket) -> None:
        """To the ready worker with the fewest unacknowledged, then open, connections;
        the supervisor's copy is kept until the worker acknowledges it."""
        candidates = sorted(
            (len(w.pending), w.open, i)
            for i, w in enumerate(self._workers)
            if w is not None and w.ready
        )
        for _, _, index in candidates:
            worker = self._workers[index]
            assert worker is not None
            try:
                socket.send_fds(worker.channel, [_HANDED], [conn.fileno()])
            except OSError:
                continue  # its buffer is full (stuck) or it is gone: the next one
            worker.open += 1
            worker.pending.append(conn)
            return
        log.warning("no worker could take a connection; closed")
        conn.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept: %s", exc)
                    time.sleep(0.01)
                    return
                raise
            self._hand(conn)

    def _read(self, index: int) -> None:
        worker = self._workers[index]
        if worker is None or worker.channel.fileno() < 0:
            return
        while True:
            try:
                data = worker.channel.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._forget(index)  # the worker is gone; the process loop restarts it
                return
            for _ in range(min(data.count(_TAKEN), len(worker.pending))):
                worker.pending.popleft().close()  # the worker has its own copy
            worker.open = max(0, worker.open - data.count(_CLOSED))
            if _READY in data and not worker.ready:
                worker.ready = True
                self._accept_while_ready()

    def _restart_dead(self) -> None:
        for index, worker in enumerate(self._workers):
            if worker is not None and not worker.process.is_alive():
                log.warning(
                    "worker %s exited with %s; restarting",
                    worker.process.pid,
                    worker.process.exitcode,
                )
                self._forget(index)
                self._start(index)

    def run(self) -> None:
        for index in range(len(self._workers)):
            self._start(index)
        while not self.stopping.is_set():
            for key, _ in self._selector.select(_SELECT_SECONDS):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            self._restart_dead()
            if not self._all_started:
                self._accept_while_ready()  # the start deadline may have passed

    def close(self) -> None:
        """Stop taking connections, then stop the workers (each ends gracefully)."""
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._listener.close()
        processes = [w.process for w in self._workers if w is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        for worker in self._workers:
            if worker is not None and worker.channel.fileno() >= 0:
                self._selector.unregister(worker.channel)
                worker.channel.close()
            while worker is not None and worker.pending:
                worker.pending.popleft().close()
        self._selector.close()


def run_workers(spec: WorkerSpec, workers: int) -> None:
    """Run `workers` processes until SIGTERM or SIGINT; restart any that dies."""
    supervisor = _Supervisor(spec, workers)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        supervisor.stopping.set()

    previous: dict[int, Any] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        supervisor.run()
    finally:
        supervisor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
