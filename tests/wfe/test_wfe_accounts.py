"""Accounts, key change and revocation through the real app (RFC 8555 §7.3, §7.6)."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from acme_ca.bench.client import AcmeClient, AcmeProblem, build_csr
from acme_ca.bench.jws import PrivateKey, generate_key, jwk_of, sign_jws
from acme_ca.service import AcmeService
from acme_ca.storage.schema import certificates, orders
from acme_ca.testing import ChallengeTestServer
from acme_ca.wfe.app import create_app
from tests.acme_helpers import (
    ClientFactory,
    authz_ids_of,
    deactivate_account_mid_request,
    issue,
    order_with_http01,
)

pytestmark = pytest.mark.asyncio

ERR = "urn:ietf:params:acme:error:"
BASE = "https://acme.test:14000"


async def test_new_account_twice_returns_existing_with_200(make_client: ClientFactory) -> None:
    client = await make_client()
    again = await client.new_account()
    assert again.status == 200
    assert again.location == client.kid


async def test_only_return_existing_for_unknown_key(make_client: ClientFactory) -> None:
    client = await make_client(register=False)
    with pytest.raises(AcmeProblem) as info:
        await client.new_account(only_existing=True)
    assert info.value.type == ERR + "accountDoesNotExist"


async def test_only_return_existing_for_known_key(make_client: ClientFactory) -> None:
    client = await make_client()
    found = await client.new_account(only_existing=True)
    assert found.location == client.kid


@pytest.mark.parametrize(
    ("contact", "kind"),
    [
        ("tel:+1555", "unsupportedContact"),
        ("mailto:not-an-address", "invalidContact"),
        ("mailto:a@example.test?subject=x", "invalidContact"),
    ],
)
async def test_contact_validation(make_client: ClientFactory, contact: str, kind: str) -> None:
    client = await make_client(register=False)
    with pytest.raises(AcmeProblem) as info:
        await client.new_account(contact=[contact])
    assert info.value.type == ERR + kind


async def test_account_update_and_post_as_get(make_client: ClientFactory) -> None:
    client = await make_client()
    assert client.kid is not None
    updated = await client.post(client.kid, {"contact": ["mailto:new@example.test"]})
    assert updated.body["contact"] == ["mailto:new@example.test"]
    fetched = await client.post_as_get(client.kid)
    assert fetched.body["contact"] == ["mailto:new@example.test"]
    assert fetched.body["status"] == "valid"


async def test_account_update_ignores_status_and_orders(make_client: ClientFactory) -> None:
    # RFC 8555 §7.3.2: updates to "orders" and "status" (but deactivation) are ignored,
    # so a client may post back the account object it was given.
    client = await make_client()
    assert client.kid is not None
    account = (await client.post_as_get(client.kid)).body
    echoed = {**account, "status": "revoked", "orders": "https://elsewhere.test/x"}
    echoed["contact"] = ["mailto:echo@example.test"]
    updated = await client.post(client.kid, echoed)
    assert updated.status == 200
    assert updated.body["status"] == "valid"
    assert updated.body["orders"] == account["orders"]
    assert updated.body["contact"] == ["mailto:echo@example.test"]
    # A status of the wrong type is still malformed.
    with pytest.raises(AcmeProblem) as info:
        await client.post(client.kid, {"status": 1})
    assert info.value.type == ERR + "malformed"


async def test_account_url_of_other_account_is_unauthorized(make_client: ClientFactory) -> None:
    a, b = await make_client(), await make_client()
    assert b.kid is not None
    with pytest.raises(AcmeProblem) as info:
        await a.post_as_get(b.kid)
    assert info.value.type == ERR + "unauthorized"


async def test_deactivated_account_can_do_nothing(make_client: ClientFactory) -> None:
    client = await make_client()
    deactivated = await client.deactivate_account()
    assert deactivated.body["status"] == "deactivated"
    with pytest.raises(AcmeProblem) as info:
        await client.new_order(["after.example.test"])
    assert info.value.type == ERR + "unauthorized"


async def test_account_deactivated_during_new_order_gets_nothing(
    make_client: ClientFactory, service: AcmeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 8555 §7.3.6: the newOrder was verified while the account was valid; its
    deactivation commits before the order is inserted: no order, no pending authz."""
    client = await make_client()
    storage = service.storage
    account_id = (client.kid or "").rsplit("/", 1)[-1]
    deactivate_account_mid_request(storage, monkeypatch)
    with pytest.raises(AcmeProblem) as info:
        await client.new_order(["meanwhile.example.test"])
    assert info.value.status == 401
    assert info.value.type == ERR + "unauthorized"
    assert info.value.detail == "Account is deactivated"
    assert await authz_ids_of(storage, account_id) == []
    async with storage.engines.reader.connect() as conn:
        made = await conn.execute(select(orders.c.id).where(orders.c.account_id == account_id))
        assert made.all() == []


