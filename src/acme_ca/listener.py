"""Connections under a cap: how a serving process takes connections in.

uvicorn's server (asyncio's `create_server`) accepts whatever the kernel queues and
offers no hook before the TLS handshake, which it lets run for asyncio's default
60 s. A client that opened idle connections (TCP alone, or TLS and no request) could
hold every file descriptor of the process: at that limit uvloop reset each new
connection (seen with 600 idle TCP connections against a limit of 400), and anything
else needing a descriptor (a database file, a validation's socket) would fail too.
So a serving process takes its connections itself (`ListeningServer` from its own
socket, the supervisor's workers from their channel), counts each from accept to
close, TLS handshake included, and closes new ones at once while `max_connections`
are open. A refusal costs no handshake, the part an idle flood makes expensive (a 503
would need one first); connections already open are served on, and new ones are
taken again as soon as one closes.

Each listener's open and refused connections are counted for metrics
(`acme_ca_connections_open`, `acme_ca_connections_refused_total`) where they are
counted for the cap.

Must not: import the front end (the status listener serves through this too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from acme_ca.metrics.recorder import NO_LISTENER, ListenerMetrics

__all__ = [
    "ConnectionLimits",
    "ListeningServer",
    "RefusalLog",
    "ServingServer",
    "accept_some",
    "fit_limits",
    "listen",
]

log = logging.getLogger(__name__)

RESERVED_FDS = 128
"""Descriptors kept for everything but connections: database pools and files, logs,
the event loop, the supervisor's channel."""
_ACCEPTS_PER_TURN = 64
ACCEPT_PAUSE = 0.5
"""Seconds without accepting after a process ran out of descriptors."""
_LOG_EVERY = 10.0


def accept_some(
    listener: socket.socket,
    take: Callable[[socket.socket], None],
    exhausted: Callable[[OSError], None],
) -> None:
    """Accept what the non-blocking `listener` has queued, a bounded number per turn,
    giving each connection to `take`. Out of descriptors or buffers (EMFILE, ENOBUFS),
    `exhausted` is told and accepting stops for this turn: the caller pauses instead
    of spinning on a listener that stays readable."""
    for _ in range(_ACCEPTS_PER_TURN):
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                continue  # gone before it was accepted
            exhausted(exc)
            return
        take(conn)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    max_connections: int = 1024
    """Connections one listener keeps open (TLS handshakes included); more are closed
    at once."""
    handshake_timeout: float = 30.0
    """Seconds a TLS handshake may take (asyncio's default is 60)."""


