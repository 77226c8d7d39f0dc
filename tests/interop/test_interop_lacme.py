"""lacme (Debian's ACMEv2 client in Perl with privilege separation; packages lacme and
lacme-accountd, unmodified) against a running acme-ca with real http-01 validation.

lacme is four processes: the master (`lacme`, which writes CSRs with openssl, checks and
installs certificates), lacme-accountd (the only one holding the account key; it signs what
it is sent), the ACME client (/usr/libexec/lacme/client, on LWP) and a small webserver that
answers /.well-known/acme-challenge/ from the client's token files. Each test writes its own
lacme.conf, lacme-accountd.conf and certificate configuration in tmp_path, with RSA account
keys (the only kind lacme-accountd signs with) and state, keys and certificates there too:

- [webserver] listens on 127.0.0.1 on the server's http-01 port only;
- the client and the webserver drop privileges to the current user (their `user`/`group`
  options; the package's _lacme-client and _lacme-www could not read tmp_path);
- TLS verification stays on. The master gives the client a scrubbed environment and the
  client accepts no CA option (only SSL_verify, SSL_version and SSL_cipher_list), but its
  `command` is a command line: `/usr/bin/env PERL_LWP_SSL_CA_FILE=ROOT
  /usr/libexec/lacme/client`, which LWP::UserAgent reads as its CA file. No mount namespace
  is needed (as it is for uacme), and without it the client fails with "certificate verify
  failed".
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.interop.conftest import (
    LOOPBACK,
    AcmeServer,
    Client,
    ClientRun,
    _client_env,
    _require,
    _start,
    _stop,
    _wait_until,
    assert_chains_to_root,
    dns_names,
    free_port,
    load_pems,
    tail,
)

pytestmark = pytest.mark.interop

LACME_CLIENT = Path("/usr/libexec/lacme/client")  # of the lacme package
ENV = Path("/usr/bin/env")
SECTION = "cert"  # the one section of each certificate configuration written here
ACCOUNT_KEY = "account.key"  # in tmp_path: the `lacme` fixture's account key


@pytest.fixture(scope="session")
def lacme_bin() -> Path:
    on_path = shutil.which("lacme") or "/usr/sbin/lacme"  # sbin is not on every PATH
    _require("lacme (its ACME client)", LACME_CLIENT)
    return _require("lacme", Path(on_path))


@pytest.fixture(scope="session")
def lacme_accountd_bin() -> Path:
    on_path = shutil.which("lacme-accountd")
    return _require("lacme-accountd", Path(on_path) if on_path else None)


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def rsa_key(path: Path) -> Path:
    return _write_key(path, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _no_blanks(*paths: Path) -> None:
    # lacme splits `command` on whitespace; pytest's tmp paths have none.
    for path in paths:
        assert not re.search(r"\s", str(path)), f"{path} has whitespace"


def _drop_to_current_user() -> str:
    """[client]/[webserver] user and group: the current user. Only root may set the
    supplementary groups lacme's group change sets, so others skip it (empty group)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name if os.geteuid() == 0 else ""
    return f"user = {user}\ngroup = {group}\n"


def lacme_client(
    binary: Path,
    server: AcmeServer,
    workdir: Path,
    *,
    privkey: Path | None,
    keyid: str = "",
    listen_port: int | None = None,
) -> Client:
    """lacme against `server`, configured in `workdir`. With `privkey`, lacme spawns
    lacme-accountd itself ([accountd] section) to sign with that key; without, there is no
    [accountd] section and the caller passes ``--socket=`` of a running lacme-accountd."""
    workdir.mkdir(exist_ok=True)
    tmp = workdir / "tmp"  # lacme's temporary challenge directory and client config
    tmp.mkdir(exist_ok=True)
    _no_blanks(server.root_pem, workdir)
    listen = f"{LOOPBACK}:{listen_port or server.http01_port}"
    drop = _drop_to_current_user()
    config = (
        f"config-certs = {workdir / 'certs.conf'}\n"
        "[client]\n"
        f"{drop}"
        f"server = {server.directory_url}\n"
        f"command = {ENV} PERL_LWP_SSL_CA_FILE={server.root_pem} {LACME_CLIENT}\n"
        "timeout = 30\n"
        "[webserver]\n"
        f"listen = {listen}\n"
        f"{drop}"
    )
    if privkey is not None:
        accountd_conf = workdir / "lacme-accountd.conf"
        accountd_conf.write_text(f"privkey = file:{privkey}\nkeyid = {keyid}\n")
        config += f"[accountd]\nconfig = {accountd_conf}\n"
    (workdir / "lacme.conf").write_text(config)
    env = _client_env(server)
    env["TMPDIR"] = str(tmp)
    return Client(
        name="lacme",
        binary=binary,
        server=server,
        state_dir=workdir,
        env=env,
        common_args=[f"--config={workdir / 'lacme.conf'}"],
        subcommand_first=False,
    )


