"""Pre-authorization, newAuthz (RFC 8555 §7.4.1): off by default, on by configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from acme_ca.bench.client import AcmeClient, AcmeProblem
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, authz_ids_of, deactivate_account_mid_request
from tests.policy_helpers import BASE_URL, client_for, running_service

NEW_AUTHZ = f"{BASE_URL}/acme/new-authz"


@pytest.fixture
async def preauth_service(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> AsyncIterator[AcmeService]:
    async with running_service(data_dir, challtestsrv, database_url, new_authz=True) as svc:
        yield svc


async def _new_authz(client: AcmeClient, value: str, kind: str = "dns") -> dict[str, Any]:
    resp = await client.post(NEW_AUTHZ, {"identifier": {"type": kind, "value": value}})
    body = dict(resp.body)
    body["_status"] = resp.status
    body["_location"] = resp.location
    return body


async def test_off_by_default(make_client: ClientFactory) -> None:
    client = await make_client()
    assert "newAuthz" not in await client.directory()
    with pytest.raises(AcmeProblem) as info:
        await _new_authz(client, "pre.example.test")
    assert info.value.status == 404


async def test_preauthorized_name_makes_a_ready_order(
    preauth_service: AcmeService, challtestsrv: ChallengeTestServer
) -> None:
    async with client_for(preauth_service) as client:
        assert (await client.directory())["newAuthz"] == NEW_AUTHZ
        authz = await _new_authz(client, "Pre.Example.Test")
        assert authz["_status"] == 201
        assert authz["status"] == "pending"
        assert authz["identifier"] == {"type": "dns", "value": "pre.example.test"}
        url = authz["_location"]
        assert isinstance(url, str)
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        challtestsrv.add_http01(chall["token"], client.key_authorization(chall["token"]))
        await client.respond_challenge(chall["url"])
        await client.poll(url, until={"valid"}, timeout=10)
        # The order reuses the pre-authorization and is ready at once.
        order = await client.new_order(["pre.example.test"])
        assert order.body["status"] == "ready"
        assert order.body["authorizations"] == [url]
        # Asking again returns the live authorization rather than a second one.
        again = await _new_authz(client, "pre.example.test")
        assert again["_status"] == 200
        assert again["_location"] == url


async def test_wildcard_cannot_be_preauthorized(preauth_service: AcmeService) -> None:
    async with client_for(preauth_service) as client:
        with pytest.raises(AcmeProblem) as info:
            await _new_authz(client, "*.pre.example.test")
    assert info.value.type == "urn:ietf:params:acme:error:malformed"
    assert "Wildcard" in info.value.detail


async def test_refused_identifier_is_rejected(preauth_service: AcmeService) -> None:
    async with client_for(preauth_service) as client:
        with pytest.raises(AcmeProblem) as info:
            await _new_authz(client, "com")
    assert info.value.type == "urn:ietf:params:acme:error:rejectedIdentifier"


async def test_ip_identifier_gets_no_dns01(preauth_service: AcmeService) -> None:
    async with client_for(preauth_service) as client:
        authz = await _new_authz(client, "127.0.0.1", kind="ip")
    types = {c["type"] for c in authz["challenges"]}
    assert types == {"http-01", "tls-alpn-01"}


async def test_missing_identifier_is_malformed(preauth_service: AcmeService) -> None:
    async with client_for(preauth_service) as client:
        with pytest.raises(AcmeProblem) as info:
            await client.post(NEW_AUTHZ, {"value": "x"})
    assert info.value.type == "urn:ietf:params:acme:error:malformed"


async def test_account_deactivated_during_new_authz_gets_nothing(
    preauth_service: AcmeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 8555 §7.3.6: verified while the account was valid, its deactivation commits
    before the authorization is inserted: refused, and no pending authz is left."""
    storage = preauth_service.storage
    deactivate_account_mid_request(storage, monkeypatch)
    async with client_for(preauth_service) as client:
        account_id = (client.kid or "").rsplit("/", 1)[-1]
        with pytest.raises(AcmeProblem) as info:
            await _new_authz(client, "meanwhile.example.test")
    assert info.value.status == 401
    assert info.value.type == "urn:ietf:params:acme:error:unauthorized"
    assert info.value.detail == "Account is deactivated"
    assert await authz_ids_of(storage, account_id) == []