class RefusalLog:
    """One warning when refusals start, then at most one per 10 s, with the count."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._unsaid = 0
        self._said = -_LOG_EVERY
        self.total = 0

    def refused(self, detail: str) -> None:
        self.total += 1
        self._unsaid += 1
        now = time.monotonic()
        if now - self._said >= _LOG_EVERY:
            log.warning("%s: %s; %d refused since last said", self._what, detail, self._unsaid)
            self._said = now
            self._unsaid = 0


def _open_files_for(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward `needed` (never past the hard
    limit, never down); the soft limit then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return needed
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft


def fit_limits(limits: ConnectionLimits, *, listeners: int = 1) -> ConnectionLimits:
    """`limits` for a process serving `listeners` capped listeners (or connection
    copies), within its open-file limit: raised as far as needed and allowed, else
    fewer connections per listener, so that the cap and not EMFILE refuses them."""
    needed = listeners * limits.max_connections + RESERVED_FDS
    available = _open_files_for(needed)
    if available >= needed:
        return limits
    fitted = max(1, (available - RESERVED_FDS) // listeners)
    log.warning(
        "the open-file limit (%d) is below the %d that max_connections %d needs: "
        "%d connections per listener instead (raise `ulimit -n` / LimitNOFILE)",
        available,
        needed,
        limits.max_connections,
        fitted,
    )
    return dataclasses.replace(limits, max_connections=fitted)


def listen(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """The port, bound by this process alone (no SO_REUSEPORT: nothing else may join)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class _Slot:
    """One admitted connection: released once, whichever of its ends comes first."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class ServingServer(uvicorn.Server):
    """uvicorn (lifespan, signals, graceful shutdown) serving the connections given to
    `admit`, at most `max_connections` at a time; it listens on no socket of uvicorn's.
    Subclasses say where connections come from (`admit`) and what serves them
    (`make_protocol`, whose protocol calls `on_closed` from `connection_lost`)."""

    def __init__(
        self,
        config: uvicorn.Config,
        limits: ConnectionLimits,
        *,
        connections: ListenerMetrics = NO_LISTENER,
    ) -> None:
        super().__init__(config)
        self.limits = limits
        self.connections = connections
        self.open_connections = 0
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refusals = RefusalLog("connection limit reached")

    def make_protocol(self, on_closed: Callable[[], None]) -> asyncio.Protocol:
        raise NotImplementedError

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in list(self._handshakes):
            task.cancel()
        await super().shutdown(sockets=sockets)

    def admit(self, sock: socket.socket, on_released: Callable[[], None] | None = None) -> None:
        """Serve `sock`, or close it now (over the cap, or shutting down); `on_released`
        is called once when it is closed either way."""
        if self.should_exit or self.open_connections >= self.limits.max_connections:
            if not self.should_exit:
                self._refusals.refused(f"{self.open_connections} open")
                self.connections.refused()
            sock.close()
            if on_released is not None:
                on_released()
            return
        self.open_connections += 1
        self.connections.opened()
        slot = _Slot(lambda: self._released(on_released))
        task = asyncio.get_running_loop().create_task(self._serve_connection(sock, slot))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def _released(self, on_released: Callable[[], None] | None) -> None:
        self.open_connections -= 1
        self.connections.closed()
        if on_released is not None:
            on_released()

    async def _serve_connection(self, sock: socket.socket, slot: _Slot) -> None:
        """The TLS handshake, then the protocol owns the connection (and releases it)."""
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self.config.ssl is not None:
            tls = {"ssl": self.config.ssl, "ssl_handshake_timeout": self.limits.handshake_timeout}
        # On failure the protocol never saw the connection (or, cancelled just after
        # it did, releases it a second time: a no-op).
        try:
            sock.setblocking(False)
            await loop.connect_accepted_socket(
                lambda: self.make_protocol(slot.release), sock, **tls
            )
        except (OSError, TimeoutError):  # a failed or abandoned handshake
            sock.close()
            slot.release()
        except asyncio.CancelledError:  # shutting down
            sock.close()
            slot.release()
            raise
        except Exception:
            sock.close()
            slot.release()
            log.exception("connection not served")


class ListeningServer(ServingServer):
    """A `ServingServer` that accepts from its own listening socket (`listen`)."""

    def __init__(
        self,
        config: uvicorn.Config,
        limits: ConnectionLimits,
        listener: socket.socket,
        *,
        connections: ListenerMetrics = NO_LISTENER,
    ) -> None:
        super().__init__(config, limits, connections=connections)
        self._listener = listener
        self._reading = False
        host, port = listener.getsockname()[:2]
        self.address = f"{'https' if config.is_ssl else 'http'}://{host}:{port}"
        self._refusals = RefusalLog(f"{self.address}: connection limit reached")
        self._out_of_fds = RefusalLog(f"{self.address}: cannot accept")

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self._resume_accepting()
        log.info("serving %s (at most %d connections)", self.address, self.limits.max_connections)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._pause_accepting()
        self._listener.close()  # the kernel queues no more; those queued are reset
        await super().shutdown(sockets=sockets)

    def _resume_accepting(self) -> None:
        if not self._reading and not self.should_exit and self._listener.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)
            self._reading = True

    def _pause_accepting(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._reading = False

    def _accept(self) -> None:
        accept_some(self._listener, self.admit, self._exhausted)

    def _exhausted(self, exc: OSError) -> None:
        # EMFILE: the cap is above what the process may open; wait for some to close.
        self._out_of_fds.refused(str(exc))
        self._pause_accepting()
        asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._resume_accepting)
