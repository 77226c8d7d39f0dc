"""Caddy (unmodified from Debian; its ACME client is CertMagic/acmez) against acme-ca.

Caddy obtains certificates for its sites on start, answering http-01 on its HTTP port and
tls-alpn-01 on its HTTPS port; those are the ports acme-ca validates against. The test
then connects to Caddy's HTTPS port and checks that it serves a chain to acme-ca's root.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.interop.conftest import AcmeServer, _require, _start, _stop, dns_names, tail

pytestmark = pytest.mark.interop

_OBTAIN_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def caddy_bin() -> Path:
    on_path = shutil.which("caddy")
    return _require("caddy", Path(on_path) if on_path else None)


@contextlib.contextmanager
def _caddy(binary: Path, server: AcmeServer, tmp_path: Path, sites: str) -> Iterator[Path]:
    """Caddy running `sites` with acme-ca as its CA; yields its log."""
    storage = tmp_path / "caddy-storage"
    config = tmp_path / "Caddyfile"
    config.write_text(
        "{\n"
        f"\tacme_ca {server.directory_url}\n"
        f"\tacme_ca_root {server.root_pem}\n"
        "\temail caddy@example.test\n"
        f"\thttp_port {server.http01_port}\n"
        f"\thttps_port {server.tlsalpn01_port}\n"
        "\tadmin off\n"
        f"\tstorage file_system {storage}\n"
        "}\n" + sites
    )
    log = tmp_path / "caddy.log"
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = _start(
        [str(binary), "run", "--config", str(config), "--adapter", "caddyfile"], log, env=env
    )
    try:
        yield log
    finally:
        _stop(proc)


def _served_leaf(server: AcmeServer, name: str) -> x509.Certificate | None:
    """The leaf Caddy serves for `name`, if it verifies against acme-ca's root."""
    context = ssl.create_default_context(cafile=str(server.root_pem))
    try:
        with (
            socket.create_connection(("127.0.0.1", server.tlsalpn01_port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None  # not listening yet, or still its own placeholder certificate
    return x509.load_der_x509_certificate(der) if der else None


def _wait_for_certificates(server: AcmeServer, names: list[str], log: Path) -> None:
    deadline = time.monotonic() + _OBTAIN_TIMEOUT
    pending = list(names)
    while pending and time.monotonic() < deadline:
        leaf = _served_leaf(server, pending[0])
        if leaf is not None:
            assert pending[0] in dns_names(leaf)
            pending.pop(0)
            continue
        time.sleep(0.5)
    if pending:
        pytest.fail(
            f"caddy served no certificate from acme-ca for {pending}:\n--- caddy ---\n"
            f"{tail(log, 40)}\n--- acme-ca ---\n{server.log_tail()}"
        )


def _site(server: AcmeServer, names: list[str], disable: str) -> str:
    """A site block for `names` whose ACME issuer is acme-ca with one challenge type off
    (Caddy otherwise picks between http-01 and tls-alpn-01 at random)."""
    return (
        f"{', '.join(names)} {{\n"
        "\ttls {\n"
        "\t\tissuer acme {\n"
        f"\t\t\tdir {server.directory_url}\n"
        f"\t\t\ttrusted_roots {server.root_pem}\n"
        f"\t\t\t{disable}\n"
        "\t\t}\n"
        "\t}\n"
        '\trespond "hello"\n'
        "}\n"
    )


def _solved_by(log: Path) -> set[str]:
    text = log.read_text(errors="replace")
    return {kind for kind in ("http-01", "tls-alpn-01", "dns-01") if f'"{kind}"' in text}


def test_caddy_obtains_and_serves_certificates_by_http01(
    caddy_bin: Path, acme_server: AcmeServer, tmp_path: Path
) -> None:
    names = ["caddy1.example.test", "caddy2.example.test"]
    sites = _site(acme_server, names, "disable_tlsalpn_challenge")
    with _caddy(caddy_bin, acme_server, tmp_path, sites) as log:
        _wait_for_certificates(acme_server, names, log)
        assert _solved_by(log) == {"http-01"}


def test_caddy_obtains_a_certificate_by_tlsalpn01(
    caddy_bin: Path, acme_server: AcmeServer, tmp_path: Path
) -> None:
    # RFC 8737: with the http-01 challenge off, Caddy answers tls-alpn-01 on its :443.
    sites = _site(acme_server, ["caddy-alpn.example.test"], "disable_http_challenge")
    with _caddy(caddy_bin, acme_server, tmp_path, sites) as log:
        _wait_for_certificates(acme_server, ["caddy-alpn.example.test"], log)
        assert _solved_by(log) == {"tls-alpn-01"}
