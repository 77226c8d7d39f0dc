"""ProcessOne's Erlang ACME client library p1_acme (Debian's erlang-p1-acme, the ACME client of
ejabberd), unmodified, on Debian's Erlang/OTP, against a running acme-ca with real validation.

tests/interop/erlang/drive.escript uses only the library's public API (p1_acme:issue/4 and
revoke/4 with their options; generate_key/1; format_error/1) for one certificate's life:
account, order, http-01 answered by an Erlang listener on the server's http-01 port (the
library's challenge_fun hands it the key authorizations), finalize with the library's own CSR,
the chain, the same again with the account key it already has, revocation by the
certificate's key (the only way the library revokes), twice; and the refusals it must report
with the server's problem: a wrong http-01 answer and a refused identifier. It prints one JSON
document with every HTTP exchange the library reported through its debug_fun; each flow runs
once per module and the tests below check one rule each on its result.

TLS: p1_acme passes no TLS options to httpc (inets' default profile), and on OTP 25 httpc's
default is ssl's verify_none: used as it comes, the library does not check the CA's
certificate at all (test_p1_acme_httpc_defaults_do_not_verify records that). The driver turns
verification on through OTP's own options, httpc:set_options([{socket_opts, [{verify,
verify_peer}, {cacertfile, Root}]}]), which httpc hands to ssl:connect; it also gives ssl a
hostname match for the IP address in https://127.0.0.1:PORT, which OTP 25 compares with the
certificate's dNSName entries only, never its iPAddress ones. The library's ca_certs option
(the root again) makes it check the issued chain itself.

The library answers http-01 only (no dns-01, so no wildcard), sends no revocation reason and
cannot roll keys over or deactivate anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.interop.conftest import (
    REPO,
    AcmeServer,
    _client_env,
    dns_names,
)
from tests.interop.drivers import Result, assert_issued, chain_of, run_driver, succeeded

pytestmark = pytest.mark.interop

DRIVER = REPO / "tests" / "interop" / "erlang" / "drive.escript"
_DRIVER_TIMEOUT = 60.0

EC_NAME = "erl-ec.example.test"
RSA_NAMES = ["erl-rsa-a.example.test", "erl-rsa-b.example.test"]
WRONG_ANSWER_NAME = "erl-wrong.example.test"
# Refused by acme-ca's policy, yet a name the library's IDNA encoding takes ("bad_label" is
# refused by idna:to_ascii inside p1_acme before any request).
REFUSED_NAME = "co.uk"
ERR = "urn:ietf:params:acme:error:"
# The only media types p1_acme reads, each compared with the whole Content-Type field.
_MEDIA_TYPES = {"application/json", "application/problem+json", "application/pem-certificate-chain"}


# Prints where OTP finds p1_acme, or nothing.
_LIB_DIR_OF_P1_ACME = (
    "case code:lib_dir(p1_acme) of {error, _} -> ok; D -> io:put_chars(D) end, halt()."
)


@pytest.fixture(scope="session")
def escript_bin() -> Path:
    """escript, when the library is installed where OTP finds it."""
    escript, erl = shutil.which("escript"), shutil.which("erl")
    found = ""
    if escript and erl:
        done = subprocess.run(
            [erl, "-noshell", "-eval", _LIB_DIR_OF_P1_ACME],
            capture_output=True,
            timeout=30,
            check=False,
        )
        found = done.stdout.decode(errors="replace").strip()
    if not escript or not found:
        message = (
            "Erlang/OTP or p1_acme (Debian package erlang-p1-acme) is not installed: run "
            "`bash scripts/install-interop-deps.sh` (or `make test`)"
        )
        if os.environ.get("ACME_CA_INTEROP_SKIP_MISSING") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return Path(escript)


def _drive(escript: Path, server: AcmeServer, **config: object) -> Result:
    full = {
        "directoryUrl": server.directory_url,
        "rootPem": str(server.root_pem),
        "http01Port": server.http01_port,
        **config,
    }
    run = run_driver(
        [str(escript), str(DRIVER), json.dumps(full)],
        name="drive.escript",
        server=server,
        env=_client_env(server),
        timeout=_DRIVER_TIMEOUT,
    )
    return succeeded(run, name="drive.escript", server=server)


@pytest.fixture(scope="module")
def ec_run(escript_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        escript_bin,
        acme_server,
        flow="issue",
        names=[EC_NAME],
        accountKey="ec",  # P-256, ES256
        certType="ec",
        contact="mailto:erl-ec@example.test",
    )


@pytest.fixture(scope="module")
def rsa_run(escript_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        escript_bin,
        acme_server,
        flow="issue",
        names=RSA_NAMES,
        accountKey="rsa",  # RSA 2048, RS256
        certType="rsa",
        contact="mailto:erl-rsa@example.test",
    )


@pytest.fixture(scope="module")
def problems_run(escript_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        escript_bin,
        acme_server,
        flow="problems",
        wrongAnswerName=WRONG_ANSWER_NAME,
        refusedName=REFUSED_NAME,
    )


@pytest.fixture(scope="module")
def untrusted_run(escript_bin: Path, acme_server: AcmeServer) -> Result:
    return _drive(escript_bin, acme_server, flow="untrusted", refusedName=REFUSED_NAME)


# The key type of each issuing run: the account key (ES256 or RS256) and the cert_type option.
_KEY_TYPE = {"ec_run": "ec", "rsa_run": "rsa"}
_ISSUE_RUNS = [("ec_run", {EC_NAME}), ("rsa_run", set(RSA_NAMES))]
_ALL_RUNS = ["ec_run", "rsa_run", "problems_run", "untrusted_run"]


def _result(request: pytest.FixtureRequest, run: str) -> Result:
    result: Result = request.getfixturevalue(run)
    return result


def _exchanges(result: Result, step: str, path: str = "", method: str = "post") -> list[Result]:
    return [
        e
        for e in result["exchanges"]
        if e["step"] == step and e["method"] == method and path in e["url"]
    ]


def _problem(outcome: Result, kind: str) -> Result:
    assert outcome["ok"] is False, outcome
    assert outcome["kind"] == kind, outcome
    problem: Result = outcome["problem"]
    return problem


# -- accounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["ec_run", "rsa_run"])
def test_p1_acme_creates_the_account(run: str, request: pytest.FixtureRequest) -> None:
    result = _result(request, run)
    (created,) = _exchanges(result, "issue", "/new-account")
    # RFC 8555 §7.3: signed with the new key itself (jwk), agreeing to the terms.
    assert "jwk" in created["protected"]
    assert "kid" not in created["protected"]
    assert created["payload"]["termsOfServiceAgreed"] is True
    assert created["payload"]["contact"] == [f"mailto:erl-{_KEY_TYPE[run]}@example.test"]
    assert created["status"] == 201
    assert created["location"]
    assert created["body"]["status"] == "valid"


@pytest.mark.parametrize(("run", "alg"), [("ec_run", "ES256"), ("rsa_run", "RS256")])
def test_p1_acme_signs_with_the_account_url_and_its_key_alg(
    run: str, alg: str, request: pytest.FixtureRequest
) -> None:
    result = _result(request, run)
    (created,) = _exchanges(result, "issue", "/new-account")
    later = [e for e in _exchanges(result, "issue") if "/new-account" not in e["url"]]
    assert later
    for exchange in [created, *later]:
        assert exchange["protected"]["alg"] == alg, exchange
    # RFC 8555 §6.2: every request after newAccount names the account by its URL (kid).
    for exchange in later:
        assert exchange["protected"]["kid"] == created["location"], exchange
        assert "jwk" not in exchange["protected"], exchange


@pytest.mark.parametrize("run", ["ec_run", "rsa_run"])
def test_p1_acme_finds_the_account_again(run: str, request: pytest.FixtureRequest) -> None:
    result = _result(request, run)
    (created,) = _exchanges(result, "issue", "/new-account")
    (again,) = _exchanges(result, "again", "/new-account")
    # RFC 8555 §7.3.1: newAccount with a known key is 200 with the existing account's URL.
    assert (again["status"], again["location"]) == (200, created["location"])


# -- orders, http-01, certificates ------------------------------------------------------------


@pytest.mark.parametrize(("run", "names"), _ISSUE_RUNS)
def test_p1_acme_http01(run: str, names: set[str], request: pytest.FixtureRequest) -> None:
    result = _result(request, run)
    (order,) = _exchanges(result, "issue", "/new-order")
    sent = {(i["type"], i["value"]) for i in order["payload"]["identifiers"]}
    assert sent == {("dns", name) for name in names}
    # The challenge_fun got a key authorization per name (RFC 8555 §8.1: token "." thumbprint)
    # and the CA fetched each one from the driver's listener (§8.3), once.
    challenges = result["challenges"]
    assert {c["domain"] for c in challenges} == names
    for challenge in challenges:
        token, thumbprint = challenge["keyAuthorization"].split(".")
        assert token == challenge["token"]
        assert thumbprint
    hits = result["http01Requests"]
    assert sorted(hit["host"] for hit in hits) == sorted(names)
    assert {hit["path"] for hit in hits} == {
        f"/.well-known/acme-challenge/{c['token']}" for c in challenges
    }
    assert {hit["status"] for hit in hits} == {200}


@pytest.mark.parametrize(("run", "names"), _ISSUE_RUNS)
def test_p1_acme_certificate_for_the_names(
    run: str, names: set[str], request: pytest.FixtureRequest
) -> None:
    leaf, *_ = chain_of(_result(request, run)["issued"]["chainPem"])
    assert dns_names(leaf) == names


@pytest.mark.parametrize(("run", "names"), _ISSUE_RUNS)
@pytest.mark.parametrize("step", ["issued", "issuedAgain"])
def test_p1_acme_chain_verifies_to_the_root(
    run: str, names: set[str], step: str, request: pytest.FixtureRequest, acme_server: AcmeServer
) -> None:
    issued = _result(request, run)[step]
    # The library's own check with ca_certs (the root): the leaf's key is its key and
    # public_key:pkix_path_validation accepts the chain.
    assert issued["validationResult"] == "valid"
    assert_issued(issued["chainPem"], acme_server, names)


@pytest.mark.parametrize(
    ("run", "key_class", "size"),
    [("ec_run", ec.EllipticCurvePublicKey, 256), ("rsa_run", rsa.RSAPublicKey, 2048)],
)
def test_p1_acme_certificate_key_type(
    run: str, key_class: type[Any], size: int, request: pytest.FixtureRequest
) -> None:
    result = _result(request, run)
    assert result["issued"]["certKeyType"] == _KEY_TYPE[run]
    leaf, *_ = chain_of(result["issued"]["chainPem"])
    key = leaf.public_key()
    assert isinstance(key, key_class)
    assert key.key_size == size
    if isinstance(key, ec.EllipticCurvePublicKey):
        assert isinstance(key.curve, ec.SECP256R1)


@pytest.mark.parametrize("run", ["ec_run", "rsa_run"])
def test_p1_acme_second_order_reuses_the_valid_authorizations(
    run: str, request: pytest.FixtureRequest
) -> None:
    result = _result(request, run)
    (order,) = _exchanges(result, "again", "/new-order")
    # The order is ready at once; the library goes straight to finalize, with no
    # authorization fetched and nothing validated again.
    assert (order["status"], order["body"]["status"]) == (201, "ready")
    assert not _exchanges(result, "again", "/authz/")
    assert len(result["http01Requests"]) == len(result["challenges"])
    # It takes the order's URL from the finalize answer's Location (RFC 8555 §7.4), having
    # kept none from newOrder on this path.
    (finalize,) = _exchanges(result, "again", "/finalize")
    assert finalize["location"] == order["location"]
    assert (
        chain_of(result["issuedAgain"]["chainPem"])[0] != chain_of(result["issued"]["chainPem"])[0]
    )


# -- revocation -------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["ec_run", "rsa_run"])
def test_p1_acme_revokes_with_the_certificate_key(run: str, request: pytest.FixtureRequest) -> None:
    result = _result(request, run)
    assert result["revoke"] == {"ok": True}
    (revoke,) = _exchanges(result, "revoke", "/revoke-cert")
    # RFC 8555 §7.6: signed by the certificate's own key (jwk), no reason given.
    assert "jwk" in revoke["protected"]
    assert "kid" not in revoke["protected"]
    assert set(revoke["payload"]) == {"certificate"}
    assert revoke["status"] == 200


@pytest.mark.parametrize("run", ["ec_run", "rsa_run"])
def test_p1_acme_second_revocation_is_already_revoked(
    run: str, request: pytest.FixtureRequest
) -> None:
    problem = _problem(_result(request, run)["revokeAgain"], "problem_report")
    assert (problem["type"], problem["status"]) == (ERR + "alreadyRevoked", 400)


# -- problems ---------------------------------------------------------------------------------


def test_p1_acme_wrong_http01_answer_is_the_challenge_error(problems_run: Result) -> None:
    outcome = problems_run["wrongAnswer"]
    problem = _problem(outcome, "challenge_failed")
    assert outcome["domain"] == WRONG_ANSWER_NAME
    # The challenge's error as the server recorded it (RFC 8555 §8.3: the key authorization
    # did not match), "unauthorized" as Boulder and Pebble answer it.
    assert (problem["type"], problem["status"]) == (ERR + "unauthorized", 403)
    assert "did not match" in problem["detail"]
    assert problem["detail"] in outcome["formatted"]
    hosts = {hit["host"] for hit in problems_run["wrongAnswerRequests"]}
    assert hosts == {WRONG_ANSWER_NAME}


def test_p1_acme_refused_identifier_is_the_servers_problem(problems_run: Result) -> None:
    outcome = problems_run["refused"]
    problem = _problem(outcome, "problem_report")
    # RFC 8555 §7.4: newOrder refuses the identifier; the library returns the document.
    assert (problem["type"], problem["status"]) == (ERR + "rejectedIdentifier", 400)
    assert REFUSED_NAME in problem["detail"]
    assert problem["detail"] in outcome["formatted"]
    (order,) = _exchanges(problems_run, "refused", "/new-order")
    assert order["body"]["subproblems"][0]["identifier"] == {"type": "dns", "value": REFUSED_NAME}


@pytest.mark.parametrize("run", _ALL_RUNS)
def test_p1_acme_media_types_have_no_parameters(run: str, request: pytest.FixtureRequest) -> None:
    # p1_acme compares the whole Content-Type field with its media types ("application/json;
    # charset=utf-8" would be an unexpected content type), takes a body-less 2xx without one,
    # and decodes whatever says application/json: newNonce's HEAD answer and the revocation's
    # empty 200 must carry no Content-Type at all.
    answered = [e for e in _result(request, run)["exchanges"] if "status" in e]
    assert answered
    for exchange in answered:
        empty = "/new-nonce" in exchange["url"] or (
            "/revoke-cert" in exchange["url"] and exchange["status"] == 200
        )
        if empty:
            assert exchange["contentType"] is None, exchange
        else:
            assert exchange["contentType"] in _MEDIA_TYPES, exchange


@pytest.mark.parametrize("run", _ALL_RUNS)
def test_p1_acme_problem_documents(run: str, request: pytest.FixtureRequest) -> None:
    # The library reads "type" (an ACME URN among those it knows, else it is a codec error),
    # "detail" and "status": the HTTP status (RFC 7807 §3.1).
    problems = [e for e in _result(request, run)["exchanges"] if e.get("status", 0) >= 400]
    if run in ("ec_run", "rsa_run", "problems_run"):
        assert problems
    for exchange in problems:
        assert exchange["contentType"] == "application/problem+json", exchange
        assert exchange["body"]["status"] == exchange["status"], exchange
        assert exchange["body"]["type"].startswith(ERR), exchange


@pytest.mark.parametrize("run", _ALL_RUNS[:3])
def test_p1_acme_every_answer_to_a_post_carries_a_nonce(
    run: str, request: pytest.FixtureRequest
) -> None:
    # RFC 8555 §6.5: the library signs each request with the nonce of the answer before.
    for exchange in _result(request, run)["exchanges"]:
        if exchange["method"] in ("post", "head"):
            assert exchange["replayNonce"], exchange


# -- TLS --------------------------------------------------------------------------------------


def test_p1_acme_refuses_the_server_without_its_root(untrusted_run: Result) -> None:
    # verify_peer with the system roots instead of the CA's: the handshake fails, so the
    # flows above really verified the server's certificate.
    outcome = untrusted_run["systemRoots"]
    assert (outcome["ok"], outcome["kind"]) == (False, "http_error")
    assert "unknown_ca" in outcome["detail"]
    (attempt,) = [e for e in untrusted_run["exchanges"] if e["step"] == "systemRoots"]
    assert "status" not in attempt
    assert "/directory" in attempt["url"]


def test_p1_acme_httpc_defaults_do_not_verify(untrusted_run: Result) -> None:
    # The library as it comes on OTP 25 (httpc's default TLS options, verify_none): it talks
    # to a server whose root it was never given, up to the server's refusal of the order.
    outcome = untrusted_run["httpcDefaults"]
    problem = _problem(outcome, "problem_report")
    assert problem["type"] == ERR + "rejectedIdentifier"
