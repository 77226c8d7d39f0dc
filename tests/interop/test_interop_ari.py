"""certbot (4.1+ reads ARI, RFC 9773) renews early when the operator says so, and not before.

The server here answers renewalInfo with `Retry-After: 1` (certbot stores it and skips ARI
until then), so that two `certbot renew` runs a few seconds apart both ask the server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from acme_ca.protocol.ari import format_cert_id
from acme_ca.ra.renewal import key_identifier_of
from tests.interop.conftest import (
    ACME_CA,
    LOOPBACK,
    AcmeServer,
    ChallTestSrv,
    Client,
    load_pems,
    running_acme_server,
)

pytestmark = pytest.mark.interop

NAME = "ari.example.test"


@pytest.fixture(scope="module")
def acme_server(
    tmp_path_factory: pytest.TempPathFactory, challtestsrv_process: ChallTestSrv
) -> Iterator[AcmeServer]:
    """This module's own server (overriding the session one for its `certbot` fixture)."""
    workdir = tmp_path_factory.mktemp("acme-ca-ari")
    with running_acme_server(workdir, challtestsrv_process, "--ari-retry-after", "1") as server:
        yield server


def _serial(live: Path) -> int:
    (leaf,) = load_pems(live / "cert.pem")
    return leaf.serial_number


def _renew(certbot: Client) -> str:
    return certbot.ok("renew", "--no-random-sleep-on-renew").output


def test_certbot_renews_after_renew_early_and_not_before(
    certbot: Client, acme_server: AcmeServer
) -> None:
    certbot.ok(
        "certonly",
        "--agree-tos",
        "--email",
        "ari@example.test",
        "--standalone",
        "--preferred-challenges",
        "http-01",
        "--http-01-address",
        LOOPBACK,
        "--http-01-port",
        str(acme_server.http01_port),
        "-d",
        NAME,
    )
    live = certbot.state_dir / "live" / NAME
    first = _serial(live)
    (leaf,) = load_pems(live / "cert.pem")
    aki = key_identifier_of(leaf)
    assert aki is not None
    cert_id = format_cert_id(aki, first)
    log = certbot.extra_logs[0]

    # Fresh certificate, window two thirds in: certbot asks the server and keeps it.
    # (certbot 5.8 sends no `replaces` in newOrder; tests/wfe/test_wfe_ari.py covers it.)
    output = _renew(certbot)
    assert _serial(live) == first, output
    assert "not yet due for renewal" in output, output
    assert f"renewal-info/{cert_id}" in log.read_text(), "certbot did not ask for renewalInfo"
    assert "An error occurred requesting ACME Renewal Information" not in log.read_text()

    time.sleep(1.5)  # past the Retry-After certbot stored
    marked = subprocess.run(
        [
            str(ACME_CA), "admin", "renew-early",
            "--serial", format(first, "x"),
            "--data-dir", str(acme_server.data_dir),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "marked 1 certificate" in marked.stdout

    output = _renew(certbot)
    second = _serial(live)
    assert second != first, certbot.explain(
        certbot.run("certificates"), "did not renew after renew-early"
    )
    # It renewed because the server said so: this run asked for renewalInfo too.
    assert f"renewal-info/{cert_id}" in log.read_text()
    (new_leaf,) = load_pems(live / "cert.pem")
    assert new_leaf.public_bytes(serialization.Encoding.DER) != leaf.public_bytes(
        serialization.Encoding.DER
    )
