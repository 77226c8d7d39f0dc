"""The request gate: one test per JWS and nonce rule (RFC 8555 §6, RFC 7515)."""

from __future__ import annotations

import json

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from acme_ca.bench.client import AcmeProblem
from acme_ca.bench.jws import PrivateKey, b64url, generate_key, jwk_of, jws_alg
from acme_ca.policy.keys import KeyPolicy
from acme_ca.service import AcmeService
from acme_ca.wfe.gate import Gate
from acme_ca.wfe.http_types import Headers, Request
from tests.acme_helpers import ClientFactory, fresh_nonce, post_raw, raw_jws

pytestmark = pytest.mark.asyncio

ERR = "urn:ietf:params:acme:error:"
BASE = "https://acme.test:14000"
NEW_ACCOUNT = f"{BASE}/acme/new-account"
NEW_ORDER = f"{BASE}/acme/new-order"
ACCOUNT_PAYLOAD = json.dumps({"termsOfServiceAgreed": True}).encode()
# The default key policy refuses P-521 and Ed25519 account keys (policy/keys.py), so
# ES512 and EdDSA are not offered (RFC 8555 §6.2).
DEFAULT_ALGORITHMS = ["RS256", "ES256", "ES384"]


def _problem(resp: httpx.Response, status: int, kind: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == ERR + kind, body
    # RFC 8555 §6.5: every response, errors included, carries a fresh nonce.
    assert resp.headers["replay-nonce"]
    return dict(body)


async def test_valid_jwk_request_creates_account(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    resp = await post_raw(http, "/acme/new-account", body)
    assert resp.status_code == 201
    assert resp.headers["location"].startswith(f"{BASE}/acme/acct/")


async def test_wrong_content_type_is_415(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    resp = await http.post(
        "/acme/new-account", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    _problem(resp, 415, "malformed")


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    resp = await post_raw(http, "/acme/new-account", b"{" + b" " * 70_000 + b"}")
    _problem(resp, 413, "malformed")


async def test_compact_serialization_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    compact = f"{body['protected']}.{body['payload']}.{body['signature']}"
    resp = await post_raw(http, "/acme/new-account", compact.encode())
    _problem(resp, 400, "malformed")


async def test_general_serialization_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    general = {
        "payload": body["payload"],
        "signatures": [{"protected": body["protected"], "signature": body["signature"]}],
    }
    _problem(await post_raw(http, "/acme/new-account", general), 400, "malformed")


async def test_unprotected_header_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    _problem(
        await post_raw(http, "/acme/new-account", {**body, "header": {"kid": "x"}}),
        400,
        "malformed",
    )


async def test_duplicate_json_members_are_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    text = json.dumps(body)[:-1] + ', "payload": ""}'
    _problem(await post_raw(http, "/acme/new-account", text.encode()), 400, "malformed")


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", "PS256"])
async def test_disallowed_algorithms(http: httpx.AsyncClient, alg: str) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"alg": alg, "jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    doc = _problem(await post_raw(http, "/acme/new-account", body), 400, "badSignatureAlgorithm")
    assert doc["algorithms"] == DEFAULT_ALGORITHMS


async def test_alg_not_matching_key_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    body = raw_jws(
        key,
        {"alg": "ES384", "jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT},
        ACCOUNT_PAYLOAD,
    )
    _problem(await post_raw(http, "/acme/new-account", body), 400, "badSignatureAlgorithm")


def _key(kind: str) -> PrivateKey:
    return ec.generate_private_key(ec.SECP521R1()) if kind == "p521" else generate_key(kind)


async def _new_account(http: httpx.AsyncClient, key: PrivateKey) -> httpx.Response:
    header = {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT}
    return await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD))


@pytest.mark.parametrize("kind", ["p521", "ed25519"])
async def test_algorithm_of_a_key_the_policy_refuses_is_bad_signature_algorithm(
    http: httpx.AsyncClient, kind: str
) -> None:
    # ES512 and EdDSA verify (protocol/jws.py), but no account could have such a key:
    # refused as an algorithm, with the list a client can follow, not as badPublicKey.
    doc = _problem(await _new_account(http, _key(kind)), 400, "badSignatureAlgorithm")
    assert doc["algorithms"] == DEFAULT_ALGORITHMS


async def test_every_listed_algorithm_gets_an_account(http: httpx.AsyncClient) -> None:
    refused = _problem(await _new_account(http, _key("p521")), 400, "badSignatureAlgorithm")
    kinds = {"RS256": "rsa2048", "ES256": "p256", "ES384": "p384"}
    for alg in refused["algorithms"]:  # type: ignore[attr-defined]
        resp = await _new_account(http, _key(kinds[alg]))
        assert resp.status_code == 201, resp.text


def _gate(service: AcmeService, policy: KeyPolicy) -> Gate:
    fe = service.front_end
    return Gate(
        storage=service.storage, nonces=fe.nonces, urls=fe.urls, algorithms=policy.jws_algorithms
    )


async def test_gate_accepts_the_algorithms_of_a_wider_key_policy(
    service: AcmeService, http: httpx.AsyncClient
) -> None:
    gate = _gate(service, KeyPolicy(allow_p521=True, allow_ed25519=True))
    for key in (_key("p521"), _key("ed25519")):
        header = {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT}
        request = Request(
            method="POST",
            path="/acme/new-account",
            query_string=b"",
            headers=Headers([(b"content-type", b"application/jose+json")]),
            body=json.dumps(raw_jws(key, header, ACCOUNT_PAYLOAD)).encode(),
            client=None,
        )
        verified = await gate.verify(request, allow_jwk=True, allow_kid=False)
        assert verified.jws.header.alg == jws_alg(key)


async def test_gate_refuses_algorithms_it_cannot_verify(service: AcmeService) -> None:
    fe = service.front_end
    for algorithms in [("ES256", "HS256"), ()]:
        with pytest.raises(ValueError, match="JWS algorithms"):
            Gate(storage=service.storage, nonces=fe.nonces, urls=fe.urls, algorithms=algorithms)


async def test_jwk_and_kid_together_are_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    header = {
        "jwk": jwk_of(key),
        "kid": f"{BASE}/acme/acct/x",
        "nonce": await fresh_nonce(http),
        "url": NEW_ACCOUNT,
    }
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        400,
        "malformed",
    )


async def test_neither_jwk_nor_kid_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    header = {"nonce": await fresh_nonce(http), "url": NEW_ACCOUNT}
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        400,
        "malformed",
    )


async def test_private_jwk_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    jwk = {**jwk_of(key), "d": b64url(key.private_numbers().private_value.to_bytes(32, "big"))}  # type: ignore[union-attr]
    header = {"jwk": jwk, "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT}
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        400,
        "badPublicKey",
    )


async def test_bad_signature_is_refused(http: httpx.AsyncClient) -> None:
    key, other = generate_key("p256"), generate_key("p256")
    header = {"jwk": jwk_of(other), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT}
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        400,
        "malformed",
    )