@pytest.fixture
def lacme(lacme_bin: Path, acme_server: AcmeServer, tmp_path: Path) -> Client:
    """lacme with a fresh account key and no account yet."""
    return lacme_client(
        lacme_bin, acme_server, tmp_path / "lacme", privkey=rsa_key(tmp_path / ACCOUNT_KEY)
    )


@pytest.fixture
def lacme_account(lacme: Client) -> Client:
    lacme.ok("account", "--register", "--tos-agreed", "mailto:lacme@example.test")
    return lacme


def certificate_config(
    client: Client, names: Sequence[str], *, key: Path | None = None, san: bool = True
) -> tuple[Path, Path]:
    """Write the one section of `client`'s certificate configuration: subject CN the first
    name, subjectAltName all of them (unless not `san`), a P-256 key unless `key`; lacme
    verifies what it gets against the test root (CAfile). Returns (certificate,
    certificate-chain) as the configuration places them."""
    workdir = client.state_dir
    key = key or _write_key(workdir / "cert.key", ec.generate_private_key(ec.SECP256R1()))
    cert, chain = workdir / "cert.pem", workdir / "chain.pem"
    lines = [
        f"[{SECTION}]",
        f"certificate-key = {key}",
        f"certificate = {cert}",
        f"certificate-chain = {chain}",
        f"subject = /CN={names[0]}",
        f"CAfile = {client.server.root_pem}",
    ]
    if san:
        lines.append("subjectAltName = " + ",".join(f"DNS:{name}" for name in names))
    (workdir / "certs.conf").write_text("\n".join(lines) + "\n")
    return cert, chain


def issued(client: Client, names: set[str]) -> int:
    """Check the installed files (the leaf alone, and the leaf with its chain) and return
    the serial."""
    (leaf,) = load_pems(client.state_dir / "cert.pem")
    first, *intermediates = load_pems(client.state_dir / "chain.pem")
    assert first == leaf
    assert intermediates, "certificate-chain holds no chain"
    assert dns_names(leaf) == names
    for name in names:
        assert_chains_to_root(leaf, intermediates, client.server.root_pem, name)
    return leaf.serial_number


def validated_over_http01(server: AcmeServer, name: str) -> bool:
    return f"validation http-01 {name} " in server.log.read_text(errors="replace")


# -- account -------------------------------------------------------------------------------


def test_lacme_account_register(lacme: Client) -> None:
    created = lacme.ok("account", "--register", "--tos-agreed", "mailto:lacme@example.test")
    # lacme prints the account object the server returned (RFC 8555 §7.3), and its URL.
    lacme.expect_in_output(created, '"status":"valid"')
    lacme.expect_in_output(created, '"contact":["mailto:lacme@example.test"]')
    lacme.expect_in_output(created, '"termsOfServiceAgreed":true')
    kid = _key_id(lacme, created)
    # RFC 8555 §7.3.1: the same key registering again finds the same account.
    again = lacme.ok("account", "--register", "--tos-agreed", "mailto:lacme@example.test")
    assert _key_id(lacme, again) == kid


def test_lacme_account_contact_update(lacme_account: Client) -> None:
    # Without --register lacme looks the account up (onlyReturnExisting) and posts the new
    # contact to its URL (RFC 8555 §7.3.2).
    updated = lacme_account.ok("account", "mailto:other@example.test")
    lacme_account.expect_in_output(updated, '"contact":["mailto:other@example.test"]')


def test_lacme_register_without_terms_is_refused(lacme: Client) -> None:
    # The directory names terms of service; lacme exits non-zero with the server's detail.
    refused = lacme.fails("account", "--register", "mailto:lacme@example.test")
    lacme.expect_in_output(refused, "You must agree to the terms of service")


