"""Access control, and the request-gate rules test_wfe_gate.py leaves out (RFC 8555 §6, §7).

An account reaches only its own resources; another account's is `unauthorized`
(403), a resource that does not exist 404. A deactivated account can do nothing (401),
an expired authorization cannot be validated. Gate rules here: expired nonce,
retry with the badNonce response's nonce, POST-as-GET payloads, Content-Type
parameters, HEAD on POST-only resources, tampered pagination cursors.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update

from acme_ca.bench.client import AcmeProblem, build_csr
from acme_ca.bench.jws import b64url, generate_key, jwk_of, sign_jws
from acme_ca.clock import FakeClock
from acme_ca.nonces import NonceService
from acme_ca.service import AcmeService
from acme_ca.storage import codec
from acme_ca.storage.schema import authzs, jobs, metadata
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, fresh_nonce, issue, post_raw, raw_jws

pytestmark = pytest.mark.asyncio

ERR = "urn:ietf:params:acme:error:"
BASE = "https://acme.test:14000"
POST_ONLY = [
    "/acme/new-account",
    "/acme/acct/x",
    "/acme/acct/x/orders",
    "/acme/key-change",
    "/acme/new-order",
    "/acme/new-authz",
    "/acme/order/x",
    "/acme/order/x/finalize",
    "/acme/authz/x",
    "/acme/chall/x/y",
    "/acme/cert/x",
    "/acme/cert/x/1",
    "/acme/revoke-cert",
]


async def _snapshot(service: AcmeService) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table except used_nonces (which each request writes)."""
    snap: dict[str, list[tuple[Any, ...]]] = {}
    async with service.engines.reader.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name != "used_nonces":
                rows = (await conn.execute(select(table))).all()
                snap[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return snap


async def _problem_of(call: Any) -> AcmeProblem:
    with pytest.raises(AcmeProblem) as info:
        await call
    return info.value


def _der(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)  # type: ignore[no-any-return]


# --- one account, its own resources ------------------------------------------


async def test_foreign_resources_are_unauthorized(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, service: AcmeService
) -> None:
    owner, stranger = await make_client(), await make_client()
    _, _, order = await issue(owner, ["own.example.test"], challtestsrv)
    authz_url = order["authorizations"][0]
    chall_url = (await owner.post_as_get(authz_url)).body["challenges"][0]["url"]
    cert_url = order["certificate"]
    csr = {"csr": b64url(build_csr(generate_key("p256"), ["own.example.test"]))}
    # (foreign URL, URL of the same kind that does not exist, payload)
    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        (order["url"], f"{BASE}/acme/order/missing", None),
        (order["finalize"], f"{BASE}/acme/order/missing/finalize", csr),
        (authz_url, f"{BASE}/acme/authz/missing", None),
        (authz_url, f"{BASE}/acme/authz/missing", {"status": "deactivated"}),
        (chall_url, f"{BASE}/acme/chall/missing/missing", None),
        (chall_url, f"{BASE}/acme/chall/missing/missing", {}),
        (cert_url, f"{BASE}/acme/cert/missing", None),
        (cert_url + "/1", f"{BASE}/acme/cert/missing/1", None),
    ]
    before = await _snapshot(service)
    for foreign, missing, payload in attempts:
        # RFC 8555 §7.5 (and Boulder, Pebble): another account's resource is
        # `unauthorized`; one that does not exist is 404.
        seen = await _problem_of(stranger.post(foreign, payload))
        assert (seen.status, seen.type) == (403, ERR + "unauthorized"), (foreign, seen)
        absent = await _problem_of(stranger.post(missing, payload))
        assert (absent.status, absent.type) == (404, ERR + "malformed"), (missing, absent)
    assert await _snapshot(service) == before
    # The owner still reaches everything.
    assert (await owner.post_as_get(authz_url)).body["status"] == "valid"
    assert (await owner.download_certificate(cert_url)).status == 200


