"""The serving processes' HTTP/1.1 protocol: httptools' parser straight to `AcmeApp.handle`.

uvicorn still owns the sockets, TLS, the lifespan, signals and graceful shutdown;
this class replaces only its per-connection protocol (`uvicorn.Config(http=...)`).
uvicorn's own protocol turns every request into an ASGI scope, a task running the
ASGI cycle, a receive queue and two send messages whose headers it re-validates,
and then the application builds Starlette objects from that scope again: 11-13 % of
a worker's CPU under load went to that plumbing (py-spy, concurrency 8). Here a
request is read whole (within the size limit) into the front end's own `Request`,
handled by one task, and its answer leaves as one write.

Errors of the transport are answered as ACME problems (`malformed`) with the
headers of every ACME answer (Replay-Nonce, Link rel="index"), then the connection
is closed: an unparsable request (400), a body over the limit (413, refused before
it is read when Content-Length says so), headers over 16 KiB (431). Slow clients
are bounded by `HttpLimits`: a request whose headers are not complete within
`header_timeout` seconds of its first byte, or which is not complete within
`request_timeout`, is dropped, and so is a client that stops reading its answers
(writing paused for `request_timeout`); an idle connection (before its first
request, between requests) is closed after uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.server import ServerState

from acme_ca.errors import AcmeError, ProblemType, malformed, server_internal
from acme_ca.wfe.http_types import (
    Address,
    Headers,
    Request,
    Response,
    serialize_response,
)
from acme_ca.wfe.responses import body_too_large

__all__ = ["AcmeHttpProtocol", "HttpHandler", "HttpLimits", "serialize_response"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
"""Request line plus headers; llhttp itself sets no limit (node's default is 16 KiB)."""
SHUTDOWN_RETRY_AFTER = 5
"""Retry-After (seconds) of the 503 for a request cut short by a shutdown."""
_MAX_QUEUED = 16
"""Pipelined requests kept before the connection stops reading."""
_BUSY_RECHECK = 1.0
"""Seconds after which a deadline that passed during an answer is looked at again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """How long a client may take; the idle timeout is uvicorn's `timeout_keep_alive`."""

    header_timeout: float = 10.0
    """Seconds from a request's first byte to the end of its header section."""
    request_timeout: float = 30.0
    """Seconds from a request's first byte to its last (the body included); also how
    long a client may read none of its answers."""


class HttpHandler(Protocol):
    """What the protocol serves: `AcmeApp`."""

    @property
    def max_body_bytes(self) -> int: ...

    async def handle(self, request: Request) -> Response: ...

    def error_response(self, request: Request, error: AcmeError) -> Response: ...


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is `_refusal`."""


def _handler_of(config: Config) -> HttpHandler:
    """The handler behind a uvicorn config, found on its first connection."""
    handler: HttpHandler | None = getattr(config, "_acme_http_handler", None)
    if handler is None:
        handler = _find_handler(config.loaded_app)
        config._acme_http_handler = handler  # type: ignore[attr-defined]
    return handler


def _find_handler(app: Any) -> HttpHandler:
    # uvicorn wraps the ASGI app in middlewares (`.app`); the composition root's app
    # exposes the front end's handler once its lifespan startup has built it.
    seen = 0
    while app is not None and seen < 10:
        handler = getattr(app, "http_handler", None)
        if handler is not None:
            return handler  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        seen += 1
    raise RuntimeError("the served application exposes no http_handler")


class _Item:
    """A queued request, or a refusal to answer in its turn and then close."""

    __slots__ = ("keep_alive", "refusal", "request")

    def __init__(
        self, request: Request, *, keep_alive: bool, refusal: AcmeError | None = None
    ) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.refusal = refusal


class AcmeHttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (keep-alive, pipelining in order, 100-continue)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        self._limits = limits or HttpLimits()
        self._state = server_state
        self._loop = _loop or asyncio.get_event_loop()
        self._handler = _handler_of(config)
        self._max_body = self._handler.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: Address | None = None
        self._queue: deque[_Item] = deque()
        self._busy = False
        self._closing = False
        self._reading_done = False
        self._refusal: AcmeError | None = None
        self._write_paused = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._mid_request = False
        self._request_deadline = 0.0
        # The request being read.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._method = "GET"
        self._headers_done = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._state.connections.add(self)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = Address(str(peer[0]), int(peer[1]))
        self._arm(self._config.timeout_keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        self._closing = True
        self._queue.clear()
        self._disarm()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def data_received(self, data: bytes) -> None:
        if self._closing or self._reading_done:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade (h2c, websocket) is not offered: the request is answered as HTTP/1.1
            # when it was complete; what follows its headers is not read.
            if not self._queue and not self._busy:
                self._refuse(malformed("Protocol upgrade is not supported"))
            else:
                self._stop_reading()
        except httptools.HttpParserError as exc:
            # A callback's refusal reaches here wrapped in HttpParserCallbackError.
            refusal, self._refusal = self._refusal, None
            if refusal is None:
                log.info("unparsable HTTP request from %s: %s", self._peer, exc)
                refusal = malformed("The request is not valid HTTP/1.1")
            self._refuse(refusal)

    def pause_writing(self) -> None:
        # A client that sends requests but reads no answers: the queue waits on it
        # with no deadline running, so it is dropped if it reads nothing for as long
        # as a stalled request may take.
        self._write_paused = True
        if self._stall_timer is None:
            self._stall_timer = self._loop.call_later(
                self._limits.request_timeout, self._drop_stalled
            )

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if not self._busy:
            self._next()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after the answer in flight."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self._method = "GET"
        self._headers_done = False
        self._mid_request = True
        # Slowloris: a deadline from the first byte, never moved by later bytes, for the
        # headers and then for the whole request (RFC 9112 §9.5 lets a server close a
        # connection at any time; nothing is owed to a request that is not complete).
        now = self._loop.time()
        self._request_deadline = now + self._limits.request_timeout
        self._arm_at(min(now + self._limits.header_timeout, self._request_deadline))

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        if self._headers_done:
            # A chunked body's trailer: RFC 9110 §6.5.1, not merged into the header
            # section (no field here is defined to allow it), so not read at all.
            return
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._arm_at(self._request_deadline)
        self._method = self._parser.get_method().decode("ascii", "replace")
        version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # RFC 9110 §15.6.6: the parser also reads "HTTP/2.0" and a bare request line
            # (0.9); this server speaks HTTP/1.x only.
            self._refusal = AcmeError(
                type=ProblemType.MALFORMED,
                detail=f"HTTP version {version} is not supported; use HTTP/1.1",
                status=505,
            )
            raise _Refused
        codings = self._transfer_codings()
        if codings is not None and codings != [b"chunked"]:
            # RFC 9112 §6.1: a transfer coding the server does not understand SHOULD
            # be answered 501; only chunked is (the parser read others as chunked).
            self._refusal = AcmeError(
                type=ProblemType.MALFORMED,
                detail="Only the chunked transfer coding is supported",
                status=501,
            )
            raise _Refused
        declared = self._declared_length()
        if declared is not None and declared > self._max_body:
            self._refusal = body_too_large(self._max_body)
            raise _Refused
        if version != "1.0" and self._host_fields() != 1:
            # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks
            # a Host header field or has more than one.
            self._refusal = malformed("An HTTP/1.1 request needs exactly one Host header field")
            raise _Refused
        if self._transport is None or self._busy or self._queue:
            return  # an interim answer would land between earlier answers
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                # RFC 9110 §10.1.1: the client waits for this before sending its body.
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._refusal = body_too_large(self._max_body)
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._new_request()
        try:
            parsed = httptools.parse_url(self._url)
            raw_path = parsed.path
            if raw_path is None or not raw_path.startswith(b"/"):
                raise ValueError("not an origin-form target")
            path = raw_path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, ValueError):
            self._enqueue(
                _Item(request, keep_alive=False, refusal=malformed("Invalid request target"))
            )
            self._stop_reading()
            return
        request.path = unquote(path) if "%" in path else path
        request.query_string = parsed.query or b""
        request.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        keep_alive = self._parser.should_keep_alive()
        self._mid_request = False
        self._arm(None)
        self._enqueue(_Item(request, keep_alive=keep_alive))
        if not keep_alive:
            self._stop_reading()
        elif len(self._queue) >= _MAX_QUEUED:
            self._pause_reading()

    # Requests and answers, in order

    def _new_request(self) -> Request:
        return Request(
            method=self._method,
            path="/",
            query_string=b"",
            headers=Headers(self._headers),
            body=b"",
            client=self._peer,
        )

    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if self._closing or self._write_paused or not self._queue or self._transport is None:
            return
        item = self._queue.popleft()
        self._busy = True
        if self._reading_paused and len(self._queue) < _MAX_QUEUED // 2:
            self._reading_paused = False
            self._transport.resume_reading()
        task = self._loop.create_task(self._answer(item))
        self._state.tasks.add(task)
        task.add_done_callback(self._state.tasks.discard)

    async def _answer(self, item: _Item) -> None:
        request = item.request
        try:
            if item.refusal is not None:
                response = self._handler.error_response(request, item.refusal)
            else:
                if self._config.proxy_headers and "x-forwarded-for" in request.headers:
                    request.client = await _forwarded_client(self._config, request)
                response = await self._handler.handle(request)
            # The last answer before the connection stops reading says it closes.
            last = self._reading_done and not self._queue
            item.keep_alive = item.keep_alive and item.refusal is None and not last
            data = self._serialize(response, request, item.keep_alive)
        except asyncio.CancelledError:
            # Only uvicorn cancels answers: those still running when the graceful
            # shutdown's time is up. Say so (RFC 9110 §15.6.4) rather than hang up
            # without a word; whether the request took effect is unknown, as after any
            # 5xx, and an ACME client retries with a fresh nonce (RFC 8555 §6.5).
            self._answer_shutdown(request)
            raise
        except Exception:
            request_id = secrets.token_hex(8)
            log.exception("unanswerable request, request id %s", request_id)
            error = server_internal(f"An internal error occurred (request id {request_id})")
            try:
                data = self._serialize(
                    self._handler.error_response(request, error), request, keep_alive=False
                )
            except Exception:
                self._close()
                return
            item.keep_alive = False
        self._finish(data, keep_alive=item.keep_alive)

    def _serialize(self, response: Response, request: Request, keep_alive: bool) -> bytes:
        return serialize_response(
            response,
            head=request.method == "HEAD",
            keep_alive=keep_alive and not self._closing,
            default_headers=self._state.default_headers,
        )

    def _finish(self, data: bytes, *, keep_alive: bool) -> None:
        self._busy = False
        self._state.total_requests += 1
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not keep_alive or self._closing:
            self._close()
            return
        if self._queue:
            self._next()
        elif not self._mid_request:
            self._arm(self._config.timeout_keep_alive)

    def _answer_shutdown(self, request: Request) -> None:
        self._busy = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            error = AcmeError(
                type=ProblemType.SERVER_INTERNAL,
                detail="The server is shutting down; retry the request",
                status=503,
                headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER)},
            )
            try:
                response = self._handler.error_response(request, error)
                transport.write(self._serialize(response, request, keep_alive=False))
            except Exception:
                log.exception("no shutdown answer for %s", self._peer)
        self._close()

    def _refuse(self, error: AcmeError) -> None:
        """Answer a request the transport could not accept, after those before it."""
        self._stop_reading()
        self._enqueue(_Item(self._new_request(), keep_alive=False, refusal=error))

    # Connection state

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refusal = AcmeError(
                type=ProblemType.MALFORMED,
                detail=f"Request headers exceed {MAX_HEADER_BYTES} bytes",
                status=431,
            )
            raise _Refused

    def _host_fields(self) -> int:
        return sum(1 for name, _ in self._headers if name == b"host")

    def _transfer_codings(self) -> list[bytes] | None:
        """The request's transfer codings, in order; None without Transfer-Encoding."""
        codings: list[bytes] | None = None
        for name, value in self._headers:
            if name == b"transfer-encoding":
                codings = (codings or []) + [
                    c.strip().lower() for c in value.split(b",") if c.strip()
                ]
        return codings

    def _declared_length(self) -> int | None:
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def _stop_reading(self) -> None:
        # Nothing more is parsed; queued answers still go out, then the connection
        # closes: `_answer` makes the last of them say so (marking every queued one
        # "close" closed the connection after the first of them, and lost the rest).
        self._reading_done = True
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _arm(self, delay: float | None) -> None:
        """Close the connection `delay` seconds from now unless re-armed; None: never.

        Called two or three times per request, so it moves a deadline and lets one
        timer per connection catch up with it, instead of a new timer each time."""
        if delay is None:
            self._deadline = None
            return
        self._arm_at(self._loop.time() + delay)

    def _arm_at(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _disarm(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drop_stalled(self) -> None:
        # Also after `_close`: a closing transport waits for its answers to drain.
        self._stall_timer = None
        if self._write_paused and self._transport is not None:
            log.info(
                "dropped %s: it read no answer for %s s", self._peer, self._limits.request_timeout
            )
            self._abort()

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        elif self._busy:
            # Not while an answer is being made; looked at again after it (the timer
            # was dropped here before: a request left half-read behind a slow answer
            # was never dropped).
            self._timer = self._loop.call_later(_BUSY_RECHECK, self._check_deadline)
        elif self._mid_request:
            # A request begun and stalled (slowloris): nothing is owed to it, and a
            # graceful TLS close would keep the socket up to 30 s more waiting for a
            # close_notify that such a client never sends.
            self._abort()
        else:
            self._deadline = None
            self._close()  # idle keep-alive: a graceful close, the client may be sending

    def _abort(self) -> None:
        """Drop the connection now, owing it nothing (no TLS goodbye, nothing queued)."""
        self._closing = True
        self._queue.clear()
        self._disarm()
        if self._transport is not None:
            self._transport.abort()

    def _close(self) -> None:
        self._closing = True
        self._disarm()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


async def _forwarded_client(config: Config, request: Request) -> Address | None:
    """The client behind a trusted proxy (X-Forwarded-For), decided by uvicorn's own rule."""
    proxy: ProxyHeadersMiddleware | None = getattr(config, "_acme_proxy_headers", None)
    if proxy is None:

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            return None

        proxy = ProxyHeadersMiddleware(inner, trusted_hosts=config.forwarded_allow_ips)
        config._acme_proxy_headers = proxy  # type: ignore[attr-defined]
    scope: dict[str, Any] = {
        "type": "http",
        "client": tuple(request.client) if request.client else None,
        "headers": request.headers.raw,
    }
    await proxy(scope, _no_receive, _no_send)  # type: ignore[arg-type]
    client = scope.get("client")
    return Address(str(client[0]), int(client[1] or 0)) if client else None


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _no_send(message: Any) -> None:
    return None