def test_lacme_deactivated_account_can_no_longer_order(lacme_account: Client) -> None:
    deactivated = lacme_account.ok("account", "--deactivate")  # RFC 8555 §7.3.6
    lacme_account.expect_in_output(deactivated, '"status":"deactivated"')
    certificate_config(lacme_account, ["ld.example.test"])
    # lacme starts every command with a newAccount lookup (onlyReturnExisting) signed by the
    # account's key: RFC 8555 §7.3.6 wants 401 unauthorized for it as for any request.
    refused = lacme_account.fails("newOrder")
    lacme_account.expect_in_output(refused, "401 Unauthorized (Account is deactivated)")


def _key_id(client: Client, result: ClientRun) -> str:
    found = re.search(r"^Key ID: (\S+)$", result.output, re.MULTILINE)
    if found is None:
        pytest.fail(client.explain(result, "printed no Key ID"))
    return found.group(1)


# -- issuance ------------------------------------------------------------------------------


def test_lacme_new_order_one_name(lacme_account: Client, acme_server: AcmeServer) -> None:
    # The name in the subject's CN only: lacme orders it (and openssl writes no SAN).
    certificate_config(lacme_account, ["l1.example.test"], san=False)
    done = lacme_account.ok("newOrder")
    lacme_account.expect_in_output(done, "Installing X.509 certificate chain")
    issued(lacme_account, {"l1.example.test"})
    assert validated_over_http01(acme_server, "l1.example.test")


def test_lacme_new_order_two_names(lacme_account: Client, acme_server: AcmeServer) -> None:
    names = ["l2.example.test", "www.l2.example.test"]
    certificate_config(lacme_account, names)
    lacme_account.ok("newOrder", SECTION)
    issued(lacme_account, set(names))
    # Two authorizations, each answered by lacme's webserver on the http-01 port.
    for name in names:
        assert validated_over_http01(acme_server, name), acme_server.log_tail()
    # Its temporary challenge directory is gone once lacme exits.
    assert list((lacme_account.state_dir / "tmp").iterdir()) == []


def test_lacme_renewal(lacme_account: Client) -> None:
    names = ["l3.example.test", "www.l3.example.test"]
    certificate_config(lacme_account, names)
    lacme_account.ok("newOrder")
    first = issued(lacme_account, set(names))
    # 90 days left is more than the 21 of min-days: nothing is ordered.
    current = lacme_account.ok("newOrder")
    lacme_account.expect_in_output(current, f"[{SECTION}] Valid until")
    assert issued(lacme_account, set(names)) == first
    # Fewer than 365 days left: a second order, and a new certificate replaces the first.
    lacme_account.ok("newOrder", "--min-days=365")
    assert issued(lacme_account, set(names)) != first


# -- revocation ----------------------------------------------------------------------------


def test_lacme_revoke_with_account_key(lacme_account: Client) -> None:
    cert, _ = certificate_config(lacme_account, ["l4.example.test"])
    lacme_account.ok("newOrder")
    # RFC 8555 §7.6, signed by the account that ordered it (kid).
    lacme_account.ok("revokeCert", str(cert))
    again = lacme_account.fails("revokeCert", str(cert))
    lacme_account.expect_in_output(again, "Certificate already revoked")


def test_lacme_revoke_with_certificate_key(
    lacme_bin: Path, lacme_account: Client, acme_server: AcmeServer, tmp_path: Path
) -> None:
    # An RSA certificate key, so that lacme-accountd can sign with it.
    key = rsa_key(tmp_path / "cert-rsa.key")
    cert, _ = certificate_config(lacme_account, ["l5.example.test"], key=key)
    lacme_account.ok("newOrder")
    # lacme-accountd pointed at the certificate's key: no account has it (the lookup is
    # refused), so lacme sends its jwk (RFC 8555 §7.6).
    by_key = lacme_client(lacme_bin, acme_server, tmp_path / "by-key", privkey=key)
    by_key.ok("revokeCert", str(cert))
    again = lacme_account.fails("revokeCert", str(cert))
    lacme_account.expect_in_output(again, "Certificate already revoked")


# -- a lacme-accountd of its own -----------------------------------------------------------


