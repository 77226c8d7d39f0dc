"""Changed terms of service (RFC 8555 §7.3.3): with `require_terms_reagreement`, an
account that agreed to other terms gets `userActionRequired` until it agrees again.

Accounts are made in the `service` process (terms at its default URL); the operator's
change is a second process on the same database with the new terms, as after a restart.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from acme_ca.bench.client import AcmeClient, AcmeProblem, AcmeResponse, build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.cli import _add_common, _add_serve, _settings
from acme_ca.config import Settings, load_settings
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import issue
from tests.policy_helpers import BASE_URL, client_for, running_service

ERR = "urn:ietf:params:acme:error:"
TERMS_V1 = f"{BASE_URL}/terms"  # the default: the CA's own page
TERMS_V2 = "https://pki.example.test/terms/v2"


@pytest.fixture
async def changed(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> AsyncIterator[AcmeService]:
    """A process started with new terms and re-agreement required."""
    async with running_service(
        data_dir,
        challtestsrv,
        database_url,
        terms_of_service=TERMS_V2,
        require_terms_reagreement=True,
        new_authz=True,
    ) as svc:
        yield svc


def _assert_terms_refusal(problem: AcmeProblem) -> None:
    assert problem.status == 403
    assert problem.type == ERR + "userActionRequired"
    assert f'<{TERMS_V2}>;rel="terms-of-service"' in problem.headers.get_list(
        "link", split_commas=True
    )
    assert problem.body["instance"] == TERMS_V2


async def _refused(call: Awaitable[AcmeResponse]) -> None:
    with pytest.raises(AcmeProblem) as info:
        await call
    _assert_terms_refusal(info.value)


async def _agree(client: AcmeClient, agreed: bool = True) -> AcmeResponse:
    assert client.kid is not None
    return await client.post(client.kid, {"termsOfServiceAgreed": agreed})


@asynccontextmanager
async def _as(svc: AcmeService, here: AcmeClient) -> AsyncIterator[AcmeClient]:
    """The account of `here`, spoken to through the process `svc`."""
    async with client_for(svc, register=False, key=here.key) as there:
        there.kid = here.kid
        yield there


async def test_changed_terms_are_not_enforced_by_default(
    service: AcmeService, data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    async with (
        client_for(service) as here,
        running_service(data_dir, challtestsrv, database_url, terms_of_service=TERMS_V2) as svc,
        _as(svc, here) as there,
    ):
        assert (await there.directory())["meta"]["termsOfService"] == TERMS_V2
        assert (await there.new_order(["tos-off.example.test"])).status == 201


async def test_accounts_that_agreed_to_the_current_terms_pass(changed: AcmeService) -> None:
    async with client_for(changed) as client:
        assert (await client.new_order(["tos-current.example.test"])).status == 201


async def test_changed_terms_refuse_every_gated_endpoint(
    service: AcmeService, changed: AcmeService, challtestsrv: ChallengeTestServer
) -> None:
    async with client_for(service) as here:
        _, _, order = await issue(here, ["tos-gated.example.test"], challtestsrv)
        pending = await here.new_order(["tos-pending.example.test"])
        authz_url = pending.body["authorizations"][0]
        challenge_url = (await here.post_as_get(authz_url)).body["challenges"][0]["url"]
        orders_url = (await here.post_as_get(here.kid or "")).body["orders"]
        csr = build_csr(generate_key("p256"), ["tos-gated.example.test"])
        async with _as(changed, here) as there:
            calls: list[Callable[[], Awaitable[AcmeResponse]]] = [
                lambda: there.new_order(["tos-refused.example.test"]),
                lambda: there.post_as_get(order["url"]),
                lambda: there.finalize(order["finalize"], csr),
                lambda: there.post_as_get(authz_url),
                lambda: there.post_as_get(challenge_url),
                lambda: there.respond_challenge(challenge_url),
                lambda: there.download_certificate(order["certificate"]),
                lambda: there.post_as_get(orders_url),
                lambda: there.post(
                    f"{BASE_URL}/acme/new-authz",
                    {"identifier": {"type": "dns", "value": "tos-pre.example.test"}},
                ),
            ]
            # Twice: the second round goes past any account copy the first one kept.
            for call in calls + calls:
                await _refused(call())
        # Nothing was done: the refused order does not exist, the challenge is untouched.
        listing = await here.post_as_get(orders_url)
        assert len(listing.body["orders"]) == 2
        authz = await here.post_as_get(authz_url)
        assert authz.body["challenges"][0]["status"] == "pending"


async def test_account_url_key_change_and_revocation_stay_open(
    service: AcmeService, changed: AcmeService, challtestsrv: ChallengeTestServer
) -> None:
    async with client_for(service) as here:
        _, cert, _ = await issue(here, ["tos-open.example.test"], challtestsrv)
        async with _as(changed, here) as there:
            assert (await there.post_as_get(there.kid or "")).body["status"] == "valid"
            updated = await there.post(there.kid or "", {"contact": ["mailto:n@example.test"]})
            assert updated.body["contact"] == ["mailto:n@example.test"]
            assert (
                "termsOfService" in (await there.post_as_get(f"{BASE_URL}/directory")).body["meta"]
            )
            assert (await there.change_key(generate_key("p256"))).status == 200
            assert (await there.revoke(cert.public_bytes(Encoding.DER))).status == 200
            # None of these was an agreement.
            await _refused(there.new_order(["tos-still.example.test"]))


async def test_agreeing_again_records_the_current_terms(
    service: AcmeService, changed: AcmeService
) -> None:
    async with client_for(service) as here, _as(changed, here) as there:
        await _refused(there.new_order(["tos-before.example.test"]))
        agreed = await _agree(there)
        assert agreed.body["termsOfServiceAgreed"] is True
        assert (await there.new_order(["tos-after.example.test"])).status == 201
        account_id = (there.kid or "").rsplit("/", 1)[-1]
        stored = await changed.storage.get_account(account_id)
        assert stored is not None
        assert stored.tos_agreed_url == TERMS_V2


async def test_false_is_not_an_agreement(service: AcmeService, changed: AcmeService) -> None:
    async with client_for(service) as here, _as(changed, here) as there:
        await _agree(there, agreed=False)
        await _refused(there.new_order(["tos-false.example.test"]))


async def test_deactivation_is_allowed_without_agreeing(
    service: AcmeService, changed: AcmeService
) -> None:
    async with client_for(service) as here, _as(changed, here) as there:
        await _refused(there.new_order(["tos-deact.example.test"]))
        assert (await there.deactivate_account()).body["status"] == "deactivated"
        with pytest.raises(AcmeProblem) as info:
            await there.new_order(["tos-deact2.example.test"])
        assert info.value.type == ERR + "unauthorized"


async def test_agreement_through_another_process_holds_at_once(
    service: AcmeService,
    changed: AcmeService,
    data_dir: Path,
    challtestsrv: ChallengeTestServer,
    database_url: str,
) -> None:
    """On PostgreSQL a front end keeps accounts between requests (wfe/gate.py): the copy
    kept while the account had not agreed must not outlive its agreement elsewhere."""
    async with (
        running_service(
            data_dir,
            challtestsrv,
            database_url,
            terms_of_service=TERMS_V2,
            require_terms_reagreement=True,
        ) as third,
        client_for(service) as here,
        _as(changed, here) as there,
        _as(third, here) as elsewhere,
    ):
        await _refused(there.new_order(["tos-kept1.example.test"]))  # `changed` keeps it
        await _agree(elsewhere)
        assert (await there.new_order(["tos-kept2.example.test"])).status == 201


async def test_accounts_from_before_the_migration_agreed_to_the_terms_at_upgrade(
    data_dir: Path, challtestsrv: ChallengeTestServer, empty_database_url: str
) -> None:
    """No lock-out on upgrade: an account with no recorded agreement (NULL, as migration
    0004 leaves existing ones) counts as agreeing to the terms of the first start after
    it, and no later terms."""
    async with (
        running_service(data_dir, challtestsrv, empty_database_url) as first,
        client_for(first) as here,
    ):
        account_id = (here.kid or "").rsplit("/", 1)[-1]
        await first.engines.db.write(
            lambda sql: sql.send(
                "UPDATE accounts SET tos_agreed_url = NULL WHERE id = ?", (account_id,)
            )
        )
        same_terms = running_service(
            data_dir, challtestsrv, empty_database_url, require_terms_reagreement=True
        )
        async with same_terms as svc, _as(svc, here) as there:
            assert (await there.new_order(["tos-legacy1.example.test"])).status == 201
        new_terms = running_service(
            data_dir,
            challtestsrv,
            empty_database_url,
            terms_of_service=TERMS_V2,
            require_terms_reagreement=True,
        )
        async with new_terms as svc, _as(svc, here) as there:
            await _refused(there.new_order(["tos-legacy2.example.test"]))
            await _agree(there)
            assert (await there.new_order(["tos-legacy3.example.test"])).status == 201


def test_off_by_default_and_on_by_flag_or_environment() -> None:
    parser = argparse.ArgumentParser()
    _add_common(parser)
    _add_serve(parser)
    assert Settings().require_terms_reagreement is False
    assert _settings(parser.parse_args([])).require_terms_reagreement is False
    assert _settings(parser.parse_args(["--require-terms-reagreement"])).require_terms_reagreement
    env = {"ACME_CA_REQUIRE_TERMS_REAGREEMENT": "true"}
    assert load_settings(environ=env).require_terms_reagreement
