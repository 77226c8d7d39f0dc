"""Loopback servers for the benchmark client's tests: a scriptable fake ACME server
(just enough of RFC 8555 to exercise the client's mechanics) and a uvicorn runner.

A plain module rather than a conftest.py, so that its name is unique in the tree."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` on an ephemeral loopback port; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    # A socket listening before the server starts: early connections wait in the backlog.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        server.force_exit = True
        async with asyncio.timeout(5):
            await task
        sock.close()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _problem(
    kind: str, detail: str, status: int = 400, headers: dict[str, str] | None = None
) -> Response:
    body = {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail}
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


@dataclass
class FakeAcme:
    """Answers like an ACME server; knobs script the odd behaviours under test."""

    base: str = ""
    nonces: set[str] = field(default_factory=set)
    bad_nonces_to_send: int = 0  # reject this many well-formed requests with badNonce
    new_order_problem: str | None = None  # answer newOrder with this problem type
    hang_new_order: bool = False
    authz_statuses: list[str] = field(default_factory=lambda: ["pending", "valid"])
    authz_retry_after: str | None = None
    authz_error: dict[str, Any] | None = None
    requests: list[tuple[str, dict[str, Any], Any]] = field(default_factory=list)
    nonce_fetches: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def _nonce(self) -> str:
        nonce = secrets.token_urlsafe(12)
        self.nonces.add(nonce)
        return nonce

    def _headers(self) -> dict[str, str]:
        return {"Replay-Nonce": self._nonce(), "Cache-Control": "no-store"}

    async def _signed(self, request: Request) -> tuple[dict[str, Any], Any] | Response:
        jws = json.loads(await request.body())
        protected = json.loads(_b64decode(jws["protected"]))
        payload = json.loads(_b64decode(jws["payload"])) if jws["payload"] else None
        self.requests.append((request.url.path, protected, payload))
        if protected.get("url") != str(request.url):
            return _problem("unauthorized", "url mismatch", 403)
        nonce = protected.get("nonce")
        if nonce not in self.nonces or self.bad_nonces_to_send > 0:
            self.bad_nonces_to_send = max(0, self.bad_nonces_to_send - 1)
            return _problem("badNonce", "try again", headers=self._headers())
        self.nonces.discard(nonce)
        return protected, payload

    async def directory(self, request: Request) -> Response:
        names = ["newNonce", "newAccount", "newOrder", "revokeCert"]
        paths = ["new-nonce", "new-account", "new-order", "revoke"]
        return JSONResponse({n: f"{self.base}/{p}" for n, p in zip(names, paths, strict=True)})

    async def new_nonce(self, request: Request) -> Response:
        self.nonce_fetches += 1
        return Response(status_code=200, headers=self._headers())

    async def new_account(self, request: Request) -> Response:
        signed = await self._signed(request)
        if isinstance(signed, Response):
            return signed
        headers = {**self._headers(), "Location": f"{self.base}/acct/{next(self._ids)}"}
        return JSONResponse({"status": "valid"}, status_code=201, headers=headers)

    async def new_order(self, request: Request) -> Response:
        signed = await self._signed(request)
        if isinstance(signed, Response):
            return signed
        if self.hang_new_order:
            await asyncio.sleep(3600)
        if self.new_order_problem:
            return _problem(self.new_order_problem, "no", headers=self._headers())
        headers = {**self._headers(), "Location": f"{self.base}/order/1"}
        return JSONResponse(
            {"status": "pending", "authorizations": [f"{self.base}/authz/1"]},
            status_code=201,
            headers=headers,
        )

    async def authz(self, request: Request) -> Response:
        signed = await self._signed(request)
        if isinstance(signed, Response):
            return signed
        status = (
            self.authz_statuses.pop(0) if len(self.authz_statuses) > 1 else (self.authz_statuses[0])
        )
        body: dict[str, Any] = {"status": status, "identifier": {"type": "dns", "value": "a.test"}}
        chall: dict[str, Any] = {"type": "http-01", "url": f"{self.base}/chall/1", "token": "tok"}
        if status == "invalid" and self.authz_error is not None:
            chall["error"] = self.authz_error
        body["challenges"] = [chall]
        headers = self._headers()
        if self.authz_retry_after is not None:
            headers["Retry-After"] = self.authz_retry_after
        return JSONResponse(body, headers=headers)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/directory", self.directory),
                Route("/new-nonce", self.new_nonce, methods=["HEAD", "GET"]),
                Route("/new-account", self.new_account, methods=["POST"]),
                Route("/new-order", self.new_order, methods=["POST"]),
                Route("/authz/{id}", self.authz, methods=["POST"]),
            ]
        )


@contextlib.asynccontextmanager
async def fake_acme_server() -> AsyncIterator[FakeAcme]:
    fake = FakeAcme()
    async with serving(fake.app()) as base:
        fake.base = base
        yield fake
