"""Helpers for issuance-policy tests: a service with chosen settings, EAB bindings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from acme_ca.bench.client import AcmeClient, AcmeResponse, Endpoint
from acme_ca.bench.jws import PrivateKey, b64url, generate_key, jwk_of
from acme_ca.config import Settings
from acme_ca.service import AcmeService, build_service
from acme_ca.testing import ChallengeTestServer

BASE_URL = "https://acme.test:14000"
DIRECTORY = f"{BASE_URL}/directory"
NEW_ACCOUNT = f"{BASE_URL}/acme/new-account"
_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


@asynccontextmanager
async def running_service(
    data_dir: Path, cts: ChallengeTestServer, database_url: str, **overrides: Any
) -> AsyncIterator[AcmeService]:
    """The full in-process service (as the `service` fixture) with settings overridden."""
    settings = Settings(
        data_dir=data_dir,
        database=database_url,
        external_url=BASE_URL,
        dns_resolver=f"127.0.0.1:{cts.dns_port}",
        http_01_port=cts.http01_port,
        allow_private_addresses=True,
        **overrides,
    )
    svc = await build_service(settings)
    try:
        yield svc
    finally:
        await svc.ra.drain()
        await svc.close()


@asynccontextmanager
async def client_for(
    svc: AcmeService,
    *,
    register: bool = True,
    client_ip: str = "127.0.0.1",
    key: PrivateKey | None = None,
) -> AsyncIterator[AcmeClient]:
    transport = httpx.ASGITransport(app=svc.app, client=(client_ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        client = AcmeClient(DIRECTORY, account_key=key or generate_key("p256"), http=http)
        if register:
            await client.new_account(contact=["mailto:admin@example.test"])
        yield client


def eab_binding(
    account_key: PrivateKey,
    kid: str,
    hmac_key: bytes,
    *,
    alg: str = "HS256",
    url: str = NEW_ACCOUNT,
    header: dict[str, Any] | None = None,
    payload_jwk: dict[str, Any] | None = None,
) -> dict[str, str]:
    """An External Account Binding JWS (RFC 8555 §7.3.4) over the account's JWK."""
    protected = {"alg": alg, "kid": kid, "url": url, **(header or {})}
    protected_b64 = b64url(json.dumps(protected).encode())
    payload_b64 = b64url(json.dumps(payload_jwk or jwk_of(account_key)).encode())
    digest = _HASHES.get(alg, hashlib.sha256)
    mac = hmac.new(hmac_key, f"{protected_b64}.{payload_b64}".encode(), digest).digest()
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(mac)}


async def new_account_with_eab(client: AcmeClient, binding: dict[str, str] | None) -> AcmeResponse:
    payload: dict[str, Any] = {"termsOfServiceAgreed": True}
    if binding is not None:
        payload["externalAccountBinding"] = binding
    resp = await client.post(NEW_ACCOUNT, payload, endpoint=Endpoint.NEW_ACCOUNT, use_jwk=True)
    client.kid = resp.location
    return resp


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


__all__ = [
    "BASE_URL",
    "DIRECTORY",
    "NEW_ACCOUNT",
    "b64url_decode",
    "client_for",
    "eab_binding",
    "new_account_with_eab",
    "running_service",
]
