"""uacme (the C client on libcurl/GnuTLS, unmodified from Debian) against a running acme-ca.

Challenges go through uacme's hook program (tests/interop/hooks/uacme_hook.py): http-01 files
in a directory that a static file server serves on the server's validation port, dns-01 TXT
records in challtestsrv. Its configuration directory (account key, certificate keys and
certificates) is in the test's tmp_path.

uacme 1.7 has no option or environment variable for a CA bundle: libcurl trusts the system
store, /etc/ssl/certs. So each run is in a private mount namespace (``unshare --mount``, in a
user namespace when not root) where a directory holding only the test CA's root is mounted
over /etc/ssl/certs; the machine's store is never touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import (
    AcmeServer,
    Client,
    _client_env,
    _require,
    assert_chains_to_root,
    dns_names,
    hook_executable,
    load_pems,
)

pytestmark = pytest.mark.interop

_SYSTEM_STORE = "/etc/ssl/certs"
# Run as: sh -c SCRIPT uacme-trust TRUST_DIR PROGRAM ARGS...
_WITH_TRUST = f'mount --bind "$1" {_SYSTEM_STORE} && shift && exec "$@"'


@pytest.fixture(scope="session")
def uacme_bin() -> Path:
    on_path = shutil.which("uacme")
    return _require("uacme", Path(on_path) if on_path else None)


@pytest.fixture(scope="session")
def private_store_argv() -> list[str]:
    """The argv prefix that runs a program with its own view of /etc/ssl/certs."""
    unshare = _require("unshare", Path(shutil.which("unshare") or "/usr/bin/unshare"))
    # Root can make a mount namespace; anyone else needs a user namespace to own it. Private
    # propagation (unshare's default, said here): the mount never shows outside.
    argv = [str(unshare), "--mount", "--propagation", "private"]
    argv += [] if os.geteuid() == 0 else ["--map-root-user"]
    probe = subprocess.run(
        [*argv, "--", "true"], capture_output=True, timeout=10, check=False, text=True
    )
    if probe.returncode != 0:
        pytest.fail(f"cannot make a mount namespace for uacme ({shlex.join(argv)}): {probe.stderr}")
    return [*argv, "--", "/bin/sh", "-c", _WITH_TRUST, "uacme-trust"]


@pytest.fixture
def uacme(
    uacme_bin: Path, private_store_argv: list[str], acme_server: AcmeServer, tmp_path: Path
) -> Client:
    """uacme against `server`, with no account yet; ``.run(...)`` takes options, then the
    command: ``.run("-h", hook, "issue", name)``."""
    trust = tmp_path / "trust"
    trust.mkdir()
    # The same root as a hashed-directory entry (CAPATH) and as the bundle file GnuTLS's
    # system trust reads.
    shutil.copy(acme_server.root_pem, trust / "acme-ca-root.pem")
    shutil.copy(acme_server.root_pem, trust / "ca-certificates.crt")
    confdir = tmp_path / "uacme"
    return Client(
        name="uacme",
        binary=Path(private_store_argv[0]),
        server=acme_server,
        state_dir=confdir,
        env=_client_env(acme_server),
        common_args=[
            *private_store_argv[1:],
            str(trust),
            str(uacme_bin),
            "--verbose",
            "--confdir",
            str(confdir),
            "--acme-url",
            acme_server.directory_url,
        ],
        subcommand_first=False,
    )


@pytest.fixture
def uacme_account(uacme: Client) -> Client:
    uacme.ok("--yes", "new", "uacme@example.test")
    return uacme


def _hook(tmp_path: Path, challenge: str, wellknown: Path | None = None) -> str:
    """An executable wrapper (uacme execs its hook directly) accepting only `challenge`."""
    settings = {"UACME_HOOK_CHALLENGE": challenge}
    if wellknown is not None:
        settings["UACME_HOOK_WELLKNOWN"] = str(wellknown)
    wrapper = hook_executable(
        tmp_path, "uacme_hook.py", name=f"uacme-hook-{challenge}", env=settings
    )
    return str(wrapper)


def _issued(client: Client, server: AcmeServer, directory: str, names: set[str]) -> int:
    """Check CONFDIR/<directory>/cert.pem (leaf then chain) and return its serial."""
    leaf, *intermediates = load_pems(client.state_dir / directory / "cert.pem")
    assert intermediates, "cert.pem holds no chain"
    assert dns_names(leaf) == names
    for name in names:
        assert_chains_to_root(leaf, intermediates, server.root_pem, name.replace("*", "x"))
    assert (client.state_dir / "private" / directory / "key.pem").is_file()
    return leaf.serial_number


def test_uacme_new_account(uacme: Client) -> None:
    created = uacme.ok("--yes", "new", "uacme@example.test")
    uacme.expect_in_output(created, "account created at")
    assert (uacme.state_dir / "private" / "key.pem").is_file()
    url = created.output.rsplit("account created at", 1)[1].split()[0]
    # RFC 8555 §7.3.1: onlyReturnExisting finds the account of this key; uacme then stops.
    again = uacme.fails("--yes", "new", "uacme@example.test")
    uacme.expect_in_output(again, f"Account already exists at {url}")


def test_uacme_http01_two_names(
    uacme_account: Client, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> None:
    names = ["u1.example.test", "www.u1.example.test"]
    hook = _hook(tmp_path, "http-01", wellknown)
    issued = uacme_account.ok("--hook", hook, "issue", *names)
    for name in names:  # through the hook (which declines the other challenge types)
        uacme_account.expect_in_output(issued, f"{hook} done http-01 {name} ")
    _issued(uacme_account, acme_server, names[0], set(names))
    assert list(wellknown.iterdir()) == []  # the hook's "done" removed every file


def test_uacme_forced_renewal(
    uacme_account: Client, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> None:
    names = ["u2.example.test", "www.u2.example.test"]
    hook = _hook(tmp_path, "http-01", wellknown)
    uacme_account.ok("--hook", hook, "issue", *names)
    first = _issued(uacme_account, acme_server, names[0], set(names))
    # Still current, and OCSP (the certificate's AIA) says good: exit 1, nothing reissued.
    current = uacme_account.run("--hook", hook, "issue", *names)
    assert current.returncode == 1, uacme_account.explain(current, "reissued a current cert")
    uacme_account.expect_in_output(current, "OCSP certificate status is GOOD")
    assert _issued(uacme_account, acme_server, names[0], set(names)) == first
    uacme_account.ok("--force", "--hook", hook, "issue", *names)
    second = _issued(uacme_account, acme_server, names[0], set(names))
    assert second != first
    kept = list((uacme_account.state_dir / names[0]).glob("cert-*.pem"))
    assert [load_pems(path)[0].serial_number for path in kept] == [first]


def test_uacme_revoke(
    uacme_account: Client, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> None:
    names = ["u3.example.test", "www.u3.example.test"]
    hook = _hook(tmp_path, "http-01", wellknown)
    uacme_account.ok("--hook", hook, "issue", *names)
    first = _issued(uacme_account, acme_server, names[0], set(names))
    live = uacme_account.state_dir / names[0] / "cert.pem"
    # RFC 8555 §7.6, signed by the account that ordered it (uacme renames the file it revoked).
    copies = tmp_path / "revoking"
    copies.mkdir()
    shutil.copy(live, copies / "cert.pem")
    uacme_account.ok("--reason", "4", "revoke", str(copies / "cert.pem"))
    (revoked,) = copies.glob("revoked-*.pem")
    assert load_pems(revoked)[0].serial_number == first
    again = uacme_account.fails("revoke", str(revoked))
    uacme_account.expect_in_output(again, "alreadyRevoked")
    # Not forced, but OCSP now says revoked: uacme reissues (RFC 6960 through the AIA URL).
    reissued = uacme_account.ok("--hook", hook, "issue", *names)
    uacme_account.expect_in_output(reissued, "OCSP certificate status is REVOKED")
    second = _issued(uacme_account, acme_server, names[0], set(names))
    assert second != first
    # §7.6 again, signed by the certificate's own key instead of the account's.
    key = uacme_account.state_dir / "private" / names[0] / "key.pem"
    uacme_account.ok("revoke", str(live), str(key))
    (revoked_by_key,) = (uacme_account.state_dir / names[0]).glob("revoked-*.pem")
    assert load_pems(revoked_by_key)[0].serial_number == second


def test_uacme_dns01_wildcard(
    uacme_account: Client, acme_server: AcmeServer, tmp_path: Path
) -> None:
    names = ["uw.example.test", "*.uw.example.test"]
    hook = _hook(tmp_path, "dns-01")
    issued = uacme_account.ok("--type", "EC", "--hook", hook, "issue", *names)
    # Two authorizations, both for the name without "*." (RFC 8555 §7.1.3), both through TXT
    # records at _acme-challenge.uw.example.test, one after the other.
    assert issued.output.count(f"{hook} done dns-01 {names[0]} ") == 2, issued.output
    # uacme drops the "*." from the directory name.
    _issued(uacme_account, acme_server, names[0], set(names))


def test_uacme_deactivated_account_can_no_longer_order(
    uacme_account: Client, wellknown: Path, tmp_path: Path
) -> None:
    uacme_account.ok("update", "uacme-new@example.test")  # RFC 8555 §7.3.2
    uacme_account.ok("deactivate")  # §7.3.6
    hook = _hook(tmp_path, "http-01", wellknown)
    refused = uacme_account.fails("--hook", hook, "issue", "ud.example.test")
    uacme_account.expect_in_output(refused, "deactivated")