async def test_foreign_account_and_its_orders_list_are_unauthorized(
    make_client: ClientFactory, service: AcmeService
) -> None:
    owner, stranger = await make_client(), await make_client()
    assert owner.kid is not None
    before = await _snapshot(service)
    for url, payload in (
        (owner.kid, None),
        (owner.kid, {"contact": ["mailto:thief@example.test"]}),
        (owner.kid, {"status": "deactivated"}),
        (owner.kid + "/orders", None),
    ):
        problem = await _problem_of(stranger.post(url, payload))
        assert problem.type == ERR + "unauthorized", url
    # A missing account answers the same as a foreign one.
    missing = await _problem_of(stranger.post(f"{BASE}/acme/acct/missing", None))
    assert missing.type == ERR + "unauthorized"
    assert await _snapshot(service) == before
    assert (await owner.post_as_get(owner.kid)).body["status"] == "valid"


async def test_deactivated_account_can_do_nothing(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, service: AcmeService
) -> None:
    client = await make_client()
    _, leaf, order = await issue(client, ["gone.example.test"], challtestsrv)
    pending = await client.new_order(["pending.example.test"])
    authz_url = pending.body["authorizations"][0]
    chall_url = (await client.post_as_get(authz_url)).body["challenges"][0]["url"]
    directory = await client.directory()
    assert client.kid is not None
    await client.deactivate_account()
    before = await _snapshot(service)
    inner = sign_jws(
        generate_key("p256"),
        {"account": client.kid, "oldKey": jwk_of(client.key)},
        url=directory["keyChange"],
        nonce=None,
    )
    csr = {"csr": b64url(build_csr(generate_key("p256"), ["gone.example.test"]))}
    attempts: list[tuple[str, Any]] = [
        (client.kid, None),
        (client.kid, {"contact": ["mailto:new@example.test"]}),
        (client.kid, {"status": "deactivated"}),
        (client.kid + "/orders", None),
        (directory["newOrder"], {"identifiers": [{"type": "dns", "value": "x.example.test"}]}),
        (directory["keyChange"], inner),
        (order["url"], None),
        (pending.location or "", None),
        (order["finalize"], csr),
        (authz_url, None),
        (authz_url, {"status": "deactivated"}),
        (chall_url, None),
        (chall_url, {}),
        (order["certificate"], None),
        (directory["revokeCert"], {"certificate": b64url(_der(leaf))}),
    ]
    for url, payload in attempts:
        problem = await _problem_of(client.post(url, payload))
        # RFC 8555 §7.3.6: 401 unauthorized for any request of a deactivated account.
        assert (problem.status, problem.type) == (401, ERR + "unauthorized"), (url, problem)
    # RFC 8555 §7.3.6: not even newAccount's lookup answers for the key, and it is 401 too.
    for only_existing in (False, True):
        problem = await _problem_of(client.new_account(only_existing=only_existing))
        assert (problem.status, problem.type) == (401, ERR + "unauthorized"), problem
    assert await _snapshot(service) == before


async def test_expired_authz_cannot_be_validated(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, service: AcmeService
) -> None:
    client = await make_client()
    resp = await client.new_order(["late.example.test"])
    authz_url = resp.body["authorizations"][0]
    authz = (await client.post_as_get(authz_url)).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    challtestsrv.add_http01(chall["token"], client.key_authorization(chall["token"]))
    authz_id = authz_url.rsplit("/", 1)[1]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    async with service.engines.writer.begin() as conn:
        await conn.execute(
            update(authzs).where(authzs.c.id == authz_id).values(expires=codec.to_us(past))
        )
    assert (await client.post_as_get(authz_url)).body["status"] == "expired"
    problem = await _problem_of(client.respond_challenge(chall["url"]))
    assert problem.type == ERR + "malformed"
    assert "expired" in problem.detail
    chall_id = chall["url"].rsplit("/", 1)[1]
    async with service.engines.reader.connect() as conn:
        queued = (await conn.execute(select(jobs.c.target_id))).all()
    assert (chall_id,) not in [tuple(r) for r in queued]
    assert (await client.post_as_get(chall["url"])).body["status"] == "pending"
    # The order cannot become ready either.
    order = (await client.post_as_get(resp.location or "")).body
    assert order["status"] in ("invalid", "pending")
    problem = await _problem_of(
        client.finalize(
            resp.body["finalize"], build_csr(generate_key("p256"), ["late.example.test"])
        )
    )
    assert problem.type == ERR + "orderNotReady"


