"""The npm package acme-client, unmodified (version pinned in tests/interop/node/package.json),
against a running acme-ca with real validation.

tests/interop/node/drive.mjs uses only the library's public API for one certificate's life:
account, order, http-01 (its own HTTP server on the server's http-01 port) or dns-01 (TXT
records in challtestsrv, the server's resolver), finalize, default and alternate chain, revoke,
account key rollover, account deactivation. It prints one JSON document, including every ACME
exchange it made; each flow runs once per module and the tests below check one rule each on its
result. The CA root is trusted through NODE_EXTRA_CA_CERTS; TLS verification stays on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.interop.conftest import (
    REPO,
    AcmeServer,
    _client_env,
    assert_chains_to_root,
)
from tests.interop.drivers import (
    DriverRun,
    Result,
    assert_issued,
    chain_of,
    common_name,
    root_x2,
    run_driver,
    succeeded,
)

pytestmark = pytest.mark.interop

NODE_DIR = REPO / "tests" / "interop" / "node"
DRIVER = NODE_DIR / "drive.mjs"
_INSTALLED = NODE_DIR / "node_modules" / "acme-client" / "package.json"
_DRIVER_TIMEOUT = 60.0

HTTP01_NAME = "node-http.example.test"
DNS01_NAMES = ["*.node-dns.example.test", "node-dns.example.test"]
_SUPERSEDED = 4  # RFC 5280 §5.3.1 CRLReason
# Node's codes for a chain it cannot verify.
_TLS_UNTRUSTED = {
    "SELF_SIGNED_CERT_IN_CHAIN",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    "DEPTH_ZERO_SELF_SIGNED_CERT",
}


@pytest.fixture(scope="session")
def node_bin() -> Path:
    node = shutil.which("node")
    if node is None or not _INSTALLED.is_file():
        message = (
            "node or the npm package acme-client is not installed: run "
            "`bash scripts/install-interop-deps.sh` (or `make test`)"
        )
        if os.environ.get("ACME_CA_INTEROP_SKIP_MISSING") == "1":
            pytest.skip(message)
        pytest.fail(message)
    # The install step runs only when node_modules is missing: a stale one after a pin bump
    # must not pass for the pinned version.
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["acme-client"]
    installed_version = json.loads(_INSTALLED.read_text())["version"]
    assert installed_version == pinned, (
        f"acme-client {installed_version} is installed but {pinned} is pinned: "
        f"remove {NODE_DIR / 'node_modules'} and run scripts/install-interop-deps.sh"
    )
    return Path(node)


def _run_driver(
    node: Path, server: AcmeServer, config: dict[str, object], *, trust_root: bool = True
) -> DriverRun:
    env = _client_env(server)
    env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)  # verification stays on
    env.pop("NODE_EXTRA_CA_CERTS", None)
    if trust_root:
        env["NODE_EXTRA_CA_CERTS"] = str(server.root_pem)
    full = {
        "directoryUrl": server.directory_url,
        "http01Port": server.http01_port,
        "challtestsrv": server.challtestsrv.management_url,
        "preferredChain": common_name(root_x2(server)),
        **config,
    }
    argv = [str(node), str(DRIVER), json.dumps(full)]
    return run_driver(
        argv, name="drive.mjs", server=server, env=env, timeout=_DRIVER_TIMEOUT, cwd=NODE_DIR
    )


def _drive(node: Path, server: AcmeServer, **config: object) -> Result:
    """Run drive.mjs with ``config``; fail with its error, exchanges and the server log."""
    return succeeded(_run_driver(node, server, config), name="drive.mjs", server=server)


@pytest.fixture(scope="module")
def http01_run(node_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        node_bin,
        acme_server,
        names=[HTTP01_NAME],
        challenge="http-01",
        accountKey="ecdsa",  # ES256
        certKey="rsa",
        revokeReason=_SUPERSEDED,
        rolloverKey=True,
        email="node-http@example.test",
    )


@pytest.fixture(scope="module")
def dns01_run(node_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        node_bin,
        acme_server,
        names=DNS01_NAMES,
        challenge="dns-01",
        accountKey="rsa",  # RS256
        certKey="ecdsa",
        revokeReason=None,
        rolloverKey=False,
        email="node-dns@example.test",
    )


def _problem_type(outcome: Result) -> str:
    problem = outcome.get("problem") or {}
    return str(problem.get("type", ""))


def test_node_account_is_created_and_found_again(http01_run: Result) -> None:
    account = http01_run["account"]
    assert account["status"] == "valid"
    assert account["contact"] == ["mailto:node-http@example.test"]
    # RFC 8555 §7.3.1: onlyReturnExisting finds the same account by its key.
    assert http01_run["accountFoundAgain"]["url"] == account["url"]


def test_node_http01_one_name(http01_run: Result, acme_server: AcmeServer) -> None:
    (authz,) = http01_run["authorizations"]
    assert authz["identifier"] == {"type": "dns", "value": HTTP01_NAME}
    assert (authz["challengeStatus"], authz["authzStatus"]) == ("valid", "valid")
    # The server fetched the key authorization from the client's own responder (RFC 8555 §8.3).
    hosts = {hit["host"].split(":")[0] for hit in http01_run["http01Requests"]}
    assert hosts == {HTTP01_NAME}
    assert http01_run["orderStatusBeforeFinalize"] == "ready"
    assert_issued(http01_run["certificate"], acme_server, {HTTP01_NAME})


def test_node_dns01_wildcard_and_base_name(dns01_run: Result, acme_server: AcmeServer) -> None:
    authzs = {(a["identifier"]["value"], a["wildcard"]) for a in dns01_run["authorizations"]}
    # RFC 8555 §7.1.4: the wildcard's authorization names the base domain, "wildcard": true.
    assert authzs == {("node-dns.example.test", True), ("node-dns.example.test", False)}
    assert all(a["challengeType"] == "dns-01" for a in dns01_run["authorizations"])
    assert all(a["authzStatus"] == "valid" for a in dns01_run["authorizations"])
    assert_issued(dns01_run["certificate"], acme_server, set(DNS01_NAMES))


def test_node_alternate_chain_leads_toroot_x2(http01_run: Result, acme_server: AcmeServer) -> None:
    leaf, *default_intermediates = chain_of(http01_run["certificate"])
    alt_leaf, *alt_intermediates = chain_of(http01_run["alternate"])
    assert alt_leaf == leaf
    assert alt_intermediates != default_intermediates
    assert_chains_to_root(alt_leaf, alt_intermediates, root_x2(acme_server), HTTP01_NAME)


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_node_revoke_then_already_revoked(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    assert result["revoked"] is True
    # RFC 8555 §7.6: revoking a revoked certificate answers alreadyRevoked.
    second = result["secondRevocation"]
    assert second["accepted"] is False
    assert _problem_type(second) == "urn:ietf:params:acme:error:alreadyRevoked", second


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_node_account_deactivation(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    assert result["deactivatedStatus"] == "deactivated"
    # RFC 8555 §7.3.6: no further requests signed by a deactivated account's key.
    after = result["afterDeactivation"]
    assert after["accepted"] is False
    assert _problem_type(after) == "urn:ietf:params:acme:error:unauthorized", after
    # RFC 8555 §7.3.6: 401.
    assert after["problem"]["status"] == 401


def test_node_account_key_rollover(http01_run: Result) -> None:
    # RFC 8555 §7.3.5: after keyChange the new key names the account and the old one nothing.
    rollover = http01_run["rollover"]
    assert rollover["accountUrlByNewKey"] == http01_run["account"]["url"]
    assert rollover["oldKey"]["accepted"] is False
    assert _problem_type(rollover["oldKey"]) == "urn:ietf:params:acme:error:accountDoesNotExist"


def test_node_refuses_the_server_without_its_root(node_bin: Path, acme_server: AcmeServer) -> None:
    # The negative case of NODE_EXTRA_CA_CERTS: TLS verification is on, so the flows above
    # really checked the server's certificate.
    config: dict[str, object] = {
        "names": ["untrusted.example.test"],
        "challenge": "http-01",
        "accountKey": "ecdsa",
        "certKey": "ecdsa",
        "email": "untrusted@example.test",
    }
    run = _run_driver(node_bin, acme_server, config, trust_root=False)
    assert run.returncode != 0
    codes = {e["code"] for e in run.result.get("transportErrors", [])}
    assert codes, run.result
    assert codes <= _TLS_UNTRUSTED, run.result
    assert run.result.get("exchanges") == [], "no ACME exchange may succeed untrusted"