@pytest.fixture
def accountd_socket(
    lacme_accountd_bin: Path, lacme_account: Client, tmp_path: Path
) -> Iterator[tuple[Path, Path]]:
    """A standalone lacme-accountd with the account's key, told the account URL (`keyid`),
    on a socket in tmp_path until the test ends: (socket, its log)."""
    kid = _key_id(lacme_account, lacme_account.ok("account"))
    directory = tmp_path / "accountd"
    directory.mkdir(mode=0o700)  # lacme and lacme-accountd refuse a writable parent
    socket = directory / "S.lacme"
    assert len(str(socket)) < 100, "too long for a UNIX socket's path"
    config = tmp_path / "standalone-accountd.conf"
    config.write_text(f"privkey = file:{tmp_path / ACCOUNT_KEY}\nkeyid = {kid}\nquiet = No\n")
    log = tmp_path / "lacme-accountd.log"
    argv = [str(lacme_accountd_bin), f"--config={config}", f"--socket={socket}"]
    proc = _start(argv, log)
    try:
        _wait_until(socket.exists, proc, "lacme-accountd", log)
        yield socket, log
    finally:
        _stop(proc)  # on TERM it removes its socket


def test_lacme_standalone_accountd_with_keyid(
    lacme_bin: Path, acme_server: AcmeServer, accountd_socket: tuple[Path, Path], tmp_path: Path
) -> None:
    socket, log = accountd_socket
    # No [accountd] section and no key: lacme connects to the socket for every signature.
    client = lacme_client(lacme_bin, acme_server, tmp_path / "remote", privkey=None)
    names = ["l6.example.test", "www.l6.example.test"]
    certificate_config(client, names)
    client.ok(f"--socket={socket}", "newOrder")
    issued(client, set(names))
    signed = tail(log, 1000)
    # With keyid, every request was signed with the account URL as kid (RFC 8555 §6.2)...
    assert '"kid":' in signed, signed
    assert '"jwk":' not in signed, signed
    assert "new-account" not in signed, signed  # ...with no newAccount lookup first.
    # The key is withheld too (an empty jwk), so account management is refused.
    refused = client.fails(f"--socket={socket}", "account")
    client.expect_in_output(refused, "empty JWK")
    client.expect_in_output(refused, "400 Bad Request (")


# -- refusals ------------------------------------------------------------------------------


def test_lacme_unauthorized_name(lacme_account: Client) -> None:
    # RFC 8555 §7.4: newOrder refused (rejectedIdentifier); lacme prints the detail.
    certificate_config(lacme_account, ["co.uk"])
    refused = lacme_account.fails("newOrder")
    lacme_account.expect_in_output(refused, "400 Bad Request (Cannot issue for 'co.uk'")
    lacme_account.expect_in_output(refused, "Couldn't issue X.509 certificate!")
    assert not (lacme_account.state_dir / "cert.pem").exists()


def test_lacme_wrong_http01_answer(
    lacme_bin: Path, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> None:
    # lacme's webserver on another port; on the http-01 port a file server without its
    # token file answers 404.
    client = lacme_client(
        lacme_bin,
        acme_server,
        tmp_path / "lacme",
        privkey=rsa_key(tmp_path / ACCOUNT_KEY),
        listen_port=free_port(),
    )
    client.ok("account", "--register", "--tos-agreed")
    certificate_config(client, ["lw.example.test"])
    refused = client.fails("newOrder")
    # The invalid order's error (RFC 8555 §7.1.3), as lacme prints it: status (detail).
    client.expect_in_output(refused, "(Invalid response from http://lw.example.test/")
    client.expect_in_output(refused, ": 404)")
    assert not (client.state_dir / "cert.pem").exists()


def test_lacme_verifies_the_servers_certificate(
    lacme_bin: Path, acme_server: AcmeServer, tmp_path: Path
) -> None:
    # The same configuration without the CA file: LWP trusts the system store only.
    client = lacme_client(
        lacme_bin, acme_server, tmp_path / "lacme", privkey=rsa_key(tmp_path / ACCOUNT_KEY)
    )
    config = client.state_dir / "lacme.conf"
    config.write_text(
        config.read_text().replace(f"{ENV} PERL_LWP_SSL_CA_FILE={acme_server.root_pem} ", "")
    )
    refused = client.fails("account", "--register", "--tos-agreed")
    client.expect_in_output(refused, "certificate verify failed")