# --- request-gate rules not covered in test_wfe_gate.py ----------------------


async def test_expired_nonce_is_bad_nonce(http: httpx.AsyncClient, service: AcmeService) -> None:
    # A nonce minted by this server's key, but two hours ago with a one-hour lifetime.
    past = FakeClock(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    old = await NonceService.create(service.storage, past, lifetime=dt.timedelta(hours=1))
    key = generate_key("p256")
    url = f"{BASE}/acme/new-account"
    payload = json.dumps({"termsOfServiceAgreed": True}).encode()
    expired = await post_raw(
        http,
        "/acme/new-account",
        raw_jws(key, {"jwk": jwk_of(key), "nonce": old.issue(), "url": url}, payload),
    )
    assert expired.status_code == 400
    assert expired.json()["type"] == ERR + "badNonce"
    assert "expired" in expired.json()["detail"]
    # The same key with a nonce of the same key, but current: accepted.
    current = FakeClock(dt.datetime.now(dt.UTC))
    fresh = await NonceService.create(service.storage, current, lifetime=dt.timedelta(hours=1))
    ok = await post_raw(
        http,
        "/acme/new-account",
        raw_jws(key, {"jwk": jwk_of(key), "nonce": fresh.issue(), "url": url}, payload),
    )
    assert ok.status_code == 201


async def test_bad_nonce_answer_carries_a_usable_nonce(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    url = f"{BASE}/acme/new-account"
    payload = json.dumps({"termsOfServiceAgreed": True}).encode()
    header = {"jwk": jwk_of(key), "nonce": "bogus", "url": url}
    refused = await post_raw(http, "/acme/new-account", raw_jws(key, header, payload))
    assert refused.json()["type"] == ERR + "badNonce"
    assert refused.headers["cache-control"] == "no-store"
    retry = {**header, "nonce": refused.headers["replay-nonce"]}
    assert (
        await post_raw(http, "/acme/new-account", raw_jws(key, retry, payload))
    ).status_code == 201


async def test_post_as_get_resources_refuse_a_payload(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, _, order = await issue(client, ["pag.example.test"], challtestsrv)
    assert client.kid is not None
    for url in (order["url"], order["certificate"], client.kid + "/orders"):
        for payload in ({}, {"x": 1}):
            problem = await _problem_of(client.post(url, payload))
            assert problem.type == ERR + "malformed", url
        assert (await client.post(url, None)).status == 200


@pytest.mark.parametrize(
    "content_type",
    ["application/jose+json; charset=utf-8", "Application/JOSE+JSON", "application/jose+json "],
)
async def test_content_type_parameters_and_case_are_accepted(
    http: httpx.AsyncClient, content_type: str
) -> None:
    # RFC 9110 §8.3.1: media types are case-insensitive and may carry parameters.
    key = generate_key("p256")
    url = f"{BASE}/acme/new-account"
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": url},
        b'{"termsOfServiceAgreed": true}',
    )
    resp = await http.post(
        "/acme/new-account", content=json.dumps(body), headers={"Content-Type": content_type}
    )
    assert resp.status_code == 201


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "application/jose", "text/plain", "jose+json"]
)
async def test_other_content_types_are_415(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = await http.post("/acme/new-order", content=b"{}", headers=headers)
    assert resp.status_code == 415
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["type"] == ERR + "malformed"


async def test_head_and_other_methods_on_post_only_resources_are_405(
    http: httpx.AsyncClient,
) -> None:
    for path in POST_ONLY:
        for method in ("HEAD", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
            resp = await http.request(method, path)
            assert resp.status_code == 405, (method, path)
            assert resp.headers["allow"] == "POST"
            assert resp.headers["content-type"] == "application/problem+json"
            # RFC 8555 §6.5: nonces on answers to POST (and to other methods, as Boulder),
            # none to a GET of another resource than newNonce.
            assert ("replay-nonce" in resp.headers) is (method != "GET"), method
    # The plain GET resources refuse POST.
    for path in ("/terms", "/openapi.yaml"):
        resp = await http.post(path)
        assert resp.status_code == 405
        assert set(resp.headers["allow"].split(", ")) == {"GET", "HEAD"}
    # RFC 8555 §6.3: directory and newNonce take POST-as-GET, so an unsigned POST is
    # refused by the JWS gate rather than by the router.
    for path in ("/directory", "/acme/new-nonce"):
        resp = await http.post(path)
        assert resp.status_code == 415


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        b64url(b"not json"),
        b64url(b"[1]"),
        b64url(b'{"a": 1, "b": 2}'),
        b64url(b'[1e400, "x"]'),
        b64url(b'[99999999999999999999999, "x"]'),
        b64url(b'[-1, "x"]'),
        b64url(b'[true, "x"]'),
        b64url(b'[1, ["x"]]'),
        b64url(b'[1, "' + b"x" * 100 + b'"]'),
        b64url(b'[1, "a\\u0000"]'),  # PostgreSQL text holds no NUL
        b64url(b'[1, "\\udcff"]'),  # nor does any driver encode a lone surrogate
        b64url(b"[" * 5000 + b"]" * 5000),
    ],
)
async def test_tampered_orders_cursor_is_malformed(
    make_client: ClientFactory, http: httpx.AsyncClient, cursor: str
) -> None:
    client = await make_client()
    assert client.kid is not None
    url = f"{client.kid}/orders?cursor={cursor}"
    header = {"kid": client.kid, "nonce": await fresh_nonce(http), "url": url}
    resp = await post_raw(http, url.removeprefix(BASE), raw_jws(client.key, header, None))
    assert resp.status_code == 400, resp.text
    assert resp.json()["type"] == ERR + "malformed"


