"""Rate limits end to end: each refusal is `rateLimited` (429) with Retry-After and a help link.

Each test has a database of its own (`empty_database_url`), so counts start at zero.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from acme_ca.bench.client import AcmeClient, AcmeProblem, PollFailed
from acme_ca.bench.jws import generate_key
from acme_ca.clock import SystemClock
from acme_ca.policy.ratelimits import LimitName
from acme_ca.service import AcmeService
from acme_ca.storage.policy import PolicyStore
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import issue
from tests.policy_helpers import client_for, running_service

RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"

ServiceFactory = Callable[..., AbstractAsyncContextManager[AcmeService]]


@pytest.fixture
def limited(
    data_dir: Path, challtestsrv: ChallengeTestServer, empty_database_url: str
) -> ServiceFactory:
    def make(**rules: Any) -> AbstractAsyncContextManager[AcmeService]:
        return running_service(data_dir, challtestsrv, empty_database_url, rate_limit_rules=rules)

    return make


def _assert_limited(problem: AcmeProblem, limit: str, *, max_retry: float) -> None:
    assert problem.type == RATE_LIMITED, problem
    assert problem.status == 429
    assert limit in problem.detail
    retry = float(problem.headers["retry-after"])
    assert 1 <= retry <= max_retry
    links = problem.headers.get_list("link", split_commas=True)
    assert any(
        'rel="help"' in link and "letsencrypt.org/docs/rate-limits" in link for link in links
    )
    assert any('rel="index"' in link for link in links)


def _per(count: int, period: str) -> dict[str, Any]:
    return {"count": count, "period": period}


async def test_new_accounts_per_ip(limited: ServiceFactory) -> None:
    async with limited(new_accounts_per_ip=_per(2, "3h")) as svc:
        for _ in range(2):
            async with client_for(svc, client_ip="10.1.1.1"):
                pass
        with pytest.raises(AcmeProblem) as info:
            async with client_for(svc, client_ip="10.1.1.1"):
                pass
        _assert_limited(info.value, "newAccountsPerIP", max_retry=3 * 3600)
        assert "10.1.1.1" in info.value.detail
        # Another address has its own count.
        async with client_for(svc, client_ip="10.1.1.2"):
            pass


async def test_new_orders_per_account(limited: ServiceFactory) -> None:
    async with limited(new_orders_per_account=_per(2, "1h")) as svc, client_for(svc) as client:
        await client.new_order(["o1.example.test"])
        await client.new_order(["o2.example.test"])
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["o3.example.test"])
        _assert_limited(info.value, "newOrdersPerAccount", max_retry=3600)
        assert float(info.value.headers["retry-after"]) > 3500  # the first order is fresh


async def test_account_override_raises_the_limit_of_that_account(
    limited: ServiceFactory,
) -> None:
    key = generate_key("p256")
    async with (
        limited(new_orders_per_account=_per(1, "1h")) as svc,
        client_for(svc, key=key) as client,
    ):
        await client.new_order(["ov1.example.test"])
        with pytest.raises(AcmeProblem):
            await client.new_order(["ov2.example.test"])
        assert client.kid is not None
        account_id = client.kid.rsplit("/", 1)[-1]
    # The same database, restarted with an override for this account.
    rules = {
        "new_orders_per_account": _per(1, "1h"),
        "accounts": {account_id: {"new_orders_per_account": _per(5, "1h")}},
    }
    async with limited(**rules) as svc:
        async with client_for(svc, key=key) as client:
            await client.new_order(["ov2.example.test"])
        async with client_for(svc) as other:
            await other.new_order(["ov3.example.test"])
            with pytest.raises(AcmeProblem):
                await other.new_order(["ov4.example.test"])


async def test_certificates_per_registered_domain_with_renewal_exemption(
    limited: ServiceFactory, challtestsrv: ChallengeTestServer
) -> None:
    async with limited(certificates_per_domain=_per(1, "7d")) as svc, client_for(svc) as client:
        await issue(client, ["a.perdomain.test"], challtestsrv)
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["b.perdomain.test"])
        _assert_limited(info.value, "certificatesPerDomain", max_retry=7 * 86400)
        assert "perdomain.test" in info.value.detail
        # Another registered domain is not affected; a renewal of the same set is exempt.
        await client.new_order(["c.elsewhere.example.org"])
        await client.new_order(["a.perdomain.test"])


async def test_duplicate_certificates(
    limited: ServiceFactory, challtestsrv: ChallengeTestServer
) -> None:
    async with limited(duplicate_certificates=_per(1, "7d")) as svc, client_for(svc) as client:
        await issue(client, ["dup.example.test", "www.dup.example.test"], challtestsrv)
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["www.dup.example.test", "dup.example.test"])
        _assert_limited(info.value, "duplicateCertificates", max_retry=7 * 86400)
        # A different set of names is a different certificate.
        await client.new_order(["dup.example.test"])


async def _fail_validation(client: AcmeClient, name: str) -> None:
    order = await client.new_order([name])
    authz_url = order.body["authorizations"][0]
    authz = (await client.post_as_get(authz_url)).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    await client.respond_challenge(chall["url"])  # nothing published: the VA gets a 404
    with pytest.raises(PollFailed):
        await client.poll(authz_url, until={"valid"}, timeout=10)


async def test_failed_validations_per_account_and_name(limited: ServiceFactory) -> None:
    async with limited(failed_validations=_per(1, "1h")) as svc, client_for(svc) as client:
        await _fail_validation(client, "flaky.example.test")
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["flaky.example.test"])
        _assert_limited(info.value, "failedValidations", max_retry=3600)
        await client.new_order(["steady.example.test"])
        # Another account has its own count.
        async with client_for(svc) as other:
            await other.new_order(["flaky.example.test"])


async def test_pending_authorizations_per_account(limited: ServiceFactory) -> None:
    async with limited(pending_authorizations=_per(2, "7d")) as svc, client_for(svc) as client:
        await client.new_order(["p1.example.test", "p2.example.test"])
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["p3.example.test"])
        _assert_limited(info.value, "pendingAuthorizations", max_retry=300)


async def test_off_turns_a_limit_off(limited: ServiceFactory) -> None:
    async with limited(new_orders_per_account="off") as svc, client_for(svc) as client:
        assert svc.ra.limits.limits.limit(LimitName.NEW_ORDERS_PER_ACCOUNT) is None
        for i in range(3):
            await client.new_order([f"free{i}.example.test"])


async def test_letsencrypt_preset_is_applied(
    data_dir: Path, challtestsrv: ChallengeTestServer, empty_database_url: str
) -> None:
    async with running_service(
        data_dir, challtestsrv, empty_database_url, rate_limits="letsencrypt"
    ) as svc:
        limit = svc.ra.limits.limits.limit(LimitName.NEW_ORDERS_PER_ACCOUNT)
        assert limit is not None
        assert limit.count == 300


@pytest.fixture
async def counted_service(
    data_dir: Path, challtestsrv: ChallengeTestServer, empty_database_url: str
) -> AsyncIterator[AcmeService]:
    async with running_service(data_dir, challtestsrv, empty_database_url) as svc:
        yield svc


async def test_issuance_bumps_counters_once_per_domain(
    counted_service: AcmeService, challtestsrv: ChallengeTestServer
) -> None:
    async with client_for(counted_service) as client:
        await issue(client, ["x.count.test", "y.count.test"], challtestsrv)
    store = PolicyStore(counted_service.engines, SystemClock())
    totals = await store.counter_totals([("certificatesPerDomain", "count.test", 0)])
    assert totals[("certificatesPerDomain", "count.test")].count == 1