async def test_deactivation_cancels_the_accounts_pending_and_ready_orders(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, service: AcmeService
) -> None:
    """RFC 8555 §7.3.6: the server SHOULD cancel the account's pending operations, such
    as certificate orders; a ready or pending order was left as it was (seen on a live
    server: ready and pending orders of deactivated accounts, forever)."""
    client = await make_client()
    ready = await order_with_http01(client, ["ready.example.test"], challtestsrv)
    pending = (await client.new_order(["pending.example.test"])).location
    _, _, done = await issue(client, ["done.example.test"], challtestsrv)
    await client.deactivate_account()
    by_url = {ready["url"]: "invalid", pending or "": "invalid", done["url"]: "valid"}
    async with service.storage.engines.reader.connect() as conn:
        rows = await conn.execute(select(orders.c.id, orders.c.status))
        status = {row.id: row.status for row in rows.all()}
    assert {url: status[url.rsplit("/", 1)[-1]] for url in by_url} == by_url


@pytest.mark.parametrize("moment", ["get_order", "is_key_blocked"])
async def test_account_deactivated_during_finalize_gets_no_certificate(
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    service: AcmeService,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    """RFC 8555 §7.3.6: the finalize was verified while the account was valid; its
    deactivation commits before the order is read, or before it moves to processing:
    no certificate, and the answer is the deactivation's. The ready order used to be
    finalized and a certificate issued to the deactivated account."""
    client = await make_client()
    order = await order_with_http01(client, ["fin-meanwhile.example.test"], challtestsrv)
    storage = service.storage
    account_id = (client.kid or "").rsplit("/", 1)[-1]
    original = getattr(storage, moment)

    async def deactivated_meanwhile(arg: str) -> object:
        await storage.deactivate_account(account_id)
        return await original(arg)

    monkeypatch.setattr(storage, moment, deactivated_meanwhile)
    csr = build_csr(generate_key("p256"), ["fin-meanwhile.example.test"])
    with pytest.raises(AcmeProblem) as info:
        await client.finalize(order["finalize"], csr)
    assert info.value.status == 401
    assert info.value.type == ERR + "unauthorized"
    assert info.value.detail == "Account is deactivated"
    async with storage.engines.reader.connect() as conn:
        issued = await conn.execute(
            select(certificates.c.id).where(certificates.c.account_id == account_id)
        )
        assert issued.all() == []


async def test_orders_list_is_paginated(make_client: ClientFactory, service: object) -> None:
    client = await make_client()
    service.front_end = service.front_end  # type: ignore[attr-defined]
    for i in range(3):
        await client.new_order([f"o{i}.example.test"])
    acct = await client.post_as_get(client.kid or "")
    listing = await client.post_as_get(acct.body["orders"])
    assert len(listing.body["orders"]) == 3


async def test_orders_list_leaves_out_invalid_orders_and_links_next(
    make_client: ClientFactory, service: AcmeService
) -> None:
    owner = await make_client()
    urls = [(await owner.new_order([f"l{i}.example.test"])).location for i in range(4)]
    dropped = (await owner.post_as_get(urls[1] or "")).body["authorizations"][0]
    await owner.deactivate_authorization(dropped)  # its order becomes invalid
    # Two orders a page, through an app over the same front end.
    paged = create_app(dataclasses.replace(service.front_end, orders_page_size=2))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=paged), base_url=BASE)
    client = AcmeClient(f"{BASE}/directory", account_key=owner.key, kid=owner.kid, http=http)
    try:
        first = await client.post_as_get(f"{owner.kid}/orders")
        # RFC 8555 §7.1.2.1: pending orders listed, invalid ones not, Link rel="next";
        # the invalid order leaves no gap: the first page is full.
        assert first.body["orders"] == [urls[0], urls[2]]
        (next_url,) = first.links("next")
        second = await client.post_as_get(next_url)
        assert second.body["orders"] == [urls[3]]
        assert second.links("next") == []
    finally:
        await http.aclose()


