"""The front end's application: one route table, one wrapper for headers and errors.

Every handler is registered here with its methods. The wrapper adds `Replay-Nonce`
(to every answer but those to a GET of another resource than newNonce),
`Link: rel="index"` and `Cache-Control`, and is the one place where an `AcmeError`
becomes a problem document and an unexpected exception becomes `serverInternal`
with no internal detail (logged with a request id).

`AcmeApp.handle` takes a whole request and returns a whole response; the serving
processes call it from their own HTTP/1.1 protocol (`wfe/http_server.py`), and
`AcmeApp.__call__` is an ASGI adapter over it for in-process clients (tests).

Every answer is counted here, where its route's name is known (`acme_ca.metrics`):
by route name, never by path, so IDs and unknown URLs make no series of their own.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acme_ca.errors import AcmeError, ProblemType, malformed, server_internal
from acme_ca.metrics.recorder import UNKNOWN_ENDPOINT
from acme_ca.storage.database import unavailable
from acme_ca.wfe import accounts, orders, preauth, renewal
from acme_ca.wfe.context import FrontEnd
from acme_ca.wfe.http_types import Address, Headers, Request, Response, carries_body
from acme_ca.wfe.responses import body_too_large, problem_response

__all__ = ["AcmeApp", "RouteSpec", "create_app"]

log = logging.getLogger(__name__)

Handler = Callable[[FrontEnd, Request], Awaitable[Response]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_OPENAPI = Path(__file__).with_name("openapi.yaml")
_NEW_NONCE_PATH = "/acme/new-nonce"


def _add_common_headers(fe: FrontEnd, request: Request, response: Response) -> None:
    # On the raw header list: one pass instead of a scan per `MutableHeaders` access.
    raw = response.raw_headers
    cache_at = -1
    for i, (name, _) in enumerate(raw):
        if name == b"cache-control":
            cache_at = i
    # RFC 8555 §6.5 requires a nonce on responses to POST (and §7.2 from newNonce), not
    # to other GETs; as Boulder, none there: the Ruby acme-client gem before 2.0.16 crashes
    # on a Replay-Nonce in the directory's answer (unixcharles/acme-client#232).
    if request.method != "GET" or request.path == _NEW_NONCE_PATH:
        raw.append((b"replay-nonce", fe.nonces.issue().encode("ascii")))
    # RFC 8555 §7.1: Link rel="index" to the directory, in a field line of its own beside
    # any other link: RFC 8288 §3 allows one line with a list too, but
    # golang.org/x/crypto/acme reads one link per line (as Boulder and Pebble send them).
    raw.append((b"link", f'<{fe.urls.directory}>;rel="index"'.encode("latin-1")))
    if request.method == "POST":
        if cache_at >= 0:
            raw[cache_at] = (b"cache-control", b"no-store")
        else:
            raw.append((b"cache-control", b"no-store"))
    elif cache_at < 0:
        raw.append((b"cache-control", b"no-store"))


def _database_unavailable() -> AcmeError:
    return AcmeError(
        type=ProblemType.SERVER_INTERNAL,
        detail="The database is unavailable; try again shortly",
        status=503,
        headers={"Retry-After": "5"},
    )


def _endpoint(fe: FrontEnd, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(fe, request)
        except AcmeError as exc:
            log.info(
                "%s %s -> %d %s: %s",
                request.method,
                request.path,
                exc.http_status,
                exc.type.rsplit(":", 1)[-1],
                exc.detail,
            )
            response = problem_response(exc)
        except Exception as exc:
            if unavailable(exc):
                # The database is down, restarting or locked: nothing was decided, so
                # the client is to come back (RFC 9110 §15.6.4), not told of a bug.
                log.warning("database unavailable: %s %s: %s", request.method, request.path, exc)
                response = problem_response(_database_unavailable())
            else:
                request_id = secrets.token_hex(8)
                log.exception(
                    "unhandled error, request id %s, %s %s",
                    request_id,
                    request.method,
                    request.path,
                )
                response = problem_response(
                    server_internal(f"An internal error occurred (request id {request_id})")
                )
        _add_common_headers(fe, request, response)
        return response

    return endpoint


def _method_not_allowed(allowed: str) -> AcmeError:
    return AcmeError(
        type=ProblemType.METHOD_NOT_ALLOWED,
        detail=f"Method not allowed; use {allowed}",
        headers={"Allow": allowed},
    )


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One entry of the route table: a Starlette-style path and the methods it answers."""

    path: str
    name: str
    """What metrics call it: the directory's name for the resource (newOrder,
    finalize, ...)."""
    methods: frozenset[str]
    """HEAD is answered wherever GET is (RFC 9110 §9.3.2)."""
    endpoint: Callable[[Request], Awaitable[Response]]
    segments: tuple[str, ...]
    literals: tuple[tuple[int, str], ...]
    """(position, text) of the fixed segments."""
    params: tuple[tuple[int, str, bool], ...]
    """(position, name, is_int) of the `{name}` / `{name:int}` segments."""


