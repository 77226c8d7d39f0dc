"""ACME Renewal Information (RFC 9773): renewalInfo windows, renew-early marks, `replaces`."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_ca.bench.client import AcmeClient, AcmeProblem, Endpoint
from acme_ca.ca import create_ca
from acme_ca.cli import main as cli_main
from acme_ca.clock import SystemClock
from acme_ca.errors import ProblemType, malformed
from acme_ca.protocol.ari import format_cert_id, parse_cert_id
from acme_ca.ra.renewal import immediate_window, suggested_window
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue
from tests.conftest import BASE_URL

RENEWAL_INFO = f"{BASE_URL}/acme/renewal-info"


def cert_id(cert: x509.Certificate) -> str:
    """The certID as certbot computes it (acme.client._renewal_info_path_component)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number
    serial_bytes = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    return f"{enc(aki.key_identifier)}.{enc(serial_bytes)}"


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def window(
    http: httpx.AsyncClient, cert: x509.Certificate
) -> tuple[dt.datetime, dt.datetime]:
    resp = await http.get(f"{RENEWAL_INFO}/{cert_id(cert)}")
    assert resp.status_code == 200, resp.text
    assert resp.headers["retry-after"] == "21600"
    body = resp.json()["suggestedWindow"]
    return parse_time(body["start"]), parse_time(body["end"])


def in_past(w: tuple[dt.datetime, dt.datetime]) -> bool:
    now = dt.datetime.now(dt.UTC)
    return w[0] < w[1] < now


# ---- certID -----------------------------------------------------------------


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, 2**127 + 12345, 2**128 - 1])
def test_cert_id_round_trips_like_certbot(serial: int) -> None:
    aki = bytes(range(20))
    text = format_cert_id(aki, serial)
    serial_bytes = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    expected = (
        base64.urlsafe_b64encode(aki).decode().rstrip("=")
        + "."
        + base64.urlsafe_b64encode(serial_bytes).decode().rstrip("=")
    )
    assert text == expected
    parsed = parse_cert_id(text)
    assert (parsed.key_identifier, parsed.serial) == (aki, serial)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "abc.", ".abc", "a=b.AQ", "AQI.AQ==", "AQI.gA", "AQI.AAE", "AQI.a b", "A.AQ"],
)
def test_malformed_cert_ids(text: str) -> None:
    # No dot, padding, a negative serial (0x80), a non-minimal one (0x0001), bad base64.
    with pytest.raises(type(malformed(""))) as info:
        parse_cert_id(text)
    assert info.value.type == ProblemType.MALFORMED


def test_window_is_boulders() -> None:
    nb = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    na = nb + dt.timedelta(days=90) - dt.timedelta(seconds=1)
    start, end = suggested_window(nb, na)
    # Ideal: a third of the validity before notAfter; margin: 1% of it.
    ideal = na - dt.timedelta(days=30)
    assert (start, end) == (ideal - dt.timedelta(days=0.9), ideal + dt.timedelta(days=0.9))
    now = dt.datetime(2030, 2, 1, 12, 30, 45, tzinfo=dt.UTC)
    assert immediate_window(now) == (now - dt.timedelta(hours=1), now - dt.timedelta(minutes=30))


# ---- renewalInfo ----------------------------------------------------------------


async def test_directory_names_renewal_info(http: httpx.AsyncClient) -> None:
    directory = (await http.get("/directory")).json()
    assert directory["renewalInfo"] == RENEWAL_INFO


async def test_renewal_info_window(
    http: httpx.AsyncClient, make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["ari.example"], challtestsrv)
    start, end = await window(http, cert)
    assert (start, end) == suggested_window(cert.not_valid_before_utc, cert.not_valid_after_utc)
    assert cert.not_valid_before_utc < start < end < cert.not_valid_after_utc
    assert not in_past((start, end))
    # Plain GET, like the directory (RFC 9773 §4.1): no JWS needed, POST is refused.
    assert (await http.post(f"{RENEWAL_INFO}/{cert_id(cert)}")).status_code == 405


async def test_renewal_info_errors(
    http: httpx.AsyncClient, make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["ari-errors.example"], challtestsrv)
    bad = await http.get(f"{RENEWAL_INFO}/not-a-cert-id")
    assert bad.status_code == 400
    assert bad.json()["type"] == ProblemType.MALFORMED
    aki, _, _ = cert_id(cert).partition(".")
    unknown = await http.get(f"{RENEWAL_INFO}/{aki}.{format_cert_id(b'x', 0x7777).split('.')[1]}")
    assert unknown.status_code == 404
    # The right serial under another issuer's key identifier is not this certificate.
    wrong_aki = format_cert_id(b"\x01" * 20, cert.serial_number)
    assert (await http.get(f"{RENEWAL_INFO}/{wrong_aki}")).status_code == 404


async def test_revoked_certificate_should_renew_now(
    http: httpx.AsyncClient, make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["ari-revoked.example"], challtestsrv)
    assert not in_past(await window(http, cert))
    await client.revoke(cert.public_bytes(serialization.Encoding.DER), reason=4)
    assert in_past(await window(http, cert))


