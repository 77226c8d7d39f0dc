"""The Ruby gem acme-client, unmodified (Debian's ruby-acme-client, 2.0.9 in Debian 12), against
a running acme-ca with real validation.

tests/interop/ruby/drive.rb uses only the gem's public API for one certificate's life: account
(terms agreed, contact), found again by its key, contact update, order, http-01 (its own HTTP
responder on the server's http-01 port) or dns-01 (TXT records in challtestsrv, the server's
resolver), finalize with a CSR from Acme::Client::CertificateRequest, default and alternate
chain, revoke, account key change, deactivation, and the problems the server answers on the
way with the Acme::Client::Error class the gem raised for each. It prints one JSON document,
including every HTTP exchange it made; each flow runs once per module and the tests below check
one rule each on its result. The CA root is trusted through the gem's connection_options
(Faraday's ssl ca_file); TLS verification stays on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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

RUBY_DIR = REPO / "tests" / "interop" / "ruby"
DRIVER = RUBY_DIR / "drive.rb"
_DRIVER_TIMEOUT = 90.0

HTTP01_NAME = "ruby-http.example.test"
DNS01_NAMES = ["*.ruby-dns.example.test", "ruby-dns.example.test"]
_SUPERSEDED = 4  # RFC 5280 §5.3.1 CRLReason
ERR = "urn:ietf:params:acme:error:"


@pytest.fixture(scope="session")
def ruby_bin() -> Path:
    ruby = shutil.which("ruby")
    version = None
    if ruby is not None:
        probe = subprocess.run(
            [ruby, "-e", 'require "acme-client"; print Acme::Client::VERSION'],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        version = probe.stdout.decode().strip() if probe.returncode == 0 else None
    if ruby is None or not version:
        message = (
            "ruby or the gem acme-client (Debian package ruby-acme-client) is not installed: "
            "run `bash scripts/install-interop-deps.sh` (or `make test`)"
        )
        if os.environ.get("ACME_CA_INTEROP_SKIP_MISSING") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return Path(ruby)


def _run_driver(
    ruby: Path, server: AcmeServer, config: dict[str, object], *, trust_root: bool = True
) -> DriverRun:
    env = _client_env(server)
    # Only the root named in the config is trusted (or, without it, the system store).
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        env.pop(name, None)
    full = {
        "directoryUrl": server.directory_url,
        "caFile": str(server.root_pem) if trust_root else None,
        "http01Port": server.http01_port,
        "challtestsrv": server.challtestsrv.management_url,
        "preferredChain": common_name(root_x2(server)),
        **config,
    }
    argv = [str(ruby), str(DRIVER), json.dumps(full)]
    return run_driver(
        argv, name="drive.rb", server=server, env=env, timeout=_DRIVER_TIMEOUT, cwd=RUBY_DIR
    )


def _drive(ruby: Path, server: AcmeServer, **config: object) -> Result:
    """Run drive.rb with ``config``; fail with its error, exchanges and the server log."""
    return succeeded(_run_driver(ruby, server, config), name="drive.rb", server=server)


@pytest.fixture(scope="module")
def http01_run(ruby_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        ruby_bin,
        acme_server,
        names=[HTTP01_NAME],
        challenge="http-01",
        accountKey="ecdsa",  # ES256
        certKey="rsa",
        revokeReason=_SUPERSEDED,
        keyChange=True,
        email="ruby-http@example.test",
    )


@pytest.fixture(scope="module")
def dns01_run(ruby_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        ruby_bin,
        acme_server,
        names=DNS01_NAMES,
        challenge="dns-01",
        accountKey="rsa",  # RS256
        certKey="ecdsa",
        revokeReason=None,
        keyChange=False,
        email="ruby-dns@example.test",
    )


def _assert_issued(result: Result, server: AcmeServer, names: set[str]) -> None:
    assert result["orderStatus"] == "valid"
    assert_issued(result["certificate"], server, names)


def _assert_refused(outcome: Result, kind: str, status: int | None = None) -> None:
    """The server refused with the problem type ``kind`` (RFC 8555 §6.7), and the gem raised
    the Acme::Client::Error subclass its own table maps that type to (Acme::Client::Error
    itself for a type the gem does not know): the problem document was readable."""
    assert outcome["accepted"] is False, outcome
    problem = outcome["problem"] or {}
    assert problem.get("type") == ERR + kind, outcome
    if status is not None:
        assert problem.get("status") == status, outcome
    assert outcome["errorClass"] == outcome["mappedClass"], outcome
    assert outcome["message"] == problem.get("detail"), outcome


def test_ruby_account_is_created_with_contact_and_terms(http01_run: Result) -> None:
    account = http01_run["account"]
    assert account["status"] == "valid"
    assert account["contact"] == ["mailto:ruby-http@example.test"]
    assert account["termsOfServiceAgreed"] is True


def test_ruby_account_is_found_again_by_its_key(http01_run: Result) -> None:
    # RFC 8555 §7.3.1: onlyReturnExisting finds the same account by its key.
    assert http01_run["accountFoundAgain"]["url"] == http01_run["account"]["url"]


def test_ruby_account_contact_update(http01_run: Result) -> None:
    # RFC 8555 §7.3.2: the update answers the account with its new contact.
    updated = http01_run["accountUpdated"]
    assert updated == {"status": "valid", "contact": ["mailto:updated-ruby-http@example.test"]}


def test_ruby_directory_answer_carries_no_nonce(http01_run: Result) -> None:
    # The gem (before 2.0.16) parses the directory with no client to keep nonces and crashes
    # on a Replay-Nonce there; RFC 8555 §6.5 asks for nonces on POST answers and newNonce.
    exchanges = http01_run["exchanges"]
    directory = [e for e in exchanges if e["method"] == "GET" and e["url"].endswith("/directory")]
    assert directory, exchanges[:2]
    assert all(e["status"] == 200 and "replay-nonce" not in e for e in directory), directory
    posts = [e for e in exchanges if e["method"] == "POST"]
    assert posts
    assert all(e.get("replay-nonce") for e in posts)


def test_ruby_http01_one_name(http01_run: Result, acme_server: AcmeServer) -> None:
    (authz,) = http01_run["authorizations"]
    assert authz["identifier"] == {"type": "dns", "value": HTTP01_NAME}
    assert (authz["challengeStatus"], authz["authzStatus"]) == ("valid", "valid")
    # The server fetched the key authorization from the driver's own responder (RFC 8555 §8.3).
    hosts = {hit["host"].split(":")[0] for hit in http01_run["http01Requests"]}
    assert hosts == {HTTP01_NAME}
    assert http01_run["orderStatusBeforeFinalize"] == "ready"
    _assert_issued(http01_run, acme_server, {HTTP01_NAME})


def test_ruby_dns01_wildcard_and_base_name(dns01_run: Result, acme_server: AcmeServer) -> None:
    authzs = {(a["identifier"]["value"], a["wildcard"]) for a in dns01_run["authorizations"]}
    # RFC 8555 §7.1.4: the wildcard's authorization names the base domain, "wildcard": true.
    assert authzs == {("ruby-dns.example.test", True), ("ruby-dns.example.test", False)}
    assert all(a["challengeType"] == "dns-01" for a in dns01_run["authorizations"])
    assert all(a["authzStatus"] == "valid" for a in dns01_run["authorizations"])
    _assert_issued(dns01_run, acme_server, set(DNS01_NAMES))


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_ruby_csr_of_the_gem_is_accepted(run: str, request: pytest.FixtureRequest) -> None:
    # Acme::Client::CertificateRequest before 2.0.19 writes PKCS#10 version 2 (RFC 2986 §4.1
    # says 0); acme-ca reads it as Boulder does (ca/csr.py).
    result: Result = request.getfixturevalue(run)
    assert result["csrVersion"] in (0, 2)
    assert result["orderStatus"] == "valid"


def test_ruby_alternate_chain_leads_toroot_x2(http01_run: Result, acme_server: AcmeServer) -> None:
    leaf, *default_intermediates = chain_of(http01_run["certificate"])
    alt_leaf, *alt_intermediates = chain_of(http01_run["alternate"])
    assert alt_leaf == leaf
    assert alt_intermediates != default_intermediates
    assert_chains_to_root(alt_leaf, alt_intermediates, root_x2(acme_server), HTTP01_NAME)


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_ruby_csr_with_other_names_is_bad_csr(run: str, request: pytest.FixtureRequest) -> None:
    # RFC 8555 §7.4: the CSR must name exactly the order's identifiers.
    result: Result = request.getfixturevalue(run)
    bad = result["badCsr"]
    assert bad["orderStatus"] == "ready"  # the valid authorizations were reused (§7.1.3)
    _assert_refused(bad, "badCSR", 400)
    assert bad["errorClass"] == "Acme::Client::Error::BadCSR"


def test_ruby_rejected_identifier(http01_run: Result) -> None:
    _assert_refused(http01_run["rejectedIdentifier"], "rejectedIdentifier", 400)
    assert http01_run["rejectedIdentifier"]["errorClass"] == (
        "Acme::Client::Error::RejectedIdentifier"
    )


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_ruby_revoke_then_already_revoked(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    assert result["revoked"] is True
    # RFC 8555 §7.6: revoking a revoked certificate answers alreadyRevoked (a type the gem
    # knows only from 2.0.11; before, it raises Acme::Client::Error itself).
    _assert_refused(result["secondRevocation"], "alreadyRevoked", 400)


def test_ruby_account_key_change(http01_run: Result) -> None:
    # RFC 8555 §7.3.5: after keyChange the new key names the account and the old one nothing.
    change = http01_run["keyChange"]
    assert change["status"] == "valid"
    assert change["accountUrlByNewKey"] == http01_run["account"]["url"]
    _assert_refused(change["oldKey"], "accountDoesNotExist", 400)
    assert change["oldKey"]["errorClass"] == "Acme::Client::Error::AccountDoesNotExist"


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_ruby_account_deactivation(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    assert result["deactivatedStatus"] == "deactivated"
    # RFC 8555 §7.3.6: no further requests signed by a deactivated account's key: 401.
    _assert_refused(result["afterDeactivation"], "unauthorized", 401)
    assert result["afterDeactivation"]["errorClass"] == "Acme::Client::Error::Unauthorized"


def test_ruby_refuses_the_server_without_its_root(ruby_bin: Path, acme_server: AcmeServer) -> None:
    # The negative case of caFile: TLS verification is on, so the flows above really checked
    # the server's certificate.
    config: dict[str, object] = {
        "names": ["untrusted.example.test"],
        "challenge": "http-01",
        "accountKey": "ecdsa",
        "certKey": "ecdsa",
        "email": "untrusted@example.test",
        "stopAfterDirectory": True,
    }
    run = _run_driver(ruby_bin, acme_server, config, trust_root=False)
    assert run.returncode != 0
    errors = run.result.get("transportErrors", [])
    assert errors, run.result
    assert {e["class"] for e in errors} == {"Faraday::SSLError"}, errors
    assert all("certificate verify failed" in e["message"] for e in errors), errors
    assert run.result.get("exchanges") == [], "no exchange may complete untrusted"