async def test_eddsa_signed_request_is_judged_not_crashed(make_client: ClientFactory) -> None:
    # joserfc warns on "EdDSA" (RFC 9864); that warning must not become an error.
    client = await make_client(register=False, key_kind="ed25519")
    with pytest.raises(AcmeProblem) as info:
        await client.new_account()
    # Ed25519 account keys are a configuration choice (goodkey), off by default, and
    # with them EdDSA (RFC 8555 §6.2: the problem lists what a client can use). A gate
    # that accepts EdDSA verifies it: gate `test_gate_accepts_the_algorithms_of_a_wider_key_policy`.
    assert info.value.type == ERR + "badSignatureAlgorithm"
    assert "EdDSA" not in info.value.body["algorithms"]


async def test_key_change_cannot_take_a_deactivated_accounts_key(
    make_client: ClientFactory,
) -> None:
    active, gone = await make_client(), await make_client()
    await gone.deactivate_account()
    url = (await active.directory())["keyChange"]
    inner = sign_jws(
        gone.key, {"account": active.kid, "oldKey": jwk_of(active.key)}, url=url, nonce=None
    )
    problem = await _problem_of(active.post(url, inner))
    assert problem.status == 409


async def test_forged_request_does_not_spend_the_nonce(http: httpx.AsyncClient) -> None:
    # The gate checks the signature before it redeems the nonce (wfe/gate.py).
    key, forger = generate_key("p256"), generate_key("p256")
    url = f"{BASE}/acme/new-account"
    header = {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": url}
    tos = b'{"termsOfServiceAgreed": true}'
    forged = await post_raw(http, "/acme/new-account", raw_jws(forger, header, tos))
    assert forged.json()["type"] == ERR + "malformed"
    genuine = await post_raw(http, "/acme/new-account", raw_jws(key, header, tos))
    assert genuine.status_code == 201


async def test_streamed_body_without_length_is_bounded(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    resp = await http.post(
        "/acme/new-account", content=chunks(), headers={"Content-Type": "application/jose+json"}
    )
    assert resp.status_code == 413
    assert resp.json()["type"] == ERR + "malformed"