@pytest.mark.parametrize(
    "nonce",
    [None, "", "not-a-nonce", b64url(b"\x00" * 32)],
    ids=["missing", "empty", "malformed", "unknown"],
)
async def test_bad_nonces(http: httpx.AsyncClient, nonce: str | None) -> None:
    key = generate_key("p256")
    header = {"jwk": jwk_of(key), "url": NEW_ACCOUNT}
    if nonce is not None:
        header["nonce"] = nonce
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        400,
        "badNonce",
    )


async def test_reused_nonce_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    nonce = await fresh_nonce(http)
    header = {"jwk": jwk_of(key), "nonce": nonce, "url": NEW_ACCOUNT}
    first = await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD))
    assert first.status_code == 201
    second = await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD))
    _problem(second, 400, "badNonce")


@pytest.mark.parametrize(
    "url", [None, f"{BASE}/acme/new-order", "https://elsewhere.test/acme/new-account"]
)
async def test_url_missing_or_mismatched_is_unauthorized(
    http: httpx.AsyncClient, url: str | None
) -> None:
    key = generate_key("p256")
    header: dict[str, object] = {"jwk": jwk_of(key), "nonce": await fresh_nonce(http)}
    if url is not None:
        header["url"] = url
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        403,
        "unauthorized",
    )


