"""ACME.js (AJ ONeal's / Root's, the core of Greenlock), unmodified, against a running acme-ca
with real validation: the npm package acme 3.0.3, a shim that loads @root/acme (pinned with
its companions in tests/interop/acmejs/package.json and its lockfile; the registry has acme
only at 3.0.3 and @root/acme only from 3.0.8).

tests/interop/acmejs/drive.mjs uses only the library's public API (ACME.create, acme.init,
acme.accounts.create, acme.certificates.create with challenge plug-ins) for: an account with
the terms agreed and a contact, the same account found again by its key, one name and two
names over http-01 (acme-http-01-standalone's store behind a responder on the CA's http-01
port), the second without the account's URL so that ACME.js finds it by the key, a wildcard
and its base name over dns-01 (a plug-in of ours writing TXT records in challtestsrv), and the
server's problem for a wrong http-01 answer and a refused name. It prints one JSON document
with every exchange; each flow runs once per module and the tests check one rule each.

ACME.js has no revocation, key rollover or deactivation (test_acmejs_public_api pins that).
Its own pre-flight checks (fetching each challenge itself over port 80 and the system
resolver) cannot reach the test names, so skipDryRun and skipChallengeTest are on; it then
waits a fixed 5 s before answering http-01 challenges. The CA root is trusted through
NODE_EXTRA_CA_CERTS (ACME.js has no TLS option); TLS verification stays on. acme.init()
also schedules a request to the author's server, which the driver refuses before any lookup.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import REPO, AcmeServer, _client_env
from tests.interop.drivers import DriverRun, Result, assert_issued, run_driver, succeeded

pytestmark = pytest.mark.interop

ACMEJS_DIR = REPO / "tests" / "interop" / "acmejs"
DRIVER = ACMEJS_DIR / "drive.mjs"
_MODULES = ACMEJS_DIR / "node_modules"
# The package the suite names, and the library it loads.
_PINNED = ("acme", "@root/acme")
_DRIVER_TIMEOUT = 90.0

ONE_NAME = "acmejs-one.example.test"
TWO_NAMES = ["acmejs-two-a.example.test", "acmejs-two-b.example.test"]
DNS01_NAMES = ["*.acmejs-dns.example.test", "acmejs-dns.example.test"]
WRONG_ANSWER_NAME = "acmejs-wrong.example.test"
REFUSED_NAME = "co.uk"  # a public suffix: acme-ca's policy refuses it
ERR = "urn:ietf:params:acme:error:"
# Node's codes for a chain it cannot verify.
_TLS_UNTRUSTED = {
    "SELF_SIGNED_CERT_IN_CHAIN",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    "DEPTH_ZERO_SELF_SIGNED_CERT",
}
# maintainers.js: acme.init() asks this host for a nonce 3 s later (errors ignored).
_AUTHOR_HOST = {"host": "api.rootprojects.org", "port": 443}


@pytest.fixture(scope="session")
def acmejs_node() -> Path:
    node = shutil.which("node")
    installed = [_MODULES / name / "package.json" for name in _PINNED]
    if node is None or not all(path.is_file() for path in installed):
        message = (
            "node or the npm package acme (ACME.js) is not installed: run "
            "`bash scripts/install-interop-deps.sh` (or `make test`)"
        )
        if os.environ.get("ACME_CA_INTEROP_SKIP_MISSING") == "1":
            pytest.skip(message)
        pytest.fail(message)
    # The install step runs only when node_modules is missing: a stale one after a pin bump
    # must not pass for the pinned version.
    pins = json.loads((ACMEJS_DIR / "package.json").read_text())["dependencies"]
    for name, path in zip(_PINNED, installed, strict=True):
        version = json.loads(path.read_text())["version"]
        assert version == pins[name], (
            f"{name} {version} is installed but {pins[name]} is pinned: "
            f"remove {_MODULES} and run scripts/install-interop-deps.sh"
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
        "dnsZone": "example.test",
        **config,
    }
    argv = [str(node), str(DRIVER), json.dumps(full)]
    return run_driver(
        argv, name="drive.mjs", server=server, env=env, timeout=_DRIVER_TIMEOUT, cwd=ACMEJS_DIR
    )


def _drive(node: Path, server: AcmeServer, **config: object) -> Result:
    """Run drive.mjs with ``config``; fail with its error, exchanges and the server log."""
    return succeeded(_run_driver(node, server, config), name="drive.mjs", server=server)


@pytest.fixture(scope="module")
def http01_run(acmejs_node: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        acmejs_node,
        acme_server,
        accountKey="ec",  # P-256, ES256
        email="acmejs-http@example.test",
        certificates=[
            {"names": [ONE_NAME], "certKey": "ec", "challenge": "http-01", "withAccount": True},
            {"names": TWO_NAMES, "certKey": "rsa", "challenge": "http-01", "withAccount": False},
        ],
    )


@pytest.fixture(scope="module")
def dns01_run(acmejs_node: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        acmejs_node,
        acme_server,
        accountKey="rsa",  # RSA 2048, RS256
        email="acmejs-dns@example.test",
        certificates=[
            {"names": DNS01_NAMES, "certKey": "ec", "challenge": "dns-01", "withAccount": True}
        ],
    )


@pytest.fixture(scope="module")
def problems_run(acmejs_node: Path, acme_server: AcmeServer) -> Result:
    return _drive(
        acmejs_node,
        acme_server,
        accountKey="ec",
        email="acmejs-problems@example.test",
        expectFailure=True,
        wrongAnswerNames=[WRONG_ANSWER_NAME],
        certificates=[
            {
                "names": [WRONG_ANSWER_NAME],
                "certKey": "ec",
                "challenge": "http-01",
                "withAccount": True,
            },
            {"names": [REFUSED_NAME], "certKey": "ec", "challenge": "http-01", "withAccount": True},
        ],
    )


def _certificate(run: Result, names: list[str]) -> Result:
    (outcome,) = (c for c in run["certificates"] if c["names"] == names)
    return dict(outcome)


def _new_accounts(run: Result) -> list[dict[str, Any]]:
    return [x for x in run["exchanges"] if x["url"].endswith("/acme/new-account")]


@pytest.mark.parametrize(("run", "alg"), [("http01_run", "ES256"), ("dns01_run", "RS256")])
def test_acmejs_account_with_terms_and_contact(
    run: str, alg: str, request: pytest.FixtureRequest
) -> None:
    result: Result = request.getfixturevalue(run)
    account = result["account"]
    assert account["status"] == "valid"
    email = "acmejs-http@example.test" if run == "http01_run" else "acmejs-dns@example.test"
    assert account["contact"] == [f"mailto:{email}"]
    created, *_ = _new_accounts(result)
    assert created["status"] == 201
    assert created["location"] == account["kid"]
    assert created["payload"]["termsOfServiceAgreed"] is True
    assert created["protected"]["alg"] == alg
    # RFC 8555 §6.2: a newAccount request is signed with "jwk" and carries no "kid".
    assert "kid" not in created["protected"]
    # RFC 8555 §6.1: the client says who it is.
    assert "ACME.js/" in created["userAgent"]


def test_acmejs_account_found_again_by_its_key(http01_run: Result) -> None:
    # ACME.js's accounts.create always sends onlyReturnExisting false: newAccount with a key
    # that has an account returns that account, 200 (RFC 8555 §7.3.1).
    assert http01_run["accountAgain"] == {"kid": http01_run["account"]["kid"], "status": "valid"}
    _, again, *_ = _new_accounts(http01_run)
    assert (again["status"], again["location"]) == (200, http01_run["account"]["kid"])


def test_acmejs_http01_one_name(http01_run: Result, acme_server: AcmeServer) -> None:
    outcome = _certificate(http01_run, [ONE_NAME])
    assert_issued(outcome["fullchain"], acme_server, {ONE_NAME})
    assert outcome["identifiers"] == [{"type": "dns", "value": ONE_NAME}]
    challenges = [x for x in outcome["exchanges"] if "/acme/chall/" in x["url"]]
    assert [c["payload"] for c in challenges] == [{}]  # RFC 8555 §7.5.1: an empty object
    assert [c["bodyStatus"] for c in challenges] == ["valid"]
    # The server fetched the key authorization from the responder, fed by the plug-in.
    hosts = {hit["host"].split(":")[0] for hit in http01_run["http01Requests"]}
    assert hosts == {ONE_NAME, *TWO_NAMES}
    calls = [(c["op"], c["altname"]) for c in http01_run["pluginCalls"] if c["altname"] == ONE_NAME]
    assert calls == [("set", ONE_NAME), ("remove", ONE_NAME)]


def test_acmejs_http01_two_names_account_found_by_key(
    http01_run: Result, acme_server: AcmeServer
) -> None:
    outcome = _certificate(http01_run, TWO_NAMES)
    assert outcome["withAccount"] is False
    assert_issued(outcome["fullchain"], acme_server, set(TWO_NAMES))
    # Given only the key, ACME.js learns the account's URL from newAccount (200, the same
    # Location) and signs the order with it as "kid".
    first = outcome["exchanges"][0]
    assert first["url"].endswith("/acme/new-account")
    assert (first["status"], first["location"]) == (200, http01_run["account"]["kid"])
    (order_event,) = (e for e in outcome["events"] if e["ev"] == "certificate_order")
    assert order_event["params"]["account"]["key"]["kid"] == http01_run["account"]["kid"]
    authzs = [x for x in outcome["exchanges"] if "/acme/authz/" in x["url"]]
    assert len(authzs) == 2


def test_acmejs_dns01_wildcard_and_base_name(dns01_run: Result, acme_server: AcmeServer) -> None:
    outcome = _certificate(dns01_run, DNS01_NAMES)
    assert_issued(outcome["fullchain"], acme_server, set(DNS01_NAMES))
    # RFC 8555 §7.1.4 and §8.4: both digests at _acme-challenge.<base name>.
    sets = [c for c in dns01_run["pluginCalls"] if c["type"] == "dns-01" and c["op"] == "set"]
    assert {c["altname"] for c in sets} == set(DNS01_NAMES)
    assert {c["dnsHost"] for c in sets} == {"_acme-challenge.acmejs-dns.example.test"}
    statuses = [x["bodyStatus"] for x in outcome["exchanges"] if "/acme/chall/" in x["url"]]
    assert statuses == ["valid", "valid"]


@pytest.mark.parametrize("run", ["http01_run", "dns01_run"])
def test_acmejs_certificate_served_as_pem_chain(run: str, request: pytest.FixtureRequest) -> None:
    result: Result = request.getfixturevalue(run)
    downloads = [x for x in result["exchanges"] if "/acme/cert/" in x["url"]]
    assert downloads
    for download in downloads:
        # ACME.js asks for the certificate with "Accept: application/json"; the answer is the
        # PEM chain all the same (RFC 8555 §7.4.2), as Boulder's is.
        assert download["accept"] == "application/json"
        assert download["status"] == 200
        assert download["contentType"].startswith("application/pem-certificate-chain")


def test_acmejs_wrong_http01_answer_reports_the_servers_problem(problems_run: Result) -> None:
    outcome = _certificate(problems_run, [WRONG_ANSWER_NAME])
    assert "fullchain" not in outcome
    assert outcome["error"]["code"] == "E_ACME_CHALLENGE"
    (challenge,) = (x for x in outcome["exchanges"] if "/acme/chall/" in x["url"])
    # RFC 8555 §7.5.1, §8.3: the challenge is invalid with the problem that says why.
    assert challenge["bodyStatus"] == "invalid"
    problem = challenge["bodyError"]
    assert problem["type"] == f"{ERR}unauthorized"
    assert "did not match" in problem["detail"]
    assert problem["detail"] in outcome["error"]["message"]  # what ACME.js reports
    assert not any(x["url"].endswith("/finalize") for x in outcome["exchanges"])


def test_acmejs_refused_identifier_reports_the_servers_problem(problems_run: Result) -> None:
    outcome = _certificate(problems_run, [REFUSED_NAME])
    error = outcome["error"]
    # RFC 8555 §7.4: newOrder for a name the CA will not issue for.
    assert error["urn"] == f"{ERR}rejectedIdentifier"
    assert error["problem"]["httpStatus"] == 400
    assert REFUSED_NAME in error["message"]
    assert [x["url"].rsplit("/", 1)[-1] for x in outcome["exchanges"]] == ["new-order"]


def test_acmejs_public_api(http01_run: Result) -> None:
    # What the suite drives is all ACME.js offers: no revocation, key change or account
    # deactivation. A version that adds any fails here, so that this module covers it.
    assert http01_run["api"] == {
        "acme": ["accounts", "certificates"],
        "accounts": ["create"],
        "certificates": ["create"],
    }
    assert (http01_run["acmeVersion"], http01_run["rootAcmeVersion"]) == ("3.0.3", "3.1.0")


def test_acmejs_talks_to_nothing_but_the_ca(http01_run: Result, acme_server: AcmeServer) -> None:
    # Every exchange went to the CA; the one connection elsewhere ACME.js tried (its author's
    # server, from acme.init()) was refused by the driver before any name lookup.
    origin = acme_server.directory_url.removesuffix("/directory")
    assert all(x["url"].startswith(f"{origin}/") for x in http01_run["exchanges"])
    assert http01_run["blocked"] == [_AUTHOR_HOST]


def test_acmejs_refuses_the_server_without_its_root(
    acmejs_node: Path, acme_server: AcmeServer
) -> None:
    # The negative case of NODE_EXTRA_CA_CERTS: TLS verification is on, so the flows above
    # really checked the server's certificate.
    config: dict[str, object] = {
        "accountKey": "ec",
        "email": "acmejs-untrusted@example.test",
        "certificates": [
            {"names": ["acmejs-untrusted.example.test"], "certKey": "ec", "challenge": "http-01"}
        ],
    }
    run = _run_driver(acmejs_node, acme_server, config, trust_root=False)
    assert run.returncode != 0
    assert run.result["errorInfo"]["code"] in _TLS_UNTRUSTED, run.result
    codes = {e["code"] for e in run.result.get("transportErrors", [])}
    assert codes, run.result
    assert codes <= _TLS_UNTRUSTED, run.result
    # The directory was asked for and nothing came back: no ACME exchange went through.
    assert [x.get("status") for x in run.result["exchanges"]] == [None]
