"""The ACME client's mechanics against a scripted loopback server: nonces, badNonce
retry, problem documents, polling, and the latency hook."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time

import pytest
from cryptography import x509

from acme_ca.bench.client import (
    AcmeClient,
    AcmeProblem,
    Endpoint,
    PollFailed,
    RequestHook,
    build_csr,
    identifier_of,
    parse_retry_after,
)
from acme_ca.bench.jws import KeyKind, generate_key, jwk_thumbprint
from tests.bench.bench_fakes import FakeAcme, fake_acme_server


async def _client(fake: FakeAcme, on_request: RequestHook | None = None) -> AcmeClient:
    client = AcmeClient(
        f"{fake.base}/directory",
        account_key=generate_key(KeyKind.P256),
        timeout=5,
        on_request=on_request,
    )
    await client.new_account()
    return client


async def test_new_account_uses_jwk_then_kid_and_reuses_nonces() -> None:
    async with fake_acme_server() as fake:
        async with await _client(fake) as client:
            assert client.kid == f"{fake.base}/acct/0"
            await client.new_order(["a.test"])
            await client.post_as_get(f"{fake.base}/authz/1")
        (_, first, _), (_, second, _), (_, third, payload) = fake.requests
        assert "jwk" in first
        assert "kid" not in first
        assert second["kid"] == third["kid"] == client.kid
        assert "jwk" not in second
        assert payload is None  # POST-as-GET
        # RFC 8555 §7.2: one newNonce request; later nonces come from Replay-Nonce.
        assert fake.nonce_fetches == 1


async def test_bad_nonce_is_retried_once() -> None:
    async with fake_acme_server() as fake, await _client(fake) as client:
        fake.bad_nonces_to_send = 1
        resp = await client.new_order(["a.test"])
        assert resp.status == 201
        assert len(fake.requests) == 3  # account, rejected order, retried order


async def test_bad_nonce_twice_raises() -> None:
    async with fake_acme_server() as fake, await _client(fake) as client:
        fake.bad_nonces_to_send = 2
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["a.test"])
        assert info.value.type == "urn:ietf:params:acme:error:badNonce"


async def test_problem_document_becomes_typed_error() -> None:
    async with fake_acme_server() as fake, await _client(fake) as client:
        fake.new_order_problem = "rejectedIdentifier"
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["a.test"])
        problem = info.value
        assert (problem.status, problem.type, problem.detail) == (
            400,
            "urn:ietf:params:acme:error:rejectedIdentifier",
            "no",
        )
        assert problem.body["detail"] == "no"


async def test_post_without_account_is_refused() -> None:
    async with fake_acme_server() as fake:
        client = AcmeClient(f"{fake.base}/directory", account_key=generate_key(KeyKind.P256))
        async with client:
            with pytest.raises(ValueError, match="new_account"):
                await client.new_order(["a.test"])


async def test_poll_until_valid_and_hook_sees_each_request() -> None:
    seen: list[tuple[str, int]] = []
    async with fake_acme_server() as fake:
        client = await _client(fake, on_request=lambda e, s, st: seen.append((e, st)))
        async with client:
            fake.authz_statuses = ["pending", "pending", "valid"]
            resp = await client.poll(
                f"{fake.base}/authz/1", until={"valid"}, endpoint=Endpoint.AUTHZ, min_delay=0.001
            )
        assert resp.body["status"] == "valid"
        assert seen[:2] == [("directory", 200), ("newNonce", 200)]
        assert seen[2] == ("newAccount", 201)
        assert seen[3:] == [("authz", 200)] * 3


async def test_poll_caps_retry_after() -> None:
    async with fake_acme_server() as fake, await _client(fake) as client:
        fake.authz_statuses = ["pending", "valid"]
        fake.authz_retry_after = "30"
        start = time.monotonic()
        await client.poll(f"{fake.base}/authz/1", until={"valid"}, max_delay=0.05)
        assert time.monotonic() - start < 5


async def test_poll_failure_carries_the_challenge_error() -> None:
    async with fake_acme_server() as fake, await _client(fake) as client:
        fake.authz_statuses = ["invalid"]
        fake.authz_error = {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}
        with pytest.raises(PollFailed) as info:
            await client.poll(f"{fake.base}/authz/1", until={"valid"})
        assert info.value.status == "invalid"
        assert info.value.problem is not None
        assert info.value.problem.type == "urn:ietf:params:acme:error:connection"


async def test_poll_times_out() -> None:
    async with fake_acme_server() as fake, await _client(fake) as client:
        fake.authz_statuses = ["pending"]
        with pytest.raises(TimeoutError):
            await client.poll(f"{fake.base}/authz/1", until={"valid"}, timeout=0.2, max_delay=0.05)


def test_key_authorization_and_dns01_value() -> None:
    key = generate_key(KeyKind.P256)
    client = AcmeClient("http://127.0.0.1:1/directory", account_key=key)
    key_auth = client.key_authorization("tok")
    assert key_auth == f"tok.{jwk_thumbprint(key)}"  # RFC 8555 §8.1
    digest = hashlib.sha256(key_auth.encode()).digest()
    assert client.dns01_txt_value("tok") == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_identifiers_and_csr() -> None:
    assert identifier_of("a.test") == {"type": "dns", "value": "a.test"}
    assert identifier_of("127.0.0.1") == {"type": "ip", "value": "127.0.0.1"}  # RFC 8738
    csr = x509.load_der_x509_csr(build_csr(generate_key(KeyKind.P256), ["a.test", "b.test"]))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_the_client_imports_nothing_of_the_server() -> None:
    # The benchmark is an external client: it must measure any ACME server alike.
    code = (
        "import sys, acme_ca.bench, acme_ca.bench.compare\n"
        "print(sorted(m for m in sys.modules if m.startswith('acme_ca')"
        " and not m.startswith('acme_ca.bench')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() in ("['acme_ca']", "['acme_ca', 'acme_ca.errors']")
