"""The Go library golang.org/x/crypto/acme (the client behind autocert), unmodified (Debian's
golang-golang-x-crypto-dev, built with Debian's golang-go in GOPATH mode, offline), against a
running acme-ca with real validation.

tests/interop/goacme/drive.go uses only the library's public API for one certificate's life:
account (agreeing to the terms it is prompted with), order, http-01 (its own HTTP server on
the server's http-01 port, answering late so that the library polls) or dns-01 (TXT records in
challtestsrv, the server's resolver), finalize with a CSR from crypto/x509, the chain and the
alternate chains (ListCertAlternates), revocation by the account key or by the certificate's
key, account key rollover, deactivation; and a flow of requests the CA must refuse, to see
the library's *acme.Error, *acme.AuthorizationError and *acme.OrderError, and a badNonce it
must retry. It prints one JSON document, including every HTTP exchange; each flow runs once
per module and the tests below check one rule each on its result. The Go client trusts
exactly the CA's root (its http.Client's TLS configuration); verification stays on.
"""

from __future__ import annotations

import hashlib
import itertools
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
from tests.interop.drivers import Result, assert_issued, chain_of, run_driver, succeeded

pytestmark = pytest.mark.interop

DRIVER_SOURCE = REPO / "tests" / "interop" / "goacme" / "drive.go"
# Debian's golang-golang-x-crypto-dev installs the source here (GOPATH layout).
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src" / "golang.org" / "x" / "crypto" / "acme"
_BUILD_TIMEOUT = 300.0
_DRIVER_TIMEOUT = 60.0

HTTP01_NAME = "go-http.example.test"
DNS01_NAMES = ["*.go-dns.example.test", "go-dns.example.test"]
PROBLEM_NAMES = ["go-wrong.example.test", "go-badcsr.example.test"]
ERR = "urn:ietf:params:acme:error:"
_SUPERSEDED = 4  # RFC 5280 §5.3.1 CRLReason
_UNSPECIFIED = 0  # what the library sends when the caller gives no reason


# -- building the driver --------------------------------------------------------------------


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GO111MODULE="off", GOPATH=str(GOPATH), CGO_ENABLED="0", GOFLAGS="")
    return env


def _build_key(go: str) -> str:
    """The hash of what the binary is made of: the driver, the toolchain, the library."""
    digest = hashlib.sha256(DRIVER_SOURCE.read_bytes())
    version = subprocess.run(
        [go, "version"], capture_output=True, check=True, env=_go_env(), timeout=30
    )
    digest.update(version.stdout)
    for source in sorted(LIBRARY.rglob("*.go")):
        if not source.name.endswith("_test.go"):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:20]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "acme-ca" / "goacme"


