"""Helpers for tests that speak ACME to the in-process service."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
from cryptography import x509
from sqlalchemy import select

from acme_ca.bench.client import AcmeClient, build_csr
from acme_ca.bench.jws import PrivateKey, _sign, b64url, generate_key, jwk_of, jws_alg
from acme_ca.errors import Identifier
from acme_ca.model import Authorization
from acme_ca.storage.schema import authzs
from acme_ca.storage.store import Storage
from acme_ca.testing import ChallengeTestServer

ClientFactory = Callable[..., Awaitable[AcmeClient]]


def raw_jws(
    key: PrivateKey,
    protected: dict[str, Any],
    payload: bytes | None,
    *,
    default_alg: bool = True,
) -> dict[str, str]:
    """A flattened JWS with exactly the given protected header (for negative tests)."""
    header = dict(protected)
    if default_alg:
        header.setdefault("alg", jws_alg(key))
    protected_b64 = b64url(json.dumps(header).encode())
    payload_b64 = "" if payload is None else b64url(payload)
    signature = _sign(key, f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}


async def fresh_nonce(http: httpx.AsyncClient) -> str:
    resp = await http.head("/acme/new-nonce")
    return resp.headers["replay-nonce"]


async def post_raw(http: httpx.AsyncClient, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(
        path, content=content, headers={"Content-Type": "application/jose+json", **headers}
    )


async def order_with_http01(
    client: AcmeClient, names: Sequence[str], cts: ChallengeTestServer
) -> dict[str, Any]:
    """Create an order and answer every authz with http-01; returns the order once ready."""
    resp = await client.new_order(list(names))
    order_url = resp.location
    assert order_url is not None
    for authz_url in resp.body["authorizations"]:
        authz = (await client.post_as_get(authz_url)).body
        if authz["status"] == "valid":
            continue
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        cts.add_http01(chall["token"], client.key_authorization(chall["token"]))
        await client.respond_challenge(chall["url"])
        await client.poll(authz_url, until={"valid"}, timeout=10)
    ready = await client.poll(order_url, until={"ready"}, timeout=10)
    body = dict(ready.body)
    body["url"] = order_url
    return body


async def issue(
    client: AcmeClient, names: Sequence[str], cts: ChallengeTestServer
) -> tuple[PrivateKey, x509.Certificate, dict[str, Any]]:
    order = await order_with_http01(client, names, cts)
    key = generate_key("p256")
    final = await client.finalize(order["finalize"], build_csr(key, list(names)))
    assert final.body["status"] == "valid", final.body
    cert_resp = await client.download_certificate(final.body["certificate"])
    chain = x509.load_pem_x509_certificates(cert_resp.content)
    body = dict(final.body)
    body["url"] = order["url"]
    return key, chain[0], body


__all__ = [
    "ClientFactory",
    "issue",
    "jwk_of",
    "order_with_http01",
    "post_raw",
    "raw_jws",
    "fresh_nonce",
]


def deactivate_account_mid_request(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next newOrder or newAuthz finds its account deactivated after the request was
    verified: the deactivation commits while it looks for an authorization to reuse."""
    find = storage.find_reusable_authz

    async def deactivated_meanwhile(
        account_id: str, identifier: Identifier, *, wildcard: bool, valid_after: dt.datetime
    ) -> Authorization | None:
        await storage.deactivate_account(account_id)
        return await find(account_id, identifier, wildcard=wildcard, valid_after=valid_after)

    monkeypatch.setattr(storage, "find_reusable_authz", deactivated_meanwhile)


async def authz_ids_of(storage: Storage, account_id: str) -> list[str]:
    async with storage.engines.reader.connect() as conn:
        rows = await conn.execute(select(authzs.c.id).where(authzs.c.account_id == account_id))
        return [row[0] for row in rows.all()]
