"""`acme-ca admin certificates`: issued certificates, newest first, by serial, account,
name and status, always within a limit."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ca.admin_certificates import account_arg, name_arg
from acme_ca.errors import Identifier
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue
from tests.admin_helpers import expire, issue_wildcard, run_admin, serial_of


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


async def _listed(
    service: AcmeService, capsys: pytest.CaptureFixture[str], *argv: str
) -> dict[str, Any]:
    ran = await run_admin(service, capsys, "certificates", *argv, "--json")
    assert ran.code == 0, ran.err
    shown: dict[str, Any] = json.loads(ran.out)
    return shown


async def _serials(
    service: AcmeService, capsys: pytest.CaptureFixture[str], *argv: str
) -> list[str]:
    return [c["serial"] for c in (await _listed(service, capsys, *argv))["certificates"]]


async def test_an_accounts_certificates_newest_first_with_their_status(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, valid, _ = await issue(client, ["ls-valid.example", "www.ls-valid.example"], challtestsrv)
    _, expired, _ = await issue(client, ["ls-expired.example"], challtestsrv)
    await expire(service, expired)
    _, revoked, _ = await issue(client, ["ls-revoked.example"], challtestsrv)
    await client.revoke(_der(revoked), reason=1)
    assert client.kid is not None
    account_id = client.kid.rsplit("/", 1)[1]

    shown = await _listed(service, capsys, "--account", client.kid)
    assert shown["truncated"] is False
    by_serial = {c["serial"]: c for c in shown["certificates"]}
    assert list(by_serial) == [serial_of(revoked), serial_of(expired), serial_of(valid)]
    assert by_serial[serial_of(valid)] == {
        "serial": serial_of(valid),
        "status": "valid",
        "names": ["ls-valid.example", "www.ls-valid.example"],
        "not_before": valid.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": valid.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "account": account_id,
        "revoked_at": None,
        "revocation_reason": None,
    }
    assert by_serial[serial_of(expired)]["status"] == "expired"
    gone = by_serial[serial_of(revoked)]
    assert gone["status"] == "revoked"
    assert gone["revocation_reason"] == "keyCompromise"
    revoked_at = dt.datetime.fromisoformat(gone["revoked_at"].replace("Z", "+00:00"))
    assert abs(dt.datetime.now(dt.UTC) - revoked_at) < dt.timedelta(minutes=5)

    # The same as text, one line each; by the account's ID this time.
    ran = await run_admin(service, capsys, "certificates", "--account", account_id)
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{serial_of(revoked)}\trevoked\t")
    assert lines[0].endswith(
        "\tls-revoked.example\trevoked " + gone["revoked_at"] + " keyCompromise"
    )
    assert lines[2] == (
        f"{serial_of(valid)}\tvalid\t{by_serial[serial_of(valid)]['not_before']} .. "
        f"{by_serial[serial_of(valid)]['not_after']}\taccount {account_id}\t"
        "ls-valid.example,www.ls-valid.example"
    )


async def test_status_filters(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, live, _ = await issue(client, ["ls-live.example"], challtestsrv)
    _, expired, _ = await issue(client, ["ls-old.example"], challtestsrv)
    await expire(service, expired)
    _, first, _ = await issue(client, ["ls-first.example"], challtestsrv)
    _, second, _ = await issue(client, ["ls-second.example"], challtestsrv)
    # Revoked in the other order than issued.
    await client.revoke(_der(second), reason=4)
    await client.revoke(_der(first))
    kid = client.kid or ""
    assert await _serials(service, capsys, "--account", kid, "--live") == [serial_of(live)]
    # Revoked ones newest revocation first.
    assert await _serials(service, capsys, "--account", kid, "--revoked") == [
        serial_of(first),
        serial_of(second),
    ]
    # Without an account, within the default limit: this test's are the newest.
    newest = await _serials(service, capsys, "--revoked", "--limit", "2")
    assert newest == [serial_of(first), serial_of(second)]
    assert (await _serials(service, capsys, "--live", "--limit", "1")) == [serial_of(live)]
    with pytest.raises(SystemExit) as exited:
        await run_admin(service, capsys, "certificates", "--live", "--revoked")
    assert exited.value.code == 2


async def test_by_name_and_by_serial(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one, two = await make_client(), await make_client()
    _, base, _ = await issue(one, ["ls-name.example", "ls-name-b.example"], challtestsrv)
    wildcard = await issue_wildcard(one, "ls-name.example", challtestsrv)
    _, theirs, _ = await issue(two, ["ls-name.example"], challtestsrv)
    _, unrelated, _ = await issue(two, ["ls-unrelated.example"], challtestsrv)
    await two.revoke(_der(theirs))

    assert await _serials(service, capsys, "--name", "LS-Name.example.") == [
        serial_of(theirs),
        serial_of(base),
    ]
    assert await _serials(service, capsys, "--name", "*.ls-name.example") == [serial_of(wildcard)]
    assert await _serials(service, capsys, "--name", "ls-name-b.example") == [serial_of(base)]
    # Filters combine.
    assert await _serials(
        service, capsys, "--name", "ls-name.example", "--account", one.kid or ""
    ) == [serial_of(base)]
    assert await _serials(service, capsys, "--name", "ls-name.example", "--live") == [
        serial_of(base)
    ]
    assert await _serials(service, capsys, "--name", "ls-name.example", "--revoked") == [
        serial_of(theirs)
    ]
    assert await _serials(service, capsys, "--name", "ls-nonesuch.example") == []
    # An IP address identifier (RFC 8738).
    _, ip, _ = await issue(one, ["127.0.0.1"], challtestsrv)
    assert await _serials(service, capsys, "--name", "127.0.0.1", "--account", one.kid or "") == [
        serial_of(ip)
    ]

    colons = ":".join(f"{b:02x}" for b in unrelated.serial_number.to_bytes(16, "big"))
    picked = await _serials(
        service, capsys, "--serial", colons, "--serial", f"0x{base.serial_number:X}"
    )
    assert picked == [serial_of(unrelated), serial_of(base)]
    # An unknown serial is simply not listed.
    assert await _serials(service, capsys, "--serial", "abcdef") == []
    with pytest.raises(SystemExit):
        await run_admin(service, capsys, "certificates", "--serial", "xyz")
    with pytest.raises(SystemExit):
        await run_admin(service, capsys, "certificates", "--name", "two words.example")


async def test_a_listing_stops_at_its_limit_and_says_so(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    certs = [(await issue(client, [f"ls-limit-{i}.example"], challtestsrv))[1] for i in range(3)]
    kid = client.kid or ""
    shown = await _listed(service, capsys, "--account", kid, "--limit", "2")
    assert [c["serial"] for c in shown["certificates"]] == [
        serial_of(certs[2]),
        serial_of(certs[1]),
    ]
    assert shown["truncated"] is True
    ran = await run_admin(service, capsys, "certificates", "--account", kid, "--limit", "2")
    assert len(ran.out.splitlines()) == 2
    assert "more certificates match; the 2 newest are shown" in ran.err
    whole = await _listed(service, capsys, "--account", kid, "--limit", "3")
    assert whole["truncated"] is False
    assert len(whole["certificates"]) == 3
    assert (await run_admin(service, capsys, "certificates", "--limit", "0")).code == 2


async def test_an_unknown_account_is_an_error(
    service: AcmeService, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = await run_admin(service, capsys, "certificates", "--account", "nosuchaccount")
    assert ran.code == 1
    assert "no account 'nosuchaccount'" in ran.err
    with pytest.raises(SystemExit):
        await run_admin(service, capsys, "certificates", "--account", "https://ca.example/acct")


def test_names_are_read_as_certificates_name_them() -> None:
    assert name_arg(" WWW.Example.COM. ") == Identifier(type="dns", value="www.example.com")
    assert name_arg("*.example.com") == Identifier(type="dns", value="*.example.com")
    assert name_arg("2001:DB8:0:0::1") == Identifier(type="ip", value="2001:db8::1")
    assert name_arg("192.0.2.1") == Identifier(type="ip", value="192.0.2.1")
    for refused in ("", "bücher.example", "two words.example"):
        with pytest.raises(argparse.ArgumentTypeError):
            name_arg(refused)


def test_accounts_by_id_or_url() -> None:
    assert account_arg("0abc123") == "0abc123"
    assert account_arg("https://ca.example:14000/acme/acct/0abc123") == "0abc123"
    assert account_arg("https://ca.example/acme/acct/0abc123/") == "0abc123"
    for refused in ("https://ca.example/acme/order/1", "https://ca.example/", "a/b", "x" * 33):
        with pytest.raises(argparse.ArgumentTypeError):
            account_arg(refused)