def _route(
    path: str, name: str, endpoint: Callable[[Request], Awaitable[Response]], methods: list[str]
) -> RouteSpec:
    allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
    segments = tuple(path[1:].split("/"))
    literals: list[tuple[int, str]] = []
    params: list[tuple[int, str, bool]] = []
    for i, pattern in enumerate(segments):
        if pattern.startswith("{"):
            param, _, kind = pattern[1:-1].partition(":")
            params.append((i, param, kind == "int"))
        else:
            literals.append((i, pattern))
    return RouteSpec(
        path=path,
        name=name,
        methods=frozenset(allowed),
        endpoint=endpoint,
        segments=segments,
        literals=tuple(literals),
        params=tuple(params),
    )


def _match(route: RouteSpec, parts: list[str]) -> dict[str, Any] | None:
    for i, text in route.literals:
        if parts[i] != text:
            return None
    params: dict[str, Any] = {}
    for i, name, is_int in route.params:
        part = parts[i]
        # ASCII digits only ("²".isdigit() is true, int() refuses it), and short.
        if not part or (is_int and not (part.isascii() and part.isdigit() and len(part) < 10)):
            return None
        if not is_int and not _PARAM.fullmatch(part):
            return None  # no ID looks like this: NUL, spaces, non-ASCII (404, not a 500)
        params[name] = int(part) if is_int else part
    return params


# IDs are base64url; a renewal-info ID is two of them joined by "." (RFC 9773 §4.1).
_PARAM = re.compile(r"[A-Za-z0-9_.=-]{1,256}")


