"""Hostile input against every POST endpoint: hypothesis mutates valid signed requests.

Each example starts from a valid, signed request to one endpoint of the in-process
app and breaks it: flipped, cut or spliced bytes; JWS members removed, duplicated,
added or of the wrong type; protected-header members dropped or replaced (re-signed,
so that the request reaches the checks behind the signature); payloads of random
JSON, random bytes, huge strings, huge integers and deep nesting; other
Content-Types; replays. The property: every answer is either a success or a
well-formed problem document with a 4xx status, never a 5xx, and a refused request
leaves every table but `used_nonces` exactly as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from acme_ca.bench.client import AcmeClient
from acme_ca.bench.jws import PrivateKey, _sign, b64url, generate_key, jwk_of, jws_alg, sign_jws
from acme_ca.service import AcmeService
from acme_ca.storage.schema import metadata
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue

pytestmark = pytest.mark.asyncio

BASE = "https://acme.test:14000"
JOSE = "application/jose+json"

# Values of every JSON type, small and hostile, for members, header fields and payloads.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "deactivated", "valid", "mailto:a@b.test", "dns", "ip", "*", "\x00"])
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=15,
)
# Raw JSON texts Python's encoder would never write.
hostile_json_texts = st.sampled_from(
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b"9" * 5000,
        b'{"identifiers": ' + b"1" * 4400 + b"}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1, "a": 2}',
        b'{"a": "\xff\xfe"}',
        '{"a": 1}'.encode("utf-16"),
        b"\xef\xbb\xbf{}",
        b'{"a": "' + b"x" * 40_000 + b'"}',
        b"",
        b"null",
        b'"\\ud800"',
    ]
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    payload: bytes | None
    """The valid payload of the template request; None for POST-as-GET."""
    use_jwk: bool = False


@dataclass(slots=True)
class World:
    http: httpx.AsyncClient
    service: AcmeService
    key: PrivateKey
    kid: str
    endpoints: list[Endpoint]


async def _snapshot(service: AcmeService) -> dict[str, list[str]]:
    snap: dict[str, list[str]] = {}
    async with service.engines.reader.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name != "used_nonces":
                rows = (await conn.execute(select(table))).all()
                snap[table.name] = sorted(repr(tuple(r)) for r in rows)
    return snap


@pytest.fixture
async def world(
    service: AcmeService,
    http: httpx.AsyncClient,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
) -> World:
    client: AcmeClient = await make_client()
    assert client.kid is not None
    _, leaf, done = await issue(client, ["fuzz.example.test"], challtestsrv)
    pending = await client.new_order(["pending.fuzz.example.test"])
    authz_url = pending.body["authorizations"][0]
    chall_url = (await client.post_as_get(authz_url)).body["challenges"][0]["url"]
    directory = await client.directory()
    # A key change the server must refuse (wrong oldKey) even if the outer JWS is fine,
    # so that no example can take the account's key away from the others.
    inner = sign_jws(
        generate_key("p256"),
        {"account": client.kid, "oldKey": jwk_of(generate_key("p256"))},
        url=directory["keyChange"],
        nonce=None,
    )
    der = leaf.public_bytes(serialization.Encoding.DER)
    order_body = {"identifiers": [{"type": "dns", "value": "new.fuzz.example.test"}]}
    endpoints = [
        Endpoint("/acme/new-account", b'{"termsOfServiceAgreed": true}', use_jwk=True),
        Endpoint(client.kid.removeprefix(BASE), None),
        Endpoint(client.kid.removeprefix(BASE), b'{"contact": []}'),
        Endpoint(client.kid.removeprefix(BASE) + "/orders", None),
        Endpoint("/acme/key-change", json.dumps(inner).encode()),
        Endpoint("/acme/new-order", json.dumps(order_body).encode()),
        Endpoint(
            "/acme/new-authz", json.dumps({"identifier": order_body["identifiers"][0]}).encode()
        ),
        Endpoint(pending.location.removeprefix(BASE), None),  # type: ignore[union-attr]
        Endpoint(pending.body["finalize"].removeprefix(BASE), b'{"csr": "MAA"}'),
        Endpoint(done["finalize"].removeprefix(BASE), b'{"csr": "MAA"}'),
        Endpoint(authz_url.removeprefix(BASE), None),
        Endpoint(chall_url.removeprefix(BASE), None),
        Endpoint(chall_url.removeprefix(BASE), b"{}"),
        Endpoint(done["certificate"].removeprefix(BASE), None),
        Endpoint(done["certificate"].removeprefix(BASE) + "/1", None),
        Endpoint(
            "/acme/revoke-cert", json.dumps({"certificate": b64url(der), "reason": 7}).encode()
        ),
        Endpoint("/acme/revoke-cert", json.dumps({"certificate": b64url(der)}).encode()),
        Endpoint("/acme/no-such-endpoint", b"{}"),
    ]
    return World(http=http, service=service, key=client.key, kid=client.kid, endpoints=endpoints)


def _header(world: World, endpoint: Endpoint, nonce: str) -> dict[str, Any]:
    header: dict[str, Any] = {
        "alg": jws_alg(world.key),
        "nonce": nonce,
        "url": BASE + endpoint.path,
    }
    if endpoint.use_jwk:
        header["jwk"] = jwk_of(world.key)
    else:
        header["kid"] = world.kid
    return header


def _sign_raw(key: PrivateKey, header: Any, payload_b64: str) -> dict[str, str]:
    protected = b64url(json.dumps(header).encode())
    signature = _sign(key, f"{protected}.{payload_b64}".encode())
    return {"protected": protected, "payload": payload_b64, "signature": b64url(signature)}


def _payload_b64(payload: bytes | None) -> str:
    return "" if payload is None else b64url(payload)


MUTATIONS = [
    "flip",
    "truncate",
    "splice",
    "drop_member",
    "dup_member",
    "extra_member",
    "member_type",
    "header_drop",
    "header_set",
    "header_alg",
    "header_unsigned",
    "key_material",
    "payload_json",
    "payload_bytes",
    "payload_hostile",
    "payload_not_b64",
    "random_body",
    "content_type",
    "replay",
]


async def _build(
    data: st.DataObject, world: World, endpoint: Endpoint, kind: str
) -> tuple[bytes, str]:
    """(request body, Content-Type) for one mutation of a valid request to `endpoint`."""
    nonce = (await world.http.head("/acme/new-nonce")).headers["replay-nonce"]
    header = _header(world, endpoint, nonce)
    valid = _sign_raw(world.key, header, _payload_b64(endpoint.payload))
    text = json.dumps(valid).encode()
    if kind == "flip":
        raw = bytearray(text)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        return bytes(raw), JOSE
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text) - 1))], JOSE
    if kind == "splice":
        i = data.draw(st.integers(0, len(text)))
        return text[:i] + data.draw(st.binary(min_size=1, max_size=20)) + text[i:], JOSE
    if kind == "drop_member":
        member = data.draw(st.sampled_from(sorted(valid)))
        return json.dumps({k: v for k, v in valid.items() if k != member}).encode(), JOSE
    if kind == "dup_member":
        member = data.draw(st.sampled_from(sorted(valid)))
        again = json.dumps(data.draw(st.sampled_from([valid[member], *valid.values()])))
        return text[:-1] + f', "{member}": {again}}}'.encode(), JOSE
    if kind == "extra_member":
        name = data.draw(st.sampled_from(["header", "signatures", "x", "unprotected"]))
        return json.dumps({**valid, name: data.draw(json_values)}).encode(), JOSE
    if kind == "member_type":
        member = data.draw(st.sampled_from(sorted(valid)))
        value = data.draw(json_values.filter(lambda v: not isinstance(v, str)))
        return json.dumps({**valid, member: value}).encode(), JOSE
    if kind == "header_drop":
        name = data.draw(st.sampled_from(sorted(header)))
        mutated = {k: v for k, v in header.items() if k != name}
        return json.dumps(_sign_raw(world.key, mutated, valid["payload"])).encode(), JOSE
    if kind == "header_set":
        name = data.draw(
            st.sampled_from(["alg", "jwk", "kid", "nonce", "url", "crit", "b64", "typ", "x5c"])
        )
        mutated = {**header, name: data.draw(json_values)}
        return json.dumps(_sign_raw(world.key, mutated, valid["payload"])).encode(), JOSE
    if kind == "header_alg":
        alg = data.draw(
            st.sampled_from(["none", "HS256", "RS256", "ES384", "ES512", "EdDSA", "PS256", ""])
        )
        mutated = {**header, "alg": alg}
        return json.dumps(_sign_raw(world.key, mutated, valid["payload"])).encode(), JOSE
    if kind == "header_unsigned":
        # A changed header with the old signature: must never pass.
        mutated = {**header, data.draw(st.sampled_from(sorted(header))): data.draw(json_values)}
        forged = {**valid, "protected": b64url(json.dumps(mutated).encode())}
        return json.dumps(forged).encode(), JOSE
    if kind == "key_material":
        jwk = jwk_of(world.key)
        choice = data.draw(st.sampled_from(["both", "private", "other-key", "broken"]))
        mutated = dict(header)
        if choice == "both":
            mutated.update(jwk=jwk, kid=world.kid)
        elif choice == "private":
            mutated.pop("kid", None)
            mutated["jwk"] = {**jwk, "d": "AQAB"}
        elif choice == "other-key":
            mutated.pop("kid", None)
            mutated["jwk"] = jwk_of(generate_key("p256"))
        else:
            mutated.pop("kid", None)
            mutated["jwk"] = {**jwk, "x": data.draw(st.text(max_size=50))}
        return json.dumps(_sign_raw(world.key, mutated, valid["payload"])).encode(), JOSE
    if kind == "payload_json":
        payload = json.dumps(data.draw(json_values)).encode()
        return json.dumps(_sign_raw(world.key, header, b64url(payload))).encode(), JOSE
    if kind == "payload_bytes":
        payload = data.draw(st.binary(max_size=100))
        return json.dumps(_sign_raw(world.key, header, b64url(payload))).encode(), JOSE
    if kind == "payload_hostile":
        payload = data.draw(hostile_json_texts)
        return json.dumps(_sign_raw(world.key, header, b64url(payload))).encode(), JOSE
    if kind == "payload_not_b64":
        junk = data.draw(st.text(min_size=1, max_size=40))
        return json.dumps(_sign_raw(world.key, header, junk)).encode(), JOSE
    if kind == "random_body":
        body = data.draw(
            st.binary(min_size=1, max_size=200)
            | json_values.map(lambda v: json.dumps(v).encode())
            | hostile_json_texts
        )
        return body or b" ", JOSE
    if kind == "content_type":
        content_type = data.draw(
            st.sampled_from(["application/json", "text/plain", "", "application/jose", "*/*"])
            | st.text(max_size=30).filter(lambda t: t.isprintable() and t.isascii())
        )
        return text, content_type
    raise AssertionError(kind)


def _check_problem(resp: httpx.Response) -> None:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/problem+json", resp.headers
    doc = resp.json()
    assert isinstance(doc, dict)
    assert isinstance(doc.get("type"), str)
    assert doc["type"].startswith("urn:ietf:params:acme:error:")
    assert isinstance(doc.get("detail"), str)
    assert doc.get("status") == resp.status_code
    # RFC 8555 §6.5: a fresh nonce on every answer, errors included.
    assert resp.headers["replay-nonce"]
    assert 'rel="index"' in resp.headers["link"]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
async def test_mutated_requests_get_problems_and_change_nothing(
    world: World, data: st.DataObject
) -> None:
    endpoint = data.draw(st.sampled_from(world.endpoints), label="endpoint")
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    if kind == "replay":
        nonce = (await world.http.head("/acme/new-nonce")).headers["replay-nonce"]
        body = json.dumps(
            _sign_raw(world.key, _header(world, endpoint, nonce), _payload_b64(endpoint.payload))
        ).encode()
        await world.http.post(endpoint.path, content=body, headers={"Content-Type": JOSE})
        await world.service.ra.drain()
        content_type = JOSE
    else:
        body, content_type = await _build(data, world, endpoint, kind)
    before = await _snapshot(world.service)
    resp = await world.http.post(
        endpoint.path, content=body, headers={"Content-Type": content_type}
    )
    assert resp.status_code < 500, (resp.status_code, resp.text)
    if resp.status_code < 300:
        # A mutation that is still a valid request (re-signed header or payload).
        assert kind not in ("header_unsigned", "replay", "content_type", "random_body"), kind
        await world.service.ra.drain()
        return
    _check_problem(resp)
    assert await _snapshot(world.service) == before
