"""certbot, unmodified from PyPI, against a running acme-ca with real validation.

http-01 by certbot's standalone responder on the server's http-01 port; dns-01 by manual hooks
that publish the TXT record in challtestsrv, which is the server's resolver.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

from tests.interop.conftest import (
    AcmeServer,
    Client,
    assert_chains_to_root,
    dns_names,
    hook_command,
    load_pems,
)

pytestmark = pytest.mark.interop

EMAIL = "certbot@example.test"


def _live(certbot: Client, lineage: str) -> Path:
    return certbot.state_dir / "live" / lineage


def _http01_certonly(certbot: Client, server: AcmeServer, *domains: str) -> Path:
    """``certonly --standalone`` over http-01 (registering if needed); returns the live dir."""
    args = [arg for domain in domains for arg in ("-d", domain)]
    certbot.ok(
        "certonly",
        "--agree-tos",
        "--email",
        EMAIL,
        "--standalone",
        "--preferred-challenges",
        "http-01",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(server.http01_port),
        *args,
    )
    return _live(certbot, domains[0])


def _assert_issued(live: Path, server: AcmeServer, names: set[str]) -> int:
    """The lineage's cert.pem names exactly ``names`` and chains to the root; returns its serial."""
    (leaf,) = load_pems(live / "cert.pem")
    intermediates = load_pems(live / "chain.pem")
    assert load_pems(live / "fullchain.pem") == [leaf, *intermediates]
    assert dns_names(leaf) == names
    for name in names:
        assert_chains_to_root(leaf, intermediates, server.root_pem, name.replace("*", "x"))
    return leaf.serial_number


def _logged_responses(certbot: Client) -> list[dict[str, object]]:
    """The JSON bodies of the server's responses, from certbot's debug log (one line each)."""
    bodies = []
    for line in certbot.extra_logs[0].read_text().splitlines():
        if line.startswith('{"'):
            with contextlib.suppress(ValueError):
                bodies.append(json.loads(line))
    return [b for b in bodies if isinstance(b, dict)]


def _account_dirs(certbot: Client) -> list[Path]:
    accounts = certbot.state_dir / "accounts"
    return [p.parent for p in accounts.rglob("regr.json")]


def test_certbot_register_then_http01_certonly(certbot: Client, acme_server: AcmeServer) -> None:
    certbot.ok("register", "--agree-tos", "--email", EMAIL)
    assert len(_account_dirs(certbot)) == 1
    certbot.ok(
        "certonly",
        "--standalone",
        "--preferred-challenges",
        "http-01",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(acme_server.http01_port),
        "-d",
        "a.example.test",
    )
    _assert_issued(_live(certbot, "a.example.test"), acme_server, {"a.example.test"})


def test_certbot_dns01_wildcard_with_manual_hooks(certbot: Client, acme_server: AcmeServer) -> None:
    certbot.ok(
        "certonly",
        "--agree-tos",
        "--email",
        EMAIL,
        "--manual",
        "--preferred-challenges",
        "dns",
        "--manual-auth-hook",
        hook_command("certbot-auth"),
        "--manual-cleanup-hook",
        hook_command("certbot-cleanup"),
        "-d",
        "*.wild.example.test",
        "-d",
        "wild.example.test",
    )
    live = _live(certbot, "wild.example.test")
    _assert_issued(live, acme_server, {"*.wild.example.test", "wild.example.test"})


def test_certbot_renew_force_renewal_issues_new_serial(
    certbot: Client, acme_server: AcmeServer
) -> None:
    live = _http01_certonly(certbot, acme_server, "renew.example.test")
    first = _assert_issued(live, acme_server, {"renew.example.test"})
    certbot.ok("renew", "--force-renewal", "--no-random-sleep-on-renew")
    second = _assert_issued(live, acme_server, {"renew.example.test"})
    assert second != first


def test_certbot_revoke_key_compromise_signed_with_cert_key(
    certbot: Client, acme_server: AcmeServer, tmp_path: Path
) -> None:
    # RFC 8555 §7.6: a request signed by the certificate's own key (jwk, not kid).
    live = _http01_certonly(certbot, acme_server, "revoke1.example.test")
    _assert_issued(live, acme_server, {"revoke1.example.test"})
    saved = tmp_path / "revoked-cert.pem"
    shutil.copy(live / "cert.pem", saved)
    certbot.ok(
        "revoke",
        "--cert-path",
        str(live / "cert.pem"),
        "--key-path",
        str(live / "privkey.pem"),
        "--reason",
        "keycompromise",
        "--delete-after-revoke",
    )
    assert not live.exists(), "certbot did not delete the revoked lineage"
    # The server's state changed: revoking again is refused (RFC 8555 §7.6, alreadyRevoked).
    again = certbot.fails("revoke", "--cert-path", str(saved), "--no-delete-after-revoke")
    certbot.expect_in_output(again, "alreadyRevoked", "already revoked")


def test_certbot_revoke_by_account_then_again_is_already_revoked(
    certbot: Client, acme_server: AcmeServer
) -> None:
    live = _http01_certonly(certbot, acme_server, "revoke2.example.test")
    _assert_issued(live, acme_server, {"revoke2.example.test"})
    cert_path = str(live / "cert.pem")
    certbot.ok(
        "revoke", "--cert-path", cert_path, "--reason", "superseded", "--no-delete-after-revoke"
    )
    assert (live / "cert.pem").exists()
    again = certbot.fails("revoke", "--cert-path", cert_path, "--no-delete-after-revoke")
    certbot.expect_in_output(again, "alreadyRevoked", "already revoked")


def test_certbot_update_account_then_unregister(
    certbot: Client, acme_server: AcmeServer, tmp_path: Path
) -> None:
    certbot.ok("register", "--agree-tos", "--email", EMAIL)
    updated = certbot.ok("update_account", "--email", "new@example.test")
    # certbot keeps no account body on disk; its debug log has the server's answers.
    accounts = [r for r in _logged_responses(certbot) if "contact" in r]
    assert accounts, certbot.explain(updated, "logged no account object")
    assert accounts[-1]["contact"] == ["mailto:new@example.test"], accounts[-1]
    (account,) = _account_dirs(certbot)

    # certbot forgets a deactivated account; keep a copy to show that the server refuses it.
    kept = tmp_path / "kept-account"
    shutil.copytree(account, kept)
    certbot.ok("unregister")
    assert _account_dirs(certbot) == []
    shutil.copytree(kept, account)

    # RFC 8555 §7.3.6: requests signed by a deactivated account are unauthorized.
    refused = certbot.fails(
        "certonly",
        "--standalone",
        "--preferred-challenges",
        "http-01",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(acme_server.http01_port),
        "-d",
        "deactivated.example.test",
    )
    certbot.expect_in_output(refused, "unauthorized", "deactivated")