class AcmeApp:
    """The application: one route table, dispatched by segment count.

    Starlette's application and router wrap every request in two middlewares and
    an exception-handling layer and try each route's regular expression in turn;
    the endpoint wrapper here already turns every error into a problem document,
    so dispatch is a dictionary lookup and a few segment comparisons.
    """

    def __init__(self, fe: FrontEnd, routes: list[RouteSpec]) -> None:
        self._fe = fe
        self._metrics = fe.metrics
        self.routes = routes
        self._by_length: dict[int, list[RouteSpec]] = {}
        for route in routes:
            self._by_length.setdefault(len(route.segments), []).append(route)

    @property
    def max_body_bytes(self) -> int:
        return self._fe.gate.max_body_bytes

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        # Exact paths: "/directory/" or "//directory" is another resource (404).
        parts = request.path[1:].split("/")
        allowed: set[str] = set()
        name = UNKNOWN_ENDPOINT
        for route in self._by_length.get(len(parts), ()):
            params = _match(route, parts)
            if params is None:
                continue
            if request.method in route.methods:
                request.path_params = params
                response = await route.endpoint(request)
                self._metrics.request(
                    route.name,
                    request.method,
                    response.status_code,
                    response.problem,
                    time.perf_counter() - started,
                )
                return response
            allowed |= route.methods
            name = route.name
        if allowed:
            error = _method_not_allowed(", ".join(sorted(allowed)))
        else:
            error = AcmeError(type=ProblemType.NOT_FOUND, detail="Resource not found")
        response = self._problem(request, error)
        self._metrics.request(
            name,
            request.method,
            response.status_code,
            response.problem,
            time.perf_counter() - started,
        )
        return response

    def error_response(self, request: Request, error: AcmeError) -> Response:
        """A problem document with the headers every answer carries (nonce, index link),
        for a request answered without dispatch (refused by the server, cut short by
        shutdown); counted under its route's name, with no duration."""
        response = self._problem(request, error)
        self._metrics.request(
            self._route_name(request), request.method, response.status_code, response.problem, None
        )
        return response

    def _problem(self, request: Request, error: AcmeError) -> Response:
        response = problem_response(error)
        _add_common_headers(self._fe, request, response)
        return response

    def _route_name(self, request: Request) -> str:
        parts = request.path[1:].split("/")
        for route in self._by_length.get(len(parts), ()):
            if _match(route, parts) is not None:
                return route.name
        return UNKNOWN_ENDPOINT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI adapter: the request is read whole (within the size limit), then handled."""
        if scope["type"] != "http":
            return  # lifespan and websockets are the composition root's business
        client = scope.get("client")
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=Headers([(n.lower(), v) for n, v in scope["headers"]]),
            body=b"",
            client=Address(client[0], client[1]) if client else None,
        )
        chunks: list[bytes] = []
        size = 0
        limit = self.max_body_bytes
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # Gone before its request was read: nothing happened, nobody to answer.
                error = malformed("The client disconnected before sending its request")
                response = self.error_response(request, error)
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                response = self.error_response(request, body_too_large(limit))
                break
            chunks.append(chunk)
            if not message.get("more_body", False):
                request.body = b"".join(chunks)
                response = await self.handle(request)
                break
        await _send_asgi(response, scope, send)


async def _send_asgi(response: Response, scope: Scope, send: Send) -> None:
    headers = list(response.raw_headers)
    status = response.status_code
    body = response.body
    if carries_body(status):
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    else:
        body = b""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def create_app(fe: FrontEnd) -> AcmeApp:
    post_only = ["POST"]
    # Names as the directory's (RFC 8555 §7.1.1, RFC 9773 §3) where it has one.
    routes_spec: list[tuple[str, str, Handler, list[str]]] = [
        ("/directory", "directory", accounts.directory, ["GET", "POST"]),
        (_NEW_NONCE_PATH, "newNonce", accounts.new_nonce, ["GET", "HEAD", "POST"]),
        ("/terms", "terms", accounts.terms, ["GET"]),
        ("/acme/new-account", "newAccount", accounts.new_account, post_only),
        ("/acme/acct/{account_id}", "account", accounts.account, post_only),
        ("/acme/acct/{account_id}/orders", "orders", accounts.account_orders, post_only),
        ("/acme/key-change", "keyChange", accounts.key_change, post_only),
        ("/acme/new-order", "newOrder", orders.new_order, post_only),
        ("/acme/new-authz", "newAuthz", preauth.new_authz, post_only),
        ("/acme/order/{order_id}", "order", orders.order, post_only),
        ("/acme/order/{order_id}/finalize", "finalize", orders.finalize, post_only),
        ("/acme/authz/{authz_id}", "authz", orders.authz, post_only),
        ("/acme/chall/{authz_id}/{challenge_id}", "challenge", orders.challenge, post_only),
        ("/acme/cert/{cert_id}", "certificate", orders.certificate, post_only),
        ("/acme/cert/{cert_id}/{index:int}", "certificate", orders.certificate, post_only),
        ("/acme/revoke-cert", "revokeCert", orders.revoke_cert, post_only),
        ("/acme/renewal-info/{cert_id}", "renewalInfo", renewal.renewal_info, ["GET"]),
    ]
    routes = [
        _route(path, name, _endpoint(fe, handler), methods)
        for path, name, handler, methods in routes_spec
    ]
    if _OPENAPI.exists():
        routes.append(_route("/openapi.yaml", "openapi", _endpoint(fe, _openapi), ["GET"]))
    return AcmeApp(fe, routes)


async def _openapi(fe: FrontEnd, request: Request) -> Response:
    return Response(_OPENAPI.read_bytes(), media_type="application/yaml")
