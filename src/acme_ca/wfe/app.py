"""The Starlette application: one route table, one wrapper for headers and errors.

Every handler is registered here with its methods. The wrapper adds `Replay-Nonce`,
`Link: rel="index"` and `Cache-Control`, and is the one place where an `AcmeError`
becomes a problem document and an unexpected exception becomes `serverInternal`
with no internal detail (logged with a request id).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from acme_ca.errors import AcmeError, ProblemType, server_internal
from acme_ca.wfe import accounts, orders, preauth, renewal
from acme_ca.wfe.context import FrontEnd
from acme_ca.wfe.responses import problem_response

__all__ = ["create_app"]

log = logging.getLogger(__name__)

Handler = Callable[[FrontEnd, Request], Awaitable[Response]]
_OPENAPI = Path(__file__).with_name("openapi.yaml")


def _add_common_headers(fe: FrontEnd, request: Request, response: Response) -> None:
    # RFC 8555 §6.5: a fresh nonce on every response, errors included.
    response.headers["Replay-Nonce"] = fe.nonces.issue()
    index = f'<{fe.urls.directory}>;rel="index"'
    existing = response.headers.get("Link")
    # RFC 8555 §7.1: Link rel="index" to the directory.
    response.headers["Link"] = f"{existing}, {index}" if existing else index
    if request.method == "POST" or "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"


def _endpoint(fe: FrontEnd, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(fe, request)
        except AcmeError as exc:
            log.info(
                "%s %s -> %d %s: %s",
                request.method,
                request.url.path,
                exc.http_status,
                exc.type.rsplit(":", 1)[-1],
                exc.detail,
            )
            response = problem_response(exc)
        except Exception:
            request_id = secrets.token_hex(8)
            log.exception(
                "unhandled error, request id %s, %s %s",
                request_id,
                request.method,
                request.url.path,
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


def create_app(fe: FrontEnd) -> Starlette:
    post_only = ["POST"]
    routes_spec: list[tuple[str, Handler, list[str]]] = [
        ("/directory", accounts.directory, ["GET", "POST"]),
        ("/acme/new-nonce", accounts.new_nonce, ["GET", "HEAD", "POST"]),
        ("/terms", accounts.terms, ["GET"]),
        ("/acme/new-account", accounts.new_account, post_only),
        ("/acme/acct/{account_id}", accounts.account, post_only),
        ("/acme/acct/{account_id}/orders", accounts.account_orders, post_only),
        ("/acme/key-change", accounts.key_change, post_only),
        ("/acme/new-order", orders.new_order, post_only),
        ("/acme/new-authz", preauth.new_authz, post_only),
        ("/acme/order/{order_id}", orders.order, post_only),
        ("/acme/order/{order_id}/finalize", orders.finalize, post_only),
        ("/acme/authz/{authz_id}", orders.authz, post_only),
        ("/acme/chall/{authz_id}/{challenge_id}", orders.challenge, post_only),
        ("/acme/cert/{cert_id}", orders.certificate, post_only),
        ("/acme/cert/{cert_id}/{index:int}", orders.certificate, post_only),
        ("/acme/revoke-cert", orders.revoke_cert, post_only),
        ("/acme/renewal-info/{cert_id}", renewal.renewal_info, ["GET"]),
    ]
    routes = [
        Route(path, _endpoint(fe, handler), methods=methods)
        for path, handler, methods in routes_spec
    ]
    if _OPENAPI.exists():
        routes.append(
            Route(
                "/openapi.yaml", _endpoint(fe, _openapi), methods=["GET"], include_in_schema=False
            )
        )

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            allowed = exc.headers.get("Allow", "POST") if exc.headers else "POST"
            error = _method_not_allowed(allowed)
        elif exc.status_code == 404:
            error = AcmeError(type=ProblemType.NOT_FOUND, detail="Resource not found")
        else:
            error = AcmeError(type=ProblemType.MALFORMED, detail=exc.detail, status=exc.status_code)
        response = problem_response(error)
        _add_common_headers(fe, request, response)
        return response

    return Starlette(routes=routes, exception_handlers={HTTPException: http_exception})


async def _openapi(fe: FrontEnd, request: Request) -> Response:
    return Response(_OPENAPI.read_bytes(), media_type="application/yaml")