@pytest.mark.parametrize(
    "extra", [{"b64": False}, {"crit": ["b64"], "b64": False}, {"crit": ["exp"]}]
)
async def test_b64_and_crit_are_refused(http: httpx.AsyncClient, extra: dict[str, object]) -> None:
    key = generate_key("p256")
    header = {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ACCOUNT, **extra}
    _problem(
        await post_raw(http, "/acme/new-account", raw_jws(key, header, ACCOUNT_PAYLOAD)),
        400,
        "malformed",
    )


async def test_unknown_kid_is_account_does_not_exist(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    header = {"kid": f"{BASE}/acme/acct/nope", "nonce": await fresh_nonce(http), "url": NEW_ORDER}
    payload = json.dumps({"identifiers": [{"type": "dns", "value": "a.example.test"}]}).encode()
    _problem(
        await post_raw(http, "/acme/new-order", raw_jws(key, header, payload)),
        400,
        "accountDoesNotExist",
    )


@pytest.mark.parametrize("account_id", ["\u0000", "\udcff", "a b", "\u00e9"])
async def test_odd_kid_is_a_problem_not_an_internal_error(
    http: httpx.AsyncClient, account_id: str
) -> None:
    # NUL and lone surrogates are malformed JSON text; other odd IDs are no account.
    key = generate_key("p256")
    header = {
        "kid": f"{BASE}/acme/acct/{account_id}",
        "nonce": await fresh_nonce(http),
        "url": NEW_ORDER,
    }
    payload = json.dumps({"identifiers": [{"type": "dns", "value": "a.example.test"}]}).encode()
    resp = await post_raw(http, "/acme/new-order", raw_jws(key, header, payload))
    assert resp.status_code == 400
    assert resp.json()["type"] in (ERR + "malformed", ERR + "accountDoesNotExist")


@pytest.mark.parametrize("path", ["/acme/order/%00", "/acme/authz/a%20b", "/acme/cert/%C3%A9"])
async def test_odd_path_ids_are_404(http: httpx.AsyncClient, path: str) -> None:
    resp = await http.post(path, content=b"{}", headers={"content-type": "application/jose+json"})
    assert resp.status_code == 404
    assert resp.json()["type"] == ERR + "malformed"


async def test_kid_signed_by_wrong_key_is_refused(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    client = await make_client()
    intruder = generate_key("p256")
    header = {"kid": client.kid, "nonce": await fresh_nonce(http), "url": NEW_ORDER}
    payload = json.dumps({"identifiers": [{"type": "dns", "value": "a.example.test"}]}).encode()
    _problem(
        await post_raw(http, "/acme/new-order", raw_jws(intruder, header, payload)),
        400,
        "malformed",
    )


async def test_jwk_on_kid_resource_is_refused(http: httpx.AsyncClient) -> None:
    key = generate_key("p256")
    header = {"jwk": jwk_of(key), "nonce": await fresh_nonce(http), "url": NEW_ORDER}
    payload = json.dumps({"identifiers": [{"type": "dns", "value": "a.example.test"}]}).encode()
    _problem(
        await post_raw(http, "/acme/new-order", raw_jws(key, header, payload)), 400, "malformed"
    )


async def test_post_as_get_payload_on_new_order_is_malformed(make_client: ClientFactory) -> None:
    client = await make_client()
    with pytest.raises(AcmeProblem) as info:
        await client.post_as_get((await client.directory())["newOrder"])
    assert info.value.type == ERR + "malformed"


async def test_non_object_payload_on_order_is_malformed(
    http: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    client = await make_client()
    order_url = (await client.new_order(["pag.example.test"])).location or ""
    header = {"kid": client.kid, "nonce": await fresh_nonce(http), "url": order_url}
    resp = await post_raw(http, order_url.removeprefix(BASE), raw_jws(client.key, header, b"[]"))
    _problem(resp, 400, "malformed")


async def test_client_gone_before_its_body_is_no_internal_error(http: httpx.AsyncClient) -> None:
    # A raw ASGI call whose client disconnects before the body arrives.
    app = http._transport.app  # type: ignore[attr-defined]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/acme/new-order",
        "query_string": b"",
        "headers": [(b"content-type", b"application/jose+json")],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/problem+json"  # type: ignore[call-overload]
