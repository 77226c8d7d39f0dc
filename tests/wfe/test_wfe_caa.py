"""CAA in the issuance flow: at validation, again at finalize, and in the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acme_ca.bench.client import AcmeClient, AcmeProblem, PollFailed, build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.config import Settings
from acme_ca.service import AcmeService, default_caa_identity
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, order_with_http01
from tests.policy_helpers import client_for, running_service

CAA = "urn:ietf:params:acme:error:caa"
IDENTITY = "acme.test"  # derived from the test service's URL, https://acme.test:14000


async def _failed_authz(client: AcmeClient, name: str, cts: ChallengeTestServer) -> dict[str, Any]:
    with pytest.raises(PollFailed) as info:
        await order_with_http01(client, [name], cts)
    return dict(info.value.resource)


async def test_directory_advertises_the_derived_identity(make_client: ClientFactory) -> None:
    client = await make_client(register=False)
    assert (await client.directory())["meta"]["caaIdentities"] == [IDENTITY]


def test_default_identity_is_a_domain_even_for_an_ip_url() -> None:
    assert default_caa_identity(Settings(external_url="https://ca.corp.example")) == (
        "ca.corp.example"
    )
    assert default_caa_identity(Settings(listen="127.0.0.1:14000")) == "acme-ca.internal"
    assert default_caa_identity(Settings(external_url="https://[::1]:14000")) == (
        "acme-ca.internal"
    )
    assert default_caa_identity(Settings(external_url="https://localhost")) == "acme-ca.internal"


async def test_caa_for_another_ca_invalidates_the_authorization(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("caa-other.example.test", [(0, "issue", "letsencrypt.org")])
    client = await make_client()
    authz = await _failed_authz(client, "caa-other.example.test", challtestsrv)
    assert authz["status"] == "invalid"
    (challenge,) = [c for c in authz["challenges"] if c["status"] == "invalid"]
    assert challenge["error"]["type"] == CAA
    (sub,) = challenge["error"]["subproblems"]
    assert sub["identifier"] == {"type": "dns", "value": "caa-other.example.test"}


async def test_caa_for_this_ca_permits(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("caa-ok.example.test", [(0, "issue", IDENTITY)])
    order = await order_with_http01(await make_client(), ["caa-ok.example.test"], challtestsrv)
    assert order["status"] == "ready"


async def test_accounturi_allows_only_that_account(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    owner = await make_client()
    assert owner.kid is not None
    challtestsrv.add_caa(
        "caa-acct.example.test", [(0, "issue", f"{IDENTITY}; accounturi={owner.kid}")]
    )
    order = await order_with_http01(owner, ["caa-acct.example.test"], challtestsrv)
    assert order["status"] == "ready"
    stranger = await make_client()
    authz = await _failed_authz(stranger, "caa-acct.example.test", challtestsrv)
    assert authz["status"] == "invalid"


async def test_finalize_rechecks_caa_of_old_validations(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    # caa_recheck_hours = 0: every validation counts as old at finalize.
    async with running_service(data_dir, challtestsrv, database_url, caa_recheck_hours=0) as svc:
        await _finalize_after_caa_change(svc, challtestsrv, "caa-late.example.test")


async def _finalize_after_caa_change(svc: AcmeService, cts: ChallengeTestServer, name: str) -> None:
    async with client_for(svc) as client:
        order = await order_with_http01(client, [name], cts)
        cts.add_caa(name, [(0, "issue", "letsencrypt.org")])
        with pytest.raises(AcmeProblem) as info:
            await client.finalize(order["finalize"], build_csr(generate_key("p256"), [name]))
        assert info.value.type == CAA
        assert info.value.status == 403
        (sub,) = info.value.subproblems
        assert sub["identifier"] == {"type": "dns", "value": name}
        # CAA allows us again: the order is still ready and is finalized.
        cts.clear_caa(name)
        final = await client.finalize(order["finalize"], build_csr(generate_key("p256"), [name]))
        assert final.body["status"] == "valid"


async def test_finalize_with_a_failing_caa_lookup_is_a_dns_problem(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    # RFC 8659 §3: no answer is no permission; RFC 8555 §6.7: the problem is `dns`.
    name = "caa-servfail.example.test"
    async with (
        running_service(data_dir, challtestsrv, database_url, caa_recheck_hours=0) as svc,
        client_for(svc) as client,
    ):
        order = await order_with_http01(client, [name], challtestsrv)
        challtestsrv.set_servfail(name)
        try:
            with pytest.raises(AcmeProblem) as info:
                await client.finalize(order["finalize"], build_csr(generate_key("p256"), [name]))
        finally:
            challtestsrv.clear_servfail(name)
    assert info.value.type == "urn:ietf:params:acme:error:dns"
    (sub,) = info.value.subproblems
    assert sub["type"] == "urn:ietf:params:acme:error:dns"
    assert sub["identifier"] == {"type": "dns", "value": name}


async def test_finalize_skips_recent_validations(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    name = "caa-fresh.example.test"
    order = await order_with_http01(client, [name], challtestsrv)
    # Validated seconds ago (under the default 8 hours): CAA is not asked again.
    challtestsrv.add_caa(name, [(0, "issue", "letsencrypt.org")])
    final = await client.finalize(order["finalize"], build_csr(generate_key("p256"), [name]))
    assert final.body["status"] == "valid"


async def test_configured_identities_are_used_and_advertised(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    async with (
        running_service(
            data_dir, challtestsrv, database_url, caa_identities=("pki.corp.example",)
        ) as svc,
        client_for(svc) as client,
    ):
        assert (await client.directory())["meta"]["caaIdentities"] == ["pki.corp.example"]
        challtestsrv.add_caa("caa-conf.example.test", [(0, "issue", "pki.corp.example")])
        order = await order_with_http01(client, ["caa-conf.example.test"], challtestsrv)
        assert order["status"] == "ready"
