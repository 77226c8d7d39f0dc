"""lego, unmodified from Debian, against a running acme-ca with real validation.

http-01 and tls-alpn-01 by lego's own responders on the server's validation ports; dns-01 by
lego's exec provider, whose program publishes the TXT record in challtestsrv.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.conftest import (
    AcmeServer,
    Client,
    assert_chains_to_root,
    dns_names,
    hook_executable,
    load_pems,
)

pytestmark = pytest.mark.interop


def _certificates(lego: Client) -> Path:
    return lego.state_dir / "certificates"


def _assert_issued(lego: Client, server: AcmeServer, stem: str, names: set[str]) -> int:
    """lego's ``<stem>.crt`` bundle names exactly ``names`` and chains to the root."""
    leaf, *intermediates = load_pems(_certificates(lego) / f"{stem}.crt")
    assert load_pems(_certificates(lego) / f"{stem}.issuer.crt") == intermediates
    assert dns_names(leaf) == names
    for name in names:
        assert_chains_to_root(leaf, intermediates, server.root_pem, name.replace("*", "x"))
    return leaf.serial_number


def _http01(server: AcmeServer) -> list[str]:
    return ["--http", "--http.port", f"127.0.0.1:{server.http01_port}"]


def test_lego_http01_run(lego: Client, acme_server: AcmeServer) -> None:
    lego.ok(*_http01(acme_server), "-d", "l1.example.test", "run")
    _assert_issued(lego, acme_server, "l1.example.test", {"l1.example.test"})


def test_lego_tlsalpn01_run(lego: Client, acme_server: AcmeServer) -> None:
    tls = ["--tls", "--tls.port", f"127.0.0.1:{acme_server.tlsalpn01_port}"]
    lego.ok(*tls, "-d", "l2.example.test", "run")
    _assert_issued(lego, acme_server, "l2.example.test", {"l2.example.test"})


def test_lego_dns01_wildcard_with_exec_provider(
    lego: Client, acme_server: AcmeServer, tmp_path: Path
) -> None:
    lego.env.update(
        EXEC_PATH=str(hook_executable(tmp_path)),
        EXEC_PROPAGATION_TIMEOUT="10",
        EXEC_POLLING_INTERVAL="1",
        # exec solves one identifier after another, pausing this long (60 s by default).
        EXEC_SEQUENCE_INTERVAL="1",
    )
    resolver = f"127.0.0.1:{acme_server.challtestsrv.dns_port}"
    dns = ["--dns", "exec", "--dns.resolvers", resolver, "--dns.disable-cp"]
    lego.ok(*dns, "-d", "*.lw.example.test", "-d", "lw.example.test", "run")
    names = {"*.lw.example.test", "lw.example.test"}
    _assert_issued(lego, acme_server, "_.lw.example.test", names)


def test_lego_renew_issues_new_serial(lego: Client, acme_server: AcmeServer) -> None:
    lego.ok(*_http01(acme_server), "-d", "l1r.example.test", "run")
    first = _assert_issued(lego, acme_server, "l1r.example.test", {"l1r.example.test"})
    # --days 1000 exceeds any validity, so lego renews now; without a tty lego would first
    # sleep a random few minutes.
    renew = ["renew", "--days", "1000", "--no-random-sleep"]
    lego.ok(*_http01(acme_server), "-d", "l1r.example.test", *renew)
    second = _assert_issued(lego, acme_server, "l1r.example.test", {"l1r.example.test"})
    assert second != first


def test_lego_revoke(lego: Client, acme_server: AcmeServer) -> None:
    lego.ok(*_http01(acme_server), "-d", "l1v.example.test", "run")
    _assert_issued(lego, acme_server, "l1v.example.test", {"l1v.example.test"})
    revoked = lego.ok("-d", "l1v.example.test", "revoke", "--keep")
    lego.expect_in_output(revoked, "revoked")
    # Revoking again is refused (RFC 8555 §7.6): the server recorded the first revocation.
    again = lego.fails("-d", "l1v.example.test", "revoke", "--keep")
    lego.expect_in_output(again, "alreadyRevoked", "already revoked")