async def test_renew_early_by_serial(
    service: AcmeService,
    http: httpx.AsyncClient,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
) -> None:
    client = await make_client()
    _, marked, _ = await issue(client, ["early.example"], challtestsrv)
    _, other, _ = await issue(client, ["not-early.example"], challtestsrv)
    count = await service.ra.renewal.mark_early(serials=[f"0x{marked.serial_number:X}"])
    assert count == 1
    assert in_past(await window(http, marked))
    assert not in_past(await window(http, other))
    # Marking again changes nothing: the first mark stays.
    assert await service.ra.renewal.mark_early(serials=[format(marked.serial_number, "x")]) == 0


async def test_renew_early_by_date_range_and_issuer(
    service: AcmeService,
    http: httpx.AsyncClient,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    tmp_path: Any,
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["range.example"], challtestsrv)
    nb = cert.not_valid_before_utc
    renewal = service.ra.renewal
    await renewal.mark_early(issued_after=nb + dt.timedelta(seconds=1))
    assert not in_past(await window(http, cert))
    await renewal.mark_early(issued_after=nb - dt.timedelta(seconds=1), issued_before=nb)
    assert not in_past(await window(http, cert))
    other = tmp_path / "other-ca"
    create_ca(other, clock=SystemClock())
    other_issuer = x509.load_pem_x509_certificates((other / "intermediate.pem").read_bytes())[0]
    await renewal.mark_early(issuer=other_issuer, issued_after=nb)
    assert not in_past(await window(http, cert))
    own = x509.load_pem_x509_certificates(
        (service.settings.data_dir / "intermediate.pem").read_bytes()
    )[0]
    await renewal.mark_early(
        issuer=own, issued_after=nb, issued_before=nb + dt.timedelta(seconds=1)
    )
    assert in_past(await window(http, cert))


async def test_renew_early_from_the_command_line(
    service: AcmeService,
    http: httpx.AsyncClient,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["cli-early.example"], challtestsrv)
    argv = [
        "admin",
        "renew-early",
        "--serial",
        format(cert.serial_number, "X"),
        "--data-dir",
        str(service.settings.data_dir),
        "--database",
        service.settings.database_url,
        "--json",
    ]
    assert await asyncio.to_thread(cli_main, argv) == 0
    assert '{"marked": 1}' in capsys.readouterr().out
    assert in_past(await window(http, cert))
    # Without a selector, nothing is marked.
    assert await asyncio.to_thread(cli_main, argv[:2] + argv[4:]) == 2


# ---- replaces ---------------------------------------------------------------------


async def new_order(client: AcmeClient, names: list[str], replaces: str) -> dict[str, Any]:
    payload = {"identifiers": [{"type": "dns", "value": n} for n in names], "replaces": replaces}
    resp = await client.post(
        (await client.directory())["newOrder"], payload, endpoint=Endpoint.NEW_ORDER
    )
    assert resp.status == 201
    body = dict(resp.body)
    body["url"] = resp.location
    return body


async def test_replaces_accepted_once(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["replace.example"], challtestsrv)
    order = await new_order(client, ["replace.example", "www.replace.example"], cert_id(cert))
    assert order["replaces"] == cert_id(cert)
    with pytest.raises(AcmeProblem) as info:
        await new_order(client, ["replace.example"], cert_id(cert))
    assert info.value.status == 409
    assert info.value.type == ProblemType.ALREADY_REPLACED
    # Once the replacing order is invalid (its authorization deactivated), a new one may replace.
    for authz_url in order["authorizations"]:
        await client.deactivate_authorization(authz_url)
    again = await new_order(client, ["replace.example"], cert_id(cert))
    assert again["replaces"] == cert_id(cert)


async def test_concurrent_replacing_orders_have_one_winner(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    """RFC 9773 §5: both may pass the check before either is stored; the insert decides."""
    client = await make_client()
    _, cert, _ = await issue(client, ["race.replace.example"], challtestsrv)
    results = await asyncio.gather(
        *(new_order(client, ["race.replace.example"], cert_id(cert)) for _ in range(2)),
        return_exceptions=True,
    )
    orders = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, AcmeProblem)]
    assert len(orders) == 1, results
    assert len(refused) == 1, results
    assert (refused[0].status, refused[0].type) == (409, ProblemType.ALREADY_REPLACED)
    listing = await client.post_as_get((await client.post_as_get(client.kid or "")).body["orders"])
    assert orders[0]["url"] in listing.body["orders"]
    assert len(listing.body["orders"]) == 2  # the issued one and the winner


async def test_replaces_refused(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    owner = await make_client()
    stranger = await make_client()
    _, cert, _ = await issue(owner, ["owned.example"], challtestsrv)
    cases = [
        (stranger, ["owned.example"], cert_id(cert), 403, ProblemType.UNAUTHORIZED),
        (owner, ["unrelated.example"], cert_id(cert), 400, ProblemType.MALFORMED),
        (owner, ["owned.example"], "AQI.AQ", 400, ProblemType.MALFORMED),  # unknown certificate
        (owner, ["owned.example"], "AQI.gA", 400, ProblemType.MALFORMED),  # negative serial
        (owner, ["owned.example"], "no-dot", 400, ProblemType.MALFORMED),
    ]
    for client, names, replaces, status, problem in cases:
        with pytest.raises(AcmeProblem) as info:
            await new_order(client, names, replaces)
        assert (info.value.status, info.value.type) == (status, problem), replaces
