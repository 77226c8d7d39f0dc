"""Helpers for tests of `acme-ca admin ...` against the in-process service's database."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from sqlalchemy import update

from acme_ca.bench.client import AcmeClient, build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.cli import main as cli_main
from acme_ca.service import AcmeService
from acme_ca.status import StatusListener, StatusSettings, bind_listener
from acme_ca.storage import codec
from acme_ca.storage.schema import certificates
from acme_ca.testing import ChallengeTestServer

__all__ = ["Ran", "expire", "issue_wildcard", "run_admin", "serial_of", "status_listener"]


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str


async def run_admin(service: AcmeService, capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    """`acme-ca admin ARGV` on the service's data directory and database, as an operator
    runs it beside a serving CA (its own engines, on a thread of its own)."""
    capsys.readouterr()
    settings = service.settings
    full = ["admin", *argv, "--data-dir", str(settings.data_dir)]
    full += ["--database", settings.database_url]
    code = await asyncio.to_thread(cli_main, full)
    captured = capsys.readouterr()
    return Ran(code=code, out=captured.out, err=captured.err)


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


async def expire(service: AcmeService, cert: x509.Certificate) -> None:
    """Make the stored certificate read as expired (notAfter a second ago)."""
    past = codec.to_us(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    async with service.ra.ctx.storage.engines.writer.begin() as conn:
        await conn.execute(
            update(certificates)
            .where(certificates.c.serial == serial_of(cert))
            .values(not_after=past)
        )


def status_listener(service: AcmeService) -> Iterator[str]:
    """The CRL/OCSP listener as `acme-ca serve` runs it, on the service's database."""
    sock = bind_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    listener = StatusListener(
        StatusSettings(
            data_dir=service.settings.data_dir,
            database_url=service.settings.database_url,
            base_url=service.settings.revocation_base_url,
            ocsp=True,
            log_level="warning",
        ),
        sock,
    )
    listener.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.stop()


async def issue_wildcard(
    client: AcmeClient, base: str, cts: ChallengeTestServer
) -> x509.Certificate:
    """A certificate for `*.base` alone, validated over dns-01 (RFC 8555 §7.1.3)."""
    resp = await client.new_order([f"*.{base}"])
    authz_url = resp.body["authorizations"][0]
    chall = (await client.post_as_get(authz_url)).body["challenges"][0]
    cts.set_txt(f"_acme-challenge.{base}", client.dns01_txt_value(chall["token"]))
    await client.respond_challenge(chall["url"])
    await client.poll(authz_url, until={"valid"}, timeout=10)
    order = await client.poll(resp.location or "", until={"ready"}, timeout=10)
    final = await client.finalize(
        order.body["finalize"], build_csr(generate_key("p256"), [f"*.{base}"])
    )
    assert final.body["status"] == "valid", final.body
    pem = (await client.download_certificate(final.body["certificate"])).content
    return x509.load_pem_x509_certificates(pem)[0]