async def test_key_change(make_client: ClientFactory) -> None:
    client = await make_client()
    old_thumbprint = client.thumbprint
    assert (await client.change_key(generate_key("p256"))).status == 200
    assert client.thumbprint != old_thumbprint
    assert (await client.post_as_get(client.kid or "")).body["status"] == "valid"


async def test_concurrent_key_changes_of_one_account_have_one_winner(
    make_client: ClientFactory,
) -> None:
    # Each request is verified with the old key before any commits; the UPDATE was
    # not guarded on that key, so every one answered 200 though only the last new key
    # was the account's (and a holder of a compromised key could undo a rollover).
    client = await make_client()
    url = (await client.directory())["keyChange"]
    new_keys = [generate_key("p256") for _ in range(6)]

    async def change(new_key: PrivateKey) -> str:
        inner = sign_jws(
            new_key, {"account": client.kid, "oldKey": jwk_of(client.key)}, url=url, nonce=None
        )
        try:
            return str((await client.post(url, inner)).status)
        except AcmeProblem as problem:
            return f"{problem.status} {problem.type}"

    outcomes = await asyncio.gather(*(change(key) for key in new_keys))
    # A loser verified before the winner committed is refused by the guarded UPDATE
    # (403); one verified after fails the gate's signature check (400).
    refused = {f"403 {ERR}unauthorized", f"400 {ERR}malformed"}
    assert outcomes.count("200") == 1, outcomes
    assert set(outcomes) - {"200"} <= refused, outcomes
    winner = new_keys[outcomes.index("200")]
    moved = await make_client(register=False)
    moved.key, moved.kid = winner, client.kid
    assert (await moved.post_as_get(client.kid or "")).body["status"] == "valid"
    with pytest.raises(AcmeProblem):  # the losers' keys are not the account's
        await client.post_as_get(client.kid or "")


async def test_key_change_to_a_key_the_policy_refuses_lists_the_accepted_algorithms(
    make_client: ClientFactory,
) -> None:
    # The inner JWS is signed by the new account key: the gate's algorithms apply.
    client = await make_client()
    with pytest.raises(AcmeProblem) as info:
        await client.change_key(generate_key("ed25519"))
    assert info.value.type == ERR + "badSignatureAlgorithm"
    assert info.value.body["algorithms"] == ["RS256", "ES256", "ES384"]
    assert (await client.change_key(generate_key("p384"))).status == 200


async def test_key_change_to_taken_key_is_conflict(make_client: ClientFactory) -> None:
    a, b = await make_client(), await make_client()
    url = (await a.directory())["keyChange"]
    inner = sign_jws(b.key, {"account": a.kid, "oldKey": jwk_of(a.key)}, url=url, nonce=None)
    with pytest.raises(AcmeProblem) as info:
        await a.post(url, inner)
    assert info.value.status == 409
    assert info.value.headers["location"] == b.kid
    # RFC 8555 §6.7: an ACME error type whose `status` is the HTTP status.
    assert info.value.type == ERR + "malformed"
    assert info.value.body["status"] == 409


