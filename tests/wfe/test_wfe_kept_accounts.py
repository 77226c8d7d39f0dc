"""A front end may keep accounts between requests (PostgreSQL: the nonce redemption
re-checks the account in the same statement). A key change or a deactivation made
through another process holds at once (RFC 8555 §7.3.5, §7.3.6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from acme_ca.bench.client import AcmeProblem
from acme_ca.bench.jws import generate_key
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.policy_helpers import client_for, running_service

pytestmark = pytest.mark.asyncio

ERR = "urn:ietf:params:acme:error:"


@pytest.fixture
async def other(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> AsyncIterator[AcmeService]:
    """A second process on the same database."""
    async with running_service(data_dir, challtestsrv, database_url) as svc:
        yield svc


async def test_old_key_is_refused_at_once_after_a_key_change_elsewhere(
    service: AcmeService, other: AcmeService
) -> None:
    key = generate_key("p256")
    async with client_for(service, key=key) as here:
        await here.new_order(["kept1.example.test"])  # this front end now knows the account
        async with client_for(other, register=False, key=key) as there:
            there.kid = here.kid
            assert (await there.change_key(generate_key("p256"))).status == 200
        with pytest.raises(AcmeProblem) as refused:
            await here.new_order(["kept2.example.test"])  # still signed with the old key
        assert refused.value.type == ERR + "malformed"
        here.key = there.key
        here._thumbprint = here.thumbprint
        assert (await here.new_order(["kept3.example.test"])).status == 201


async def test_new_key_is_accepted_at_once_after_a_key_change_elsewhere(
    service: AcmeService, other: AcmeService
) -> None:
    key = generate_key("p256")
    async with client_for(service, key=key) as here:
        await here.new_order(["kept6.example.test"])  # this front end now knows the account
        async with client_for(other, register=False, key=key) as there:
            there.kid = here.kid
            assert (await there.change_key(generate_key("p256"))).status == 200
        # Straight away with the new key: the kept copy (old key) must not refuse it.
        here.key = there.key
        here._thumbprint = here.thumbprint
        assert (await here.new_order(["kept7.example.test"])).status == 201


async def test_deactivation_elsewhere_holds_at_once(
    service: AcmeService, other: AcmeService
) -> None:
    key = generate_key("p256")
    async with client_for(service, key=key) as here:
        await here.new_order(["kept4.example.test"])
        async with client_for(other, register=False, key=key) as there:
            there.kid = here.kid
            await there.deactivate_account()
        with pytest.raises(AcmeProblem) as refused:
            await here.new_order(["kept5.example.test"])
        assert refused.value.type == ERR + "unauthorized"
