"""dehydrated (the bash ACME client, unmodified from Debian) against a running acme-ca.

http-01 through dehydrated's WELLKNOWN directory, served on the server's validation port
by a static file server (dehydrated only writes the files); dns-01 through its HOOK, which
publishes the TXT record in challtestsrv. dehydrated speaks through curl, which trusts the
CA's root through CURL_CA_BUNDLE.
"""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="session")
def dehydrated_bin() -> Path:
    on_path = shutil.which("dehydrated")
    return _require("dehydrated", Path(on_path) if on_path else None)


@pytest.fixture
def dehydrated(
    dehydrated_bin: Path, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> Client:
    env = _client_env(acme_server)
    env["CURL_CA_BUNDLE"] = str(acme_server.root_pem)
    env["DEHYDRATED_HOOK"] = "1"
    state = tmp_path / "dehydrated"
    state.mkdir()
    config = tmp_path / "dehydrated.conf"
    config.write_text(
        f'CA="{acme_server.directory_url}"\n'
        f'WELLKNOWN="{wellknown}"\n'
        f'BASEDIR="{state}"\n'
        f'HOOK="{hook_executable(tmp_path)}"\n'
        'KEY_ALGO="secp384r1"\n'
        'CONTACT_EMAIL="dehydrated@example.test"\n'
    )
    client = Client(
        name="dehydrated",
        binary=dehydrated_bin,
        server=acme_server,
        state_dir=state,
        env=env,
        common_args=["--config", str(config)],
        subcommand_first=False,
    )
    client.ok("--register", "--accept-terms")
    return client


def _issued(client: Client, server: AcmeServer, first: str, names: set[str]) -> int:
    live = client.state_dir / "certs" / first
    leaf = load_pems(live / "cert.pem")[0]
    intermediates = load_pems(live / "chain.pem")
    assert dns_names(leaf) == names
    for name in names:
        assert_chains_to_root(leaf, intermediates, server.root_pem, name.replace("*", "x"))
    return leaf.serial_number


def test_dehydrated_http01_two_names_renew_and_revoke(
    dehydrated: Client, acme_server: AcmeServer
) -> None:
    names = ["d1.example.test", "www.d1.example.test"]
    domains = [arg for name in names for arg in ("-d", name)]
    dehydrated.ok("--cron", "--challenge", "http-01", *domains)
    first = _issued(dehydrated, acme_server, names[0], set(names))
    dehydrated.ok("--cron", "--challenge", "http-01", "--force", *domains)
    second = _issued(dehydrated, acme_server, names[0], set(names))
    assert second != first
    # RFC 8555 §7.6, signed by the account that ordered it.
    revoked = dehydrated.ok("--revoke", str(dehydrated.state_dir / "certs" / names[0] / "cert.pem"))
    dehydrated.expect_in_output(revoked, "Done")
    again = dehydrated.fails(
        "--revoke", str(next((dehydrated.state_dir / "certs" / names[0]).glob("*-revoked")))
    )
    dehydrated.expect_in_output(again, "alreadyRevoked")


def test_dehydrated_dns01_wildcard_through_hook(
    dehydrated: Client, acme_server: AcmeServer
) -> None:
    names = ["dw.example.test", "*.dw.example.test"]
    domains = [arg for name in names for arg in ("-d", name)]
    dehydrated.ok("--cron", "--challenge", "dns-01", *domains)
    _issued(dehydrated, acme_server, names[0], set(names))


def test_dehydrated_deactivated_account_can_no_longer_order(dehydrated: Client) -> None:
    dehydrated.ok("--account")  # RFC 8555 §7.3.2: contact update (unchanged here)
    dehydrated.ok("--deactivate")  # §7.3.6
    refused = dehydrated.fails("--cron", "--challenge", "http-01", "-d", "dd.example.test")
    dehydrated.expect_in_output(refused, "deactivated")
