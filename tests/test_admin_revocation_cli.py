"""`acme-ca admin revoke`: the operator revokes without account or certificate key,
by serial or every live certificate of an account and/or a name; the CRLs and OCSP
show it as they show an ACME revocation, and keyCompromise blocks the key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from acme_ca.bench.client import AcmeClient, AcmeProblem, build_csr
from acme_ca.bench.jws import PrivateKey
from acme_ca.service import AcmeService
from acme_ca.storage.store import Storage
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue, order_with_http01
from tests.admin_helpers import expire, issue_wildcard, run_admin, serial_of, status_listener

ERR = "urn:ietf:params:acme:error:"


@pytest.fixture
def listener_url(service: AcmeService) -> Iterator[str]:
    yield from status_listener(service)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _colons(cert: x509.Certificate) -> str:
    """The serial as `openssl x509 -serial` or a browser shows it: upper case, colons."""
    raw = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8, "big")
    return ":".join(f"{b:02X}" for b in raw)


async def _stored(service: AcmeService, cert: x509.Certificate) -> tuple[bool, int | None]:
    storage: Storage = service.ra.ctx.storage
    stored = await storage.get_certificate_by_serial(serial_of(cert))
    assert stored is not None
    reason = stored.revocation_reason
    return stored.revoked_at is not None, int(reason) if reason is not None else None


async def _ocsp(
    service: AcmeService, listener_url: str, cert: x509.Certificate
) -> ocsp.OCSPResponse:
    data_dir = service.settings.data_dir
    issuer = x509.load_pem_x509_certificates((data_dir / "intermediate.pem").read_bytes())[0]
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        resp = await http.post(
            f"{listener_url}/ocsp",
            content=request.public_bytes(serialization.Encoding.DER),
            headers={"Content-Type": "application/ocsp-request"},
        )
    assert resp.status_code == 200
    return ocsp.load_der_ocsp_response(resp.content)


async def _crl_entry(listener_url: str, cert: x509.Certificate) -> x509.RevokedCertificate | None:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (point,) = list(points)
    assert point.full_name is not None
    path = urlsplit(str(point.full_name[0].value)).path
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        resp = await http.get(listener_url + path)
    assert resp.status_code == 200
    return x509.load_der_x509_crl(resp.content).get_revoked_certificate_by_serial_number(
        cert.serial_number
    )


async def test_revoke_by_serial_shows_in_ocsp_and_crl_with_its_reason(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    listener_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["op-revoke.example"], challtestsrv)
    _, other, _ = await issue(client, ["op-keep.example"], challtestsrv)
    assert (await _ocsp(service, listener_url, cert)).certificate_status == (
        ocsp.OCSPCertStatus.GOOD
    )
    assert await _crl_entry(listener_url, cert) is None

    # Pasted as openssl prints it: upper case with colons.
    ran = await run_admin(
        service, capsys, "revoke", "--serial", _colons(cert), "--reason", "superseded"
    )
    assert ran.code == 0, ran.err
    assert f"revoked {serial_of(cert)}\top-revoke.example\taccount " in ran.out
    assert "revoked 1 (reason superseded)" in ran.out

    answer = await _ocsp(service, listener_url, cert)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.superseded
    entry = await _crl_entry(listener_url, cert)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded
    # Only the certificate named.
    assert (await _ocsp(service, listener_url, other)).certificate_status == (
        ocsp.OCSPCertStatus.GOOD
    )
    assert await _stored(service, other) == (False, None)


async def test_revoked_by_the_operator_reads_as_revoked_over_acme(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["op-then-acme.example"], challtestsrv)
    assert (await run_admin(service, capsys, "revoke", "--serial", serial_of(cert))).code == 0
    assert await _stored(service, cert) == (True, 0)
    with pytest.raises(AcmeProblem) as info:
        await client.revoke(_der(cert))
    assert info.value.type == ERR + "alreadyRevoked"


async def _finalize_with(
    client: AcmeClient, key: PrivateKey, name: str, challtestsrv: ChallengeTestServer
) -> dict[str, object]:
    order = await order_with_http01(client, [name], challtestsrv)
    final = await client.finalize(order["finalize"], build_csr(key, [name]))
    return dict(final.body)


async def test_key_compromise_blocks_the_key_for_new_csrs(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    key, cert, _ = await issue(client, ["op-kc.example"], challtestsrv)
    ran = await run_admin(
        service, capsys, "revoke", "--serial", serial_of(cert), "--reason", "keyCompromise"
    )
    assert ran.code == 0, ran.err
    assert "their keys are blocked" in ran.out
    assert await _stored(service, cert) == (True, 1)
    # As after an ACME keyCompromise revocation: a CSR with the key is refused.
    with pytest.raises(AcmeProblem) as info:
        await _finalize_with(client, key, "op-kc-again.example", challtestsrv)
    assert info.value.type == ERR + "badCSR"
    assert "blocked" in info.value.detail


async def test_another_reason_leaves_the_key_usable(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    key, cert, _ = await issue(client, ["op-cessation.example"], challtestsrv)
    ran = await run_admin(
        service,
        capsys,
        "revoke",
        "--serial",
        serial_of(cert),
        "--reason",
        "CessationOfOperation",  # names in any case
    )
    assert ran.code == 0, ran.err
    assert "blocked" not in ran.out
    assert await _stored(service, cert) == (True, 5)
    final = await _finalize_with(client, key, "op-cessation-again.example", challtestsrv)
    assert final["status"] == "valid"


async def test_a_batch_reports_already_revoked_and_unknown_serials(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, earlier, _ = await issue(client, ["op-batch-1.example"], challtestsrv)
    _, live, _ = await issue(client, ["op-batch-2.example"], challtestsrv)
    await client.revoke(_der(earlier), reason=4)
    unknown = "0x1234567890ABCDEF"
    ran = await run_admin(
        service,
        capsys,
        "revoke",
        "--serial", serial_of(earlier),
        "--serial", serial_of(live),
        "--serial", unknown,
        "--reason", "privilegeWithdrawn",
        "--json",
    )  # fmt: skip
    # The unknown serial fails the run, not the batch.
    assert ran.code == 1
    assert "name no certificate" in ran.err
    shown = json.loads(ran.out)
    assert shown["reason"] == "privilegeWithdrawn"
    assert shown["dry_run"] is False
    results = {r["serial"]: r for r in shown["results"]}
    assert [r["serial"] for r in shown["results"]] == [
        serial_of(earlier),
        serial_of(live),
        "1234567890abcdef",
    ]
    assert results[serial_of(earlier)]["outcome"] == "already_revoked"
    assert results[serial_of(earlier)]["revocation_reason"] == "superseded"
    assert results[serial_of(earlier)]["revoked_at"].endswith("Z")
    assert results[serial_of(live)]["outcome"] == "revoked"
    assert results[serial_of(live)]["names"] == ["op-batch-2.example"]
    assert results["1234567890abcdef"] == {"serial": "1234567890abcdef", "outcome": "not_found"}
    # The first revocation stands; the live one got the reason asked for.
    assert await _stored(service, earlier) == (True, 4)
    assert await _stored(service, live) == (True, 9)

    # Known serials only, one of them already revoked: success.
    again = await run_admin(service, capsys, "revoke", "--serial", serial_of(live))
    assert again.code == 0
    assert f"already revoked {serial_of(live)}\tat " in again.out
    assert again.out.rstrip().endswith("privilegeWithdrawn\nalready revoked 1 (reason unspecified)")


async def test_dry_run_revokes_nothing(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    listener_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["op-dry.example"], challtestsrv)
    ran = await run_admin(
        service,
        capsys,
        "revoke",
        "--account",
        client.kid or "",
        "--dry-run",
        "--reason",
        "keyCompromise",
    )
    assert ran.code == 0, ran.err
    assert f"would revoke {serial_of(cert)}\top-dry.example" in ran.out
    assert await _stored(service, cert) == (False, None)
    assert (await _ocsp(service, listener_url, cert)).certificate_status == (
        ocsp.OCSPCertStatus.GOOD
    )


async def test_every_live_certificate_of_an_account(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    owner, stranger = await make_client(), await make_client()
    _, first, _ = await issue(owner, ["op-acct-1.example"], challtestsrv)
    _, second, _ = await issue(owner, ["op-acct-2.example", "op-acct-3.example"], challtestsrv)
    _, expired, _ = await issue(owner, ["op-acct-old.example"], challtestsrv)
    await expire(service, expired)
    _, revoked, _ = await issue(owner, ["op-acct-gone.example"], challtestsrv)
    await owner.revoke(_der(revoked), reason=4)
    _, theirs, _ = await issue(stranger, ["op-acct-1.example"], challtestsrv)
    assert owner.kid is not None
    account_id = owner.kid.rsplit("/", 1)[1]

    ran = await run_admin(service, capsys, "revoke", "--account", owner.kid, "--json")
    assert ran.code == 0, ran.err
    results = json.loads(ran.out)["results"]
    # Live ones only, newest first: the expired and the revoked are not touched.
    assert [(r["serial"], r["outcome"]) for r in results] == [
        (serial_of(second), "revoked"),
        (serial_of(first), "revoked"),
    ]
    assert {r["account"] for r in results} == {account_id}
    assert await _stored(service, expired) == (False, None)
    assert await _stored(service, revoked) == (True, 4)
    assert await _stored(service, theirs) == (False, None)

    # By ID this time: nothing live is left.
    ran = await run_admin(service, capsys, "revoke", "--account", account_id)
    assert ran.code == 1
    assert "no live certificate matches" in ran.err


async def test_every_live_certificate_of_a_name(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one, two = await make_client(), await make_client()
    _, mine, _ = await issue(one, ["op-name.example", "www.op-name.example"], challtestsrv)
    _, theirs, _ = await issue(two, ["OP-NAME.example"], challtestsrv)
    _, other, _ = await issue(one, ["op-name-other.example"], challtestsrv)

    # With an account as well: both must match.
    ran = await run_admin(
        service, capsys, "revoke", "--name", "op-name.example.", "--account", one.kid or ""
    )
    assert ran.code == 0, ran.err
    assert await _stored(service, mine) == (True, 0)
    assert await _stored(service, theirs) == (False, None)

    ran = await run_admin(service, capsys, "revoke", "--name", "OP-name.example", "--json")
    assert ran.code == 0, ran.err
    assert [r["serial"] for r in json.loads(ran.out)["results"]] == [serial_of(theirs)]
    assert await _stored(service, theirs) == (True, 0)
    assert await _stored(service, other) == (False, None)


async def test_a_wildcard_and_its_base_name_are_different_names(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    wildcard = await issue_wildcard(client, "op-wild.example", challtestsrv)
    _, base, _ = await issue(client, ["op-wild.example"], challtestsrv)
    ran = await run_admin(service, capsys, "revoke", "--name", "op-wild.example")
    assert ran.code == 0, ran.err
    assert await _stored(service, base) == (True, 0)
    assert await _stored(service, wildcard) == (False, None)
    ran = await run_admin(service, capsys, "revoke", "--name", "*.op-wild.example")
    assert ran.code == 0, ran.err
    assert f"revoked {serial_of(wildcard)}\t*.op-wild.example" in ran.out
    assert await _stored(service, wildcard) == (True, 0)


async def test_refused_invocations(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["op-refused.example"], challtestsrv)
    serial = serial_of(cert)
    # Nothing to select, or --serial mixed with --account/--name: a usage error.
    assert (await run_admin(service, capsys, "revoke")).code == 2
    mixed = await run_admin(service, capsys, "revoke", "--serial", serial, "--name", "x.example")
    assert mixed.code == 2
    # Reasons root programs forbid for a leaf, or that a revocation here cannot mean.
    for reason in ("cACompromise", "certificateHold", "removeFromCRL", "aACompromise", "7"):
        with pytest.raises(SystemExit) as exited:
            await run_admin(service, capsys, "revoke", "--serial", serial, "--reason", reason)
        assert exited.value.code == 2
    with pytest.raises(SystemExit):
        await run_admin(service, capsys, "revoke", "--serial", "not-hex")
    with pytest.raises(SystemExit):
        await run_admin(service, capsys, "revoke", "--account", "https://ca.example/acme/order/1")
    unknown = await run_admin(service, capsys, "revoke", "--account", "nosuchaccount")
    assert unknown.code == 1
    assert "no account 'nosuchaccount'" in unknown.err
    assert await _stored(service, cert) == (False, None)
