"""External Account Binding with unmodified clients: certbot `--eab-kid/--eab-hmac-key` and
lego `--eab --kid --hmac`, against a server of its own started with `--eab-required`.

Keys are made with `acme-ca admin eab create --json` on the running server's data directory,
as an operator would.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import (
    ACME_CA,
    AcmeServer,
    ChallTestSrv,
    Client,
    assert_chains_to_root,
    certbot_client,
    dns_names,
    lego_client,
    load_pems,
    running_acme_server,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def eab_server(
    tmp_path_factory: pytest.TempPathFactory, challtestsrv_process: ChallTestSrv
) -> Iterator[AcmeServer]:
    workdir = tmp_path_factory.mktemp("acme-ca-eab")
    with running_acme_server(workdir, challtestsrv_process, "--eab-required") as server:
        yield server


def _eab_key(server: AcmeServer) -> tuple[str, str]:
    done = subprocess.run(
        [str(ACME_CA), "admin", "eab", "create", "--json", "--data-dir", str(server.data_dir)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    created = json.loads(done.stdout)
    return created["kid"], created["hmac_key"]


@pytest.fixture
def eab_certbot(certbot_bin: Path, eab_server: AcmeServer, tmp_path: Path) -> Client:
    return certbot_client(certbot_bin, eab_server, tmp_path)


@pytest.fixture
def eab_lego(lego_bin: Path, eab_server: AcmeServer, tmp_path: Path) -> Client:
    return lego_client(lego_bin, eab_server, tmp_path)


def _certbot_http01(server: AcmeServer, name: str) -> list[str]:
    return [
        "--standalone",
        "--preferred-challenges",
        "http-01",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(server.http01_port),
        "-d",
        name,
    ]


def _assert_certbot_issued(certbot: Client, server: AcmeServer, name: str) -> None:
    live = certbot.state_dir / "live" / name
    (leaf,) = load_pems(live / "cert.pem")
    assert dns_names(leaf) == {name}
    assert_chains_to_root(leaf, load_pems(live / "chain.pem"), server.root_pem, name)


def test_certbot_with_eab_registers_and_issues(eab_certbot: Client, eab_server: AcmeServer) -> None:
    kid, hmac_key = _eab_key(eab_server)
    # "--flag=value": a key that began with "-" would otherwise read as an option.
    eab = [f"--eab-kid={kid}", f"--eab-hmac-key={hmac_key}"]
    eab_certbot.ok("register", "--agree-tos", "--email", "eab@example.test", *eab)
    eab_certbot.ok("certonly", *_certbot_http01(eab_server, "eab1.example.test"))
    _assert_certbot_issued(eab_certbot, eab_server, "eab1.example.test")


def test_certbot_without_eab_is_told_external_account_required(
    eab_certbot: Client,
) -> None:
    result = eab_certbot.fails("register", "--agree-tos", "--email", "eab@example.test")
    eab_certbot.expect_in_output(result, "externalAccountRequired", "external account")


def test_certbot_with_a_wrong_hmac_key_is_unauthorized(
    eab_certbot: Client, eab_server: AcmeServer
) -> None:
    kid, _ = _eab_key(eab_server)
    wrong = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"
    result = eab_certbot.fails(
        "register", "--agree-tos", "--email", "e@example.test", "--eab-kid", kid,
        "--eab-hmac-key", wrong,
    )  # fmt: skip
    eab_certbot.expect_in_output(result, "unauthorized", "MAC")


def test_lego_with_eab_runs_and_a_used_key_is_refused(
    eab_lego: Client, eab_server: AcmeServer, tmp_path: Path
) -> None:
    kid, hmac_key = _eab_key(eab_server)
    http = ["--http", "--http.port", f"127.0.0.1:{eab_server.http01_port}"]
    eab = ["--eab", f"--kid={kid}", f"--hmac={hmac_key}"]
    eab_lego.ok(*eab, *http, "-d", "eab2.example.test", "run")
    leaf, *intermediates = load_pems(eab_lego.state_dir / "certificates" / "eab2.example.test.crt")
    assert dns_names(leaf) == {"eab2.example.test"}
    assert_chains_to_root(leaf, intermediates, eab_server.root_pem, "eab2.example.test")
    # A second lego (a new account key) with the same, now bound, key is refused.
    other = Client(
        name="lego",
        binary=eab_lego.binary,
        server=eab_server,
        state_dir=tmp_path / "lego2",
        env=eab_lego.env,
        common_args=[
            "--path",
            str(tmp_path / "lego2"),
            *eab_lego.common_args[2:],
        ],
        subcommand_first=False,
    )
    result = other.fails(*eab, *http, "-d", "eab3.example.test", "run")
    other.expect_in_output(result, "unauthorized", "already bound")