async def test_key_change_with_wrong_old_key_is_refused(make_client: ClientFactory) -> None:
    client = await make_client()
    url = (await client.directory())["keyChange"]
    new_key = generate_key("p256")
    inner = sign_jws(
        new_key, {"account": client.kid, "oldKey": jwk_of(new_key)}, url=url, nonce=None
    )
    with pytest.raises(AcmeProblem) as info:
        await client.post(url, inner)
    assert info.value.type == ERR + "unauthorized"


async def test_key_change_inner_url_mismatch_is_malformed(make_client: ClientFactory) -> None:
    client = await make_client()
    url = (await client.directory())["keyChange"]
    new_key = generate_key("p256")
    inner = sign_jws(
        new_key, {"account": client.kid, "oldKey": jwk_of(client.key)}, url=url + "x", nonce=None
    )
    with pytest.raises(AcmeProblem) as info:
        await client.post(url, inner)
    assert info.value.type == ERR + "malformed"


def _der(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined,no-any-return]


async def test_revoke_by_account_then_already_revoked(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, leaf, _ = await issue(client, ["rev.example.test"], challtestsrv)
    assert (await client.revoke(_der(leaf), reason=4)).status == 200
    with pytest.raises(AcmeProblem) as info:
        await client.revoke(_der(leaf))
    assert info.value.type == ERR + "alreadyRevoked"


async def test_revoke_with_certificate_key(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    key, leaf, _ = await issue(client, ["revkey.example.test"], challtestsrv)
    other = await make_client(register=False)
    assert (await other.revoke(_der(leaf), key=key)).status == 200


async def test_revoke_with_wrong_key_is_unauthorized(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, leaf, _ = await issue(client, ["revwrong.example.test"], challtestsrv)
    with pytest.raises(AcmeProblem) as info:
        await client.revoke(_der(leaf), key=generate_key("p256"))
    assert info.value.type == ERR + "unauthorized"


async def test_revoke_by_unrelated_account_is_unauthorized(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    owner, stranger = await make_client(), await make_client()
    _, leaf, _ = await issue(owner, ["revother.example.test"], challtestsrv)
    with pytest.raises(AcmeProblem) as info:
        await stranger.revoke(_der(leaf))
    assert info.value.type == ERR + "unauthorized"


async def test_revoke_by_account_holding_authzs(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    owner, other = await make_client(), await make_client()
    _, leaf, _ = await issue(owner, ["shared.example.test"], challtestsrv)
    await issue(other, ["shared.example.test"], challtestsrv)
    assert (await other.revoke(_der(leaf))).status == 200


@pytest.mark.parametrize("reason", [2, 6, 7, 8, 10, 99])
async def test_bad_revocation_reason(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, reason: int
) -> None:
    client = await make_client()
    _, leaf, _ = await issue(client, [f"reason{reason}.example.test"], challtestsrv)
    with pytest.raises(AcmeProblem) as info:
        await client.revoke(_der(leaf), reason=reason)
    assert info.value.type == ERR + "badRevocationReason"


async def test_key_compromise_blocks_the_key(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    key, leaf, _ = await issue(client, ["kc.example.test"], challtestsrv)
    await client.revoke(_der(leaf), reason=1)
    # The compromised key can no longer be an account key.
    blocked = AcmeClient(client.directory_url, account_key=key, http=client._http)
    with pytest.raises(AcmeProblem) as info:
        await blocked.new_account()
    assert info.value.type == ERR + "badPublicKey"


async def test_new_account_rejects_weak_key(make_client: ClientFactory) -> None:
    client = await make_client(register=False)
    client.key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(AcmeProblem) as info:
        await client.new_account()
    assert info.value.type == ERR + "badPublicKey"


async def test_new_account_requires_terms_of_service(make_client: ClientFactory) -> None:
    client = await make_client(register=False)
    with pytest.raises(AcmeProblem) as info:
        await client.new_account(tos=False)
    assert info.value.type == ERR + "malformed"
    assert "terms of service" in info.value.detail