@pytest.fixture(scope="session")
def goacme_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """drive.go built against the installed library; the binary is kept in the user's cache
    keyed on the hash of its sources and toolchain, so a later session only hashes."""
    go = shutil.which("go")
    if go is None or not (LIBRARY / "rfc8555.go").is_file():
        message = (
            f"Go or golang.org/x/crypto/acme ({LIBRARY}) is not installed (Debian packages "
            "golang-go, golang-golang-x-crypto-dev): run `bash scripts/install-interop-deps.sh`"
            " (or `make test`)"
        )
        if os.environ.get("ACME_CA_INTEROP_SKIP_MISSING") == "1":
            pytest.skip(message)
        pytest.fail(message)
    key = _build_key(go)
    cached = _cache_dir() / f"drive-{key}"
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    workdir = tmp_path_factory.mktemp("goacme-build")
    binary = workdir / "drive"
    built = subprocess.run(
        [go, "build", "-o", str(binary), str(DRIVER_SOURCE)],
        capture_output=True,
        cwd=workdir,
        env=_go_env(),
        timeout=_BUILD_TIMEOUT,
        check=False,
    )
    if built.returncode != 0:
        output = (built.stdout + built.stderr).decode(errors="replace")
        pytest.fail(f"go build of {DRIVER_SOURCE} failed:\n{output}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        shutil.copy2(binary, partial)
        partial.replace(cached)  # atomic: a concurrent session sees all of it or none
    except OSError:
        return binary
    return cached


# -- running it -----------------------------------------------------------------------------


def _run_driver(driver: Path, server: AcmeServer, config: dict[str, object]) -> Result:
    full = {
        "directoryUrl": server.directory_url,
        "rootPem": str(server.root_pem),
        "challtestsrv": server.challtestsrv.management_url,
        "http01Port": server.http01_port,
        **config,
    }
    argv = [str(driver), json.dumps(full)]
    run = run_driver(
        argv, name="drive.go", server=server, env=_client_env(server), timeout=_DRIVER_TIMEOUT
    )
    return succeeded(run, name="drive.go", server=server)


@pytest.fixture(scope="module")
def http01_run(goacme_driver: Path, acme_server: AcmeServer) -> Result:
    return _run_driver(
        goacme_driver,
        acme_server,
        {
            "flow": "issue",
            "names": [HTTP01_NAME],
            "challenge": "http-01",
            "accountKey": "ecdsa",  # ES256
            "certKey": "rsa",
            "revokeWith": "certKey",
            "revokeReason": _SUPERSEDED,
            "rollover": True,
            "email": "go-http@example.test",
            # Longer than the CA waits for a validation before answering the challenge
            # POST (0.5 s): the answer is "processing" and the library polls.
            "http01DelaySeconds": 1.5,
        },
    )


@pytest.fixture(scope="module")
def dns01_run(goacme_driver: Path, acme_server: AcmeServer) -> Result:
    return _run_driver(
        goacme_driver,
        acme_server,
        {
            "flow": "issue",
            "names": DNS01_NAMES,
            "challenge": "dns-01",
            "accountKey": "rsa",  # RS256
            "certKey": "ecdsa",
            "revokeWith": "account",
            "revokeReason": _UNSPECIFIED,
            "rollover": False,
            "email": "go-dns@example.test",
        },
    )


@pytest.fixture(scope="module")
def problems_run(goacme_driver: Path, acme_server: AcmeServer) -> Result:
    return _run_driver(
        goacme_driver,
        acme_server,
        {
            "flow": "problems",
            "names": PROBLEM_NAMES,
            "accountKey": "ecdsa",
            "certKey": "ecdsa",
            "email": "go-problems@example.test",
        },
    )


def _exchanges(result: Result, path: str = "", method: str = "POST") -> list[Result]:
    return [
        e
        for e in result.get("exchanges") or []
        if e["method"] == method and path in e["url"].split("?")[0]
    ]


def _body(exchange: Result) -> Result:
    body = exchange.get("body")
    return body if isinstance(body, dict) else {}


def _problem(info: Result | None) -> Result:
    """The *acme.Error the library returned, as drive.go describes it."""
    assert info is not None, "the library returned no error"
    assert info["goType"] == "*acme.Error", info
    problem: Result = info["problem"]
    return problem


# -- accounts -------------------------------------------------------------------------------


def test_go_register_agrees_to_the_directory_terms(http01_run: Result) -> None:
    terms = http01_run["directory"]["terms"]
    assert terms, "the directory names its terms of service (RFC 8555 §7.1.1)"
    account = http01_run["account"]
    # Register asks the prompt with the directory's terms URL and sends its answer.
    assert account["termsPrompted"] == [terms]
    created = next(e for e in _exchanges(http01_run, "/new-account") if e["status"] == 201)
    assert created["payload"]["termsOfServiceAgreed"] is True
    assert _body(created)["termsOfServiceAgreed"] is True
    assert account["status"] == "valid"
    assert account["contact"] == ["mailto:go-http@example.test"]
    assert created["location"] == account["uri"]


def test_go_account_found_again(http01_run: Result) -> None:
    # RFC 8555 §7.3.1: newAccount with a known key answers 200 with the account's URL, which
    # the library reports as ErrAccountAlreadyExists; onlyReturnExisting finds it too.
    assert http01_run["registerAgain"]["sentinel"] == "ErrAccountAlreadyExists"
    assert http01_run["accountFoundAgain"]["uri"] == http01_run["account"]["uri"]


def test_go_account_key_rollover(http01_run: Result) -> None:
    rollover = http01_run["rollover"]
    assert rollover["error"] is None
    # RFC 8555 §7.3.5: after keyChange the new key names the account and the old one nothing
    # (accountDoesNotExist, which the library reports as ErrNoAccount).
    assert rollover["accountUriByNewKey"] == http01_run["account"]["uri"]
    assert rollover["byOldKeyError"]["sentinel"] == "ErrNoAccount"
    (key_change,) = _exchanges(http01_run, "/key-change")
    assert key_change["status"] == 200


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_go_account_deactivation(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    assert result["deactivateError"] is None
    # RFC 8555 §7.3.6: no further requests signed by a deactivated account's key: 401.
    problem = _problem(result["afterDeactivation"])
    assert (problem["statusCode"], problem["problemType"]) == (401, ERR + "unauthorized")


# -- orders, challenges, certificates -------------------------------------------------------


def test_go_http01_one_name(http01_run: Result, acme_server: AcmeServer) -> None:
    (authz,) = http01_run["authorizations"]
    assert authz["identifier"] == {"type": "dns", "value": HTTP01_NAME}
    assert (authz["challengeStatus"], authz["status"]) == ("valid", "valid")
    # The CA fetched the key authorization from the driver's own responder (RFC 8555 §8.3).
    hosts = {hit["host"].split(":")[0] for hit in http01_run["http01Requests"]}
    assert hosts == {HTTP01_NAME}
    assert http01_run["orderStatusBeforeFinalize"] == "ready"
    assert_issued(http01_run["certificate"], acme_server, {HTTP01_NAME})


def test_go_polls_the_authorization_as_retry_after_says(http01_run: Result) -> None:
    # The responder answered late: the challenge POST is answered "processing" with
    # Retry-After, and WaitAuthorization waits that long between its polls (RFC 8555 §7.5.1).
    (authz,) = http01_run["authorizations"]
    assert authz["statusAfterAccept"] == "processing"
    posts = _exchanges(http01_run)
    answered = next(i for i, e in enumerate(posts) if "/chall/" in e["url"] and e["payload"] == {})
    assert posts[answered]["retryAfter"] == "1"
    polls = [e for e in posts[answered + 1 :] if e["url"] == authz["uri"]]
    waiting = polls[:-1]
    assert waiting, f"the library did not poll: {polls}"
    for poll in waiting:
        assert (_body(poll)["status"], poll["retryAfter"]) == ("pending", "1"), poll
    assert _body(polls[-1])["status"] == "valid"
    for earlier, later in itertools.pairwise(polls):
        assert later["atMs"] - earlier["atMs"] >= 950, (earlier, later)


def test_go_challenge_answer_links_up_to_its_authorization(http01_run: Result) -> None:
    # RFC 8555 §7.5.1: Link rel="up" names the authorization, in a field line of its own (the
    # library reads one link per line). x/crypto/acme does not read it; other clients do.
    (authz,) = http01_run["authorizations"]
    (answer,) = [e for e in _exchanges(http01_run, "/chall/") if e["payload"] == {}]
    assert f'<{authz["uri"]}>;rel="up"' in answer["links"]


def test_go_dns01_wildcard_and_base_name(dns01_run: Result, acme_server: AcmeServer) -> None:
    authzs = {(a["identifier"]["value"], a["wildcard"]) for a in dns01_run["authorizations"]}
    # RFC 8555 §7.1.4: the wildcard's authorization names the base domain, "wildcard": true;
    # §7.1.3: a wildcard is offered dns-01 only.
    assert authzs == {("go-dns.example.test", True), ("go-dns.example.test", False)}
    for authz in dns01_run["authorizations"]:
        assert authz["challengeType"] == "dns-01"
        assert authz["status"] == "valid"
        if authz["wildcard"]:
            assert authz["challengesOffered"] == ["dns-01"]
    assert_issued(dns01_run["certificate"], acme_server, set(DNS01_NAMES))


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_go_fetch_cert_with_and_without_bundle(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    # FetchCert(bundle=false) keeps the first certificate of the chain: the leaf comes first
    # (RFC 8555 §7.4.2).
    assert result["fetchedLeafOnly"] is True
    (finalize,) = _exchanges(result, "/finalize")
    assert _body(finalize)["certificate"] == result["certificateUrl"]


def test_go_alternate_chain_leads_toroot_x2(http01_run: Result, acme_server: AcmeServer) -> None:
    # RFC 8555 §7.4.2: ListCertAlternates reads Link rel="alternate", one link per field line.
    assert http01_run["alternateUrls"] == [f"{http01_run['certificateUrl']}/1"]
    leaf, *default_intermediates = chain_of(http01_run["certificate"])
    (alternate,) = http01_run["alternates"]
    alt_leaf, *alt_intermediates = chain_of(alternate)
    assert alt_leaf == leaf
    assert alt_intermediates != default_intermediates
    root_x2 = acme_server.data_dir / "root-x2.pem"
    assert_chains_to_root(alt_leaf, alt_intermediates, root_x2, HTTP01_NAME)


# -- revocation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "signed_with", "reason"),
    [("http01_run", "jwk", _SUPERSEDED), ("dns01_run", "kid", _UNSPECIFIED)],
)
def test_go_revocation(
    run: str, signed_with: str, reason: int, request: pytest.FixtureRequest
) -> None:
    result: Result = request.getfixturevalue(run)
    assert result["revokeError"] is None
    first, *_ = _exchanges(result, "/revoke-cert")
    # RFC 8555 §7.6: by the certificate's key (jwk) or by the account holding it (kid); the
    # library always sends "reason", 0 (unspecified) included.
    assert signed_with in first["protected"]
    assert first["payload"]["reason"] == reason
    assert first["status"] == 200


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_go_second_revocation_is_already_revoked(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    # RFC 8555 §7.6: alreadyRevoked, which the library deliberately treats as success.
    _, second = _exchanges(result, "/revoke-cert")
    assert (second["status"], _body(second)["type"]) == (400, ERR + "alreadyRevoked")
    assert result["secondRevokeError"] is None


# -- problems -------------------------------------------------------------------------------


def test_go_invalid_contact_is_an_acme_error(problems_run: Result) -> None:
    problem = _problem(problems_run["invalidContact"])
    assert (problem["statusCode"], problem["problemType"]) == (400, ERR + "invalidContact")


def test_go_unknown_account_is_err_no_account(problems_run: Result) -> None:
    # RFC 8555 §7.3.1: onlyReturnExisting for an unknown key is accountDoesNotExist, which
    # the library maps to ErrNoAccount by its exact type URN.
    assert problems_run["unknownAccount"]["sentinel"] == "ErrNoAccount"


def test_go_rejected_identifiers_carry_subproblems(problems_run: Result) -> None:
    problem = _problem(problems_run["rejectedIdentifiers"])
    assert (problem["statusCode"], problem["problemType"]) == (400, ERR + "rejectedIdentifier")
    # RFC 8555 §6.7.1: a subproblem per refused identifier, read into acme.Subproblem.
    refused = {(s["type"], s["identifierValue"]) for s in problem["subproblems"]}
    assert refused == {
        (ERR + "rejectedIdentifier", "bad_label.go-problems.example.test"),
        (ERR + "rejectedIdentifier", "*.*.go-problems.example.test"),
    }


def test_go_bad_nonce_is_retried(problems_run: Result) -> None:
    # RFC 8555 §6.5: a spent nonce is badNonce (400); the library retries with a fresh one.
    assert problems_run["afterStaleNonce"] is None
    posts = _exchanges(problems_run)
    handed = next(i for i, e in enumerate(posts) if e.get("staleNonceHandedOut"))
    refused, retried = posts[handed + 1], posts[handed + 2]
    assert refused["protected"]["nonce"] == posts[handed]["protected"]["nonce"]
    assert (refused["status"], _body(refused)["type"]) == (400, ERR + "badNonce")
    assert retried["url"] == refused["url"]
    assert retried["protected"]["nonce"] != refused["protected"]["nonce"]
    assert retried["status"] == 201


def test_go_wrong_http01_response_is_an_authorization_error(problems_run: Result) -> None:
    failed = problems_run["wrongResponse"]
    assert failed["goType"] == "*acme.AuthorizationError"
    assert failed["identifier"] == PROBLEM_NAMES[0]
    # The challenge's error, an *acme.Error: the key authorization did not match (RFC 8555
    # §8.3), "unauthorized" as Boulder and Pebble answer it.
    (cause,) = failed["errors"]
    problem = _problem(cause)
    assert (problem["statusCode"], problem["problemType"]) == (403, ERR + "unauthorized")
    hosts = {hit["host"].split(":")[0] for hit in problems_run["wrongResponseRequests"]}
    assert hosts == {PROBLEM_NAMES[0]}


def test_go_order_with_a_failed_authorization_is_an_order_error(problems_run: Result) -> None:
    failed = problems_run["invalidOrder"]
    assert (failed["goType"], failed["status"]) == ("*acme.OrderError", "invalid")


def test_go_finalizing_an_invalid_order_is_order_not_ready(problems_run: Result) -> None:
    problem = _problem(problems_run["finalizeInvalidOrder"])
    assert (problem["statusCode"], problem["problemType"]) == (403, ERR + "orderNotReady")


def test_go_csr_for_other_names_is_bad_csr(problems_run: Result) -> None:
    problem = _problem(problems_run["badCsr"])
    assert (problem["statusCode"], problem["problemType"]) == (400, ERR + "badCSR")


@pytest.mark.parametrize("run", ["http01_run", "dns01_run", "problems_run"])
def test_go_problem_status_matches_the_http_status(
    run: str, request: pytest.FixtureRequest
) -> None:
    # acme.Error.StatusCode is read from the problem document's "status" when it has one:
    # it must be the HTTP status (RFC 7807 §3.1), and the type an ACME URN (RFC 8555 §6.7).
    result: Result = request.getfixturevalue(run)
    problems = [e for e in result["exchanges"] if e["status"] >= 400]
    assert problems
    for exchange in problems:
        assert exchange["contentType"] == "application/problem+json", exchange
        assert _body(exchange)["status"] == exchange["status"], exchange
        assert _body(exchange)["type"].startswith(ERR), exchange


def test_go_refuses_the_server_without_its_root(
    goacme_driver: Path, acme_server: AcmeServer
) -> None:
    # The negative case of the root given to the http.Client: TLS verification is on, so
    # the flows above really checked the server's certificate.
    result = _run_driver(goacme_driver, acme_server, {"flow": "untrusted", "rootPem": ""})
    assert "certificate signed by unknown authority" in result["discoverError"]["message"]
    assert not result["exchanges"], "no exchange may succeed untrusted"
