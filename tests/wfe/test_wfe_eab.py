"""External Account Binding end to end (RFC 8555 §7.3.4): each rule and each refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from acme_ca.bench.client import AcmeClient, AcmeProblem
from acme_ca.bench.jws import generate_key, jwk_of
from acme_ca.clock import SystemClock
from acme_ca.ra.eab import create_eab_key, list_eab_keys, revoke_eab_key
from acme_ca.service import AcmeService
from acme_ca.storage.policy import EabKey, PolicyStore
from acme_ca.testing import ChallengeTestServer
from tests.policy_helpers import (
    client_for,
    eab_binding,
    new_account_with_eab,
    running_service,
)

PREFIX = "urn:ietf:params:acme:error:"


@pytest.fixture
async def eab_service(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> AsyncIterator[AcmeService]:
    async with running_service(data_dir, challtestsrv, database_url, eab_required=True) as svc:
        yield svc


def _store(svc: AcmeService) -> PolicyStore:
    return PolicyStore(svc.engines, SystemClock())


async def _key(svc: AcmeService, label: str | None = None) -> EabKey:
    return await create_eab_key(_store(svc), label=label)


async def _refused(client: AcmeClient, binding: dict[str, str] | None) -> AcmeProblem:
    with pytest.raises(AcmeProblem) as info:
        await new_account_with_eab(client, binding)
    return info.value


async def test_directory_says_external_account_required(eab_service: AcmeService) -> None:
    async with client_for(eab_service, register=False) as client:
        assert (await client.directory())["meta"]["externalAccountRequired"] is True


async def test_account_with_valid_binding_is_created_and_shows_kid(
    eab_service: AcmeService,
) -> None:
    key = await _key(eab_service, label="team-a")
    async with client_for(eab_service, register=False) as client:
        resp = await new_account_with_eab(client, eab_binding(client.key, key.kid, key.hmac_key))
        assert resp.status == 201
        assert resp.body["externalAccountBinding"] == {"kid": key.kid}
        # The same key again finds the account, without a second binding.
        again = await new_account_with_eab(client, None)
        assert again.status == 200
        assert again.location == resp.location
    (listed,) = [k for k in await list_eab_keys(_store(eab_service)) if k.kid == key.kid]
    assert listed.bind_count == 1
    assert listed.account_id is not None
    assert listed.label == "team-a"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_hs384_and_hs512_bindings_are_accepted(eab_service: AcmeService, alg: str) -> None:
    key = await _key(eab_service)
    async with client_for(eab_service, register=False) as client:
        resp = await new_account_with_eab(
            client, eab_binding(client.key, key.kid, key.hmac_key, alg=alg)
        )
        assert resp.status == 201


async def test_missing_binding_is_external_account_required(eab_service: AcmeService) -> None:
    async with client_for(eab_service, register=False) as client:
        problem = await _refused(client, None)
    assert problem.type == PREFIX + "externalAccountRequired"
    assert problem.status == 400


async def test_wrong_mac_is_unauthorized(eab_service: AcmeService) -> None:
    key = await _key(eab_service)
    async with client_for(eab_service, register=False) as client:
        problem = await _refused(client, eab_binding(client.key, key.kid, b"not the key"))
    assert problem.type == PREFIX + "unauthorized"
    assert "MAC" in problem.detail


async def test_unknown_kid_is_unauthorized(eab_service: AcmeService) -> None:
    async with client_for(eab_service, register=False) as client:
        problem = await _refused(client, eab_binding(client.key, "kid-nope", b"k" * 32))
    assert problem.type == PREFIX + "unauthorized"
    assert "Unknown" in problem.detail


async def test_revoked_key_is_unauthorized(eab_service: AcmeService) -> None:
    key = await _key(eab_service)
    assert await revoke_eab_key(_store(eab_service), key.kid)
    assert not await revoke_eab_key(_store(eab_service), key.kid)
    async with client_for(eab_service, register=False) as client:
        problem = await _refused(client, eab_binding(client.key, key.kid, key.hmac_key))
    assert problem.type == PREFIX + "unauthorized"
    assert "revoked" in problem.detail


async def test_reused_key_is_unauthorized(eab_service: AcmeService) -> None:
    key = await _key(eab_service)
    async with client_for(eab_service, register=False) as first:
        await new_account_with_eab(first, eab_binding(first.key, key.kid, key.hmac_key))
    async with client_for(eab_service, register=False) as second:
        problem = await _refused(second, eab_binding(second.key, key.kid, key.hmac_key))
    assert problem.type == PREFIX + "unauthorized"
    assert "already bound" in problem.detail


async def test_bind_many_lets_one_key_bind_several_accounts(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    async with running_service(
        data_dir, challtestsrv, database_url, eab_required=True, eab_bind_many=True
    ) as svc:
        key = await _key(svc)
        for _ in range(2):
            async with client_for(svc, register=False) as client:
                resp = await new_account_with_eab(
                    client, eab_binding(client.key, key.kid, key.hmac_key)
                )
                assert resp.status == 201
        (listed,) = [k for k in await list_eab_keys(_store(svc)) if k.kid == key.kid]
        assert listed.bind_count == 2


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("nonce", "nonce"),
        ("wrong_url", "url"),
        ("alg_rs256", "alg"),
        ("other_key", "payload"),
        ("no_kid", "kid"),
        ("not_jws", "flattened JWS"),
    ],
)
async def test_malformed_binding_is_malformed(
    eab_service: AcmeService, case: str, detail: str
) -> None:
    key = await _key(eab_service)
    async with client_for(eab_service, register=False) as client:
        binding: dict[str, str]
        if case == "nonce":
            binding = eab_binding(client.key, key.kid, key.hmac_key, header={"nonce": "abc"})
        elif case == "wrong_url":
            binding = eab_binding(client.key, key.kid, key.hmac_key, url="https://x.test/n")
        elif case == "alg_rs256":
            binding = eab_binding(client.key, key.kid, key.hmac_key, alg="RS256")
        elif case == "other_key":
            other = jwk_of(generate_key("p256"))
            binding = eab_binding(client.key, key.kid, key.hmac_key, payload_jwk=other)
        elif case == "no_kid":
            binding = eab_binding(client.key, "", key.hmac_key)
        else:
            binding = {"protected": "e30", "payload": "e30"}
        problem = await _refused(client, binding)
    assert problem.type == PREFIX + "malformed"
    assert detail in problem.detail


async def test_binding_is_optional_when_not_required(service: AcmeService) -> None:
    key = await _key(service)
    async with client_for(service, register=False) as client:
        resp = await new_account_with_eab(client, eab_binding(client.key, key.kid, key.hmac_key))
        assert resp.body["externalAccountBinding"] == {"kid": key.kid}
    async with client_for(service, register=False) as plain:
        assert (await new_account_with_eab(plain, None)).status == 201
