"""End-to-end protocol behaviour through the real app (RFC 8555 §7)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update

from acme_ca.bench.client import AcmeProblem, PollFailed, build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.errors import Identifier
from acme_ca.model import Authorization
from acme_ca.service import AcmeService
from acme_ca.storage.schema import certificates, challenges
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue, order_with_http01

pytestmark = pytest.mark.asyncio

ERR = "urn:ietf:params:acme:error:"


async def test_directory_lists_resources_and_meta(http: httpx.AsyncClient) -> None:
    resp = await http.get("/directory")
    assert resp.status_code == 200
    body = resp.json()
    for key in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert body[key].startswith("https://acme.test:14000/")
    assert body["meta"]["externalAccountRequired"] is False
    assert body["meta"]["termsOfService"]
    assert body["meta"]["caaIdentities"]


async def test_new_nonce_head_200_and_get_204(http: httpx.AsyncClient) -> None:
    head = await http.head("/acme/new-nonce")
    get = await http.get("/acme/new-nonce")
    assert head.status_code == 200
    assert get.status_code == 204
    for resp in (head, get):
        assert resp.headers["replay-nonce"]
        assert resp.headers["cache-control"] == "no-store"
        assert 'rel="index"' in resp.headers["link"]
    assert head.headers["replay-nonce"] != get.headers["replay-nonce"]


async def test_no_nonce_on_get_but_for_new_nonce(http: httpx.AsyncClient) -> None:
    # RFC 8555 §6.5 asks for nonces on answers to POST, §7.2 from newNonce; as Boulder, a GET
    # of any other resource gets none: the Ruby gem acme-client before 2.0.16 reads the
    # directory with no nonce store and crashed on one (unixcharles/acme-client#232).
    for path in ("/directory", "/terms", "/openapi.yaml", "/acme/new-order", "/nowhere"):
        resp = await http.get(path)
        assert "replay-nonce" not in resp.headers, path
        assert 'rel="index"' in resp.headers["link"], path
    # HEAD and POST (any resource, errors included) still get one.
    assert (await http.head("/directory")).headers["replay-nonce"]
    assert (await http.post("/directory")).headers["replay-nonce"]
    assert (await http.get("/acme/new-nonce")).headers["replay-nonce"]


async def test_get_on_post_resource_is_405_with_allow(http: httpx.AsyncClient) -> None:
    resp = await http.get("/acme/new-order")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"
    assert resp.headers["content-type"] == "application/problem+json"
    # RFC 8555 §6.7: an ACME error type, and `status` equal to the HTTP status.
    assert resp.json()["type"] == ERR + "malformed"
    assert resp.json()["status"] == 405


async def test_unknown_path_is_404_problem(http: httpx.AsyncClient) -> None:
    resp = await http.get("/nope")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["type"] == ERR + "malformed"
    assert resp.json()["status"] == 404


@pytest.mark.parametrize("index", ["\u00b2", "1" * 5000, "-1", "1.0"])
async def test_non_ascii_or_huge_chain_index_is_404_not_500(
    http: httpx.AsyncClient, index: str
) -> None:
    # "²".isdigit() is true but int() refuses it; a 5000-digit int() refuses too.
    resp = await http.get(f"/acme/cert/abc/{index}")
    assert resp.status_code == 404
    assert resp.json()["type"] == ERR + "malformed"


async def test_full_issuance_with_http01(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    key, leaf, order = await issue(client, ["www.example.test", "example.test"], challtestsrv)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"www.example.test", "example.test"}
    assert leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    resp = await client.download_certificate(order["certificate"])
    assert resp.headers["content-type"].startswith("application/pem-certificate-chain")
    # RFC 8555 §7.4.2: an alternate chain is offered.
    alternates = resp.links("alternate")
    assert alternates
    alt = await client.download_certificate(alternates[0])
    alt_chain = x509.load_pem_x509_certificates(alt.content)
    assert alt_chain[0] == leaf
    assert len(alt_chain) >= 2


async def test_certificate_with_one_chain_has_no_empty_link_element(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, service: AcmeService
) -> None:
    # A CA imported without a cross-signed chain offers no alternate: the Link field is
    # then only rel="index", with no empty list element (RFC 9110 §5.6.1.1, RFC 8288).
    client = await make_client()
    _, _, order = await issue(client, ["one.example.test"], challtestsrv)
    cert_id = order["certificate"].rsplit("/", 1)[1]
    stored = await service.storage.get_certificate(cert_id)
    assert stored is not None
    assert len(stored.pem_chains) == 2
    only = json.dumps(list(stored.pem_chains[:1]))
    async with service.engines.writer.begin() as conn:
        await conn.execute(
            update(certificates).where(certificates.c.id == cert_id).values(pem_chains=only)
        )
    resp = await client.download_certificate(order["certificate"])
    assert resp.headers.get_list("link") == [f'<{service.front_end.urls.directory}>;rel="index"']


async def test_each_link_is_a_field_line_of_its_own(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, service: AcmeService
) -> None:
    # RFC 8555 §7.4.2 offers alternates in "one or more link relation header fields";
    # golang.org/x/crypto/acme (ListCertAlternates) reads one link per field line, so
    # rel="alternate" and rel="index" must not share one (RFC 8288 §3 allows both forms).
    client = await make_client()
    _, _, order = await issue(client, ["lines.example.test"], challtestsrv)
    cert_url = order["certificate"]
    resp = await client.download_certificate(cert_url)
    index = f'<{service.front_end.urls.directory}>;rel="index"'
    assert resp.headers.get_list("link") == [f'<{cert_url}/1>;rel="alternate"', index]
    alternate = await client.download_certificate(f"{cert_url}/1")
    assert alternate.headers.get_list("link") == [f'<{cert_url}/0>;rel="alternate"', index]


async def test_dns01_wildcard(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    resp = await client.new_order(["*.wild.example.test"])
    authz = (await client.post_as_get(resp.body["authorizations"][0])).body
    assert authz["wildcard"] is True
    assert authz["identifier"]["value"] == "wild.example.test"
    # RFC 8555 §7.1.3: wildcards get dns-01 only.
    assert [c["type"] for c in authz["challenges"]] == ["dns-01"]
    chall = authz["challenges"][0]
    challtestsrv.set_txt(
        "_acme-challenge.wild.example.test", client.dns01_txt_value(chall["token"])
    )
    await client.respond_challenge(chall["url"])
    await client.poll(resp.body["authorizations"][0], until={"valid"}, timeout=10)
    order = await client.poll(resp.location or "", until={"ready"}, timeout=10)
    final = await client.finalize(
        order.body["finalize"], build_csr(generate_key("p256"), ["*.wild.example.test"])
    )
    assert final.body["status"] == "valid"


async def test_failed_challenge_invalidates_authz_and_order(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    resp = await client.new_order(["fail.example.test"])
    authz_url = resp.body["authorizations"][0]
    authz = (await client.post_as_get(authz_url)).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    challtestsrv.add_http01(chall["token"], "wrong")
    processing = await client.respond_challenge(chall["url"])
    assert processing.body["status"] in ("processing", "invalid")
    assert 'rel="up"' in processing.headers["link"]
    with pytest.raises(PollFailed):
        await client.poll(authz_url, until={"valid"}, timeout=10)
    order = (await client.post_as_get(resp.location or "")).body
    assert order["status"] == "invalid"
    assert order["error"]["subproblems"][0]["identifier"]["value"] == "fail.example.test"
    chall_doc = (await client.post_as_get(chall["url"])).body
    assert chall_doc["status"] == "invalid"
    assert chall_doc["error"]["type"] == ERR + "unauthorized"
    assert chall_doc["validationRecord"]


@pytest.mark.parametrize("answer", ["right", "wrong"])
async def test_challenge_answer_after_validation_is_what_was_stored(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, answer: str
) -> None:
    """The challenge POST answers with the validation it waited for, as recorded (not
    read back): the same document a later POST-as-GET of the challenge returns."""
    client = await make_client()
    resp = await client.new_order([f"{answer}.answer.example.test"])
    authz = (await client.post_as_get(resp.body["authorizations"][0])).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    key_authz = client.key_authorization(chall["token"]) if answer == "right" else "wrong"
    challtestsrv.add_http01(chall["token"], key_authz)
    answered = await client.respond_challenge(chall["url"])
    assert answered.body["status"] == ("valid" if answer == "right" else "invalid")
    stored = (await client.post_as_get(chall["url"])).body
    assert answered.body == stored


async def test_valid_authz_is_reused(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    first = await order_with_http01(client, ["reuse.example.test"], challtestsrv)
    second = await client.new_order(["reuse.example.test"])
    assert second.body["authorizations"] == first["authorizations"]
    assert second.body["status"] == "ready"


async def test_authz_deactivated_while_reused_gives_a_new_one(
    make_client: ClientFactory, service: AcmeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The authz newOrder found to reuse is deactivated before the order is inserted:
    the order gets a new authorization, pending, rather than being born invalid."""
    client = await make_client()
    first = await client.new_order(["race.example.test"])
    storage = service.storage
    find = storage.find_reusable_authz

    async def found_then_deactivated(
        account_id: str, identifier: Identifier, *, wildcard: bool, valid_after: dt.datetime
    ) -> Authorization | None:
        found = await find(account_id, identifier, wildcard=wildcard, valid_after=valid_after)
        if found is not None:
            assert await storage.deactivate_authz(found.id)
        return found

    monkeypatch.setattr(storage, "find_reusable_authz", found_then_deactivated)
    second = await client.new_order(["race.example.test"])
    assert second.status == 201
    assert second.body["status"] == "pending"
    (authz_url,) = second.body["authorizations"]
    assert authz_url not in first.body["authorizations"]
    assert (await client.post_as_get(authz_url)).body["status"] == "pending"
    assert (await client.post_as_get(second.location or "")).body["status"] == "pending"


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (ConnectionRefusedError(111, "Connection refused"), 503),
        (sqlite3.OperationalError("database is locked (writer lock)"), 503),
        (RuntimeError("a bug"), 500),
    ],
    ids=["connection-refused", "writer-locked", "bug"],
)
async def test_database_unavailable_is_503_with_retry_after(
    make_client: ClientFactory,
    service: AcmeService,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    status: int,
) -> None:
    """The database down (PostgreSQL killed, restarting) or its writer lock held past
    its wait: 503 serverInternal with Retry-After, nothing decided (RFC 9110 §15.6.4);
    anything else stays a 500 with a request id."""
    client = await make_client()

    async def fails(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(service.storage, "find_reusable_authz", fails)
    with pytest.raises(AcmeProblem) as refused:
        await client.new_order(["down.example.test"])
    assert refused.value.status == status
    assert refused.value.type == ERR + "serverInternal"
    if status == 503:
        assert refused.value.headers["retry-after"] == "5"
        assert "database is unavailable" in refused.value.detail
    else:
        assert "request id" in refused.value.detail


async def test_finalize_before_ready_is_order_not_ready(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.new_order(["early.example.test"])
    with pytest.raises(AcmeProblem) as info:
        await client.finalize(
            resp.body["finalize"], build_csr(generate_key("p256"), ["early.example.test"])
        )
    assert info.value.type == ERR + "orderNotReady"
    assert info.value.status == 403


async def test_finalize_twice_is_order_not_ready(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, _, order = await issue(client, ["twice.example.test"], challtestsrv)
    with pytest.raises(AcmeProblem) as info:
        await client.finalize(
            order["finalize"], build_csr(generate_key("p256"), ["twice.example.test"])
        )
    assert info.value.type == ERR + "orderNotReady"


@pytest.mark.parametrize(
    "names",
    [["other.example.test"], ["csr.example.test", "extra.example.test"], []],
    ids=["wrong-name", "extra-name", "no-name"],
)
async def test_finalize_csr_names_must_match(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer, names: list[str]
) -> None:
    client = await make_client()
    order = await order_with_http01(client, ["csr.example.test"], challtestsrv)
    with pytest.raises(AcmeProblem) as info:
        await client.finalize(order["finalize"], build_csr(generate_key("p256"), names))
    assert info.value.type == ERR + "badCSR"
    # A refused CSR leaves the order ready for another try.
    assert (await client.post_as_get(order["url"])).body["status"] == "ready"


async def test_finalize_csr_with_account_key_is_refused(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    order = await order_with_http01(client, ["samekey.example.test"], challtestsrv)
    with pytest.raises(AcmeProblem) as info:
        await client.finalize(order["finalize"], build_csr(client.key, ["samekey.example.test"]))
    assert info.value.type == ERR + "badCSR"


async def test_other_account_cannot_see_order_authz_or_cert(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    owner = await make_client()
    stranger = await make_client()
    _, _, order = await issue(owner, ["mine.example.test"], challtestsrv)
    for url in (order["url"], order["authorizations"][0], order["certificate"]):
        with pytest.raises(AcmeProblem) as info:
            await stranger.post_as_get(url)
        assert (info.value.status, info.value.type) == (403, ERR + "unauthorized")


async def test_authz_being_validated_carries_retry_after(
    make_client: ClientFactory, service: AcmeService
) -> None:
    client = await make_client()
    authz_url = (await client.new_order(["poll.example.test"])).body["authorizations"][0]
    pending = await client.post_as_get(authz_url)
    assert "retry-after" not in pending.headers
    # A validation under way (as between the challenge response and its result).
    chall_id = pending.body["challenges"][0]["url"].rsplit("/", 1)[1]
    async with service.engines.writer.begin() as conn:
        await conn.execute(
            update(challenges).where(challenges.c.id == chall_id).values(status="processing")
        )
    polled = await client.post_as_get(authz_url)
    # RFC 8555 §7.5.1: the client polls the authorization; Retry-After paces it.
    assert polled.body["status"] == "pending"
    assert polled.headers["retry-after"] == "1"


async def test_authz_deactivation(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.new_order(["deact.example.test"])
    authz_url = resp.body["authorizations"][0]
    deactivated = await client.deactivate_authorization(authz_url)
    assert deactivated.body["status"] == "deactivated"
    assert (await client.post_as_get(resp.location or "")).body["status"] == "invalid"
    # RFC 8555 §7.5.2: a deactivated authz cannot be validated.
    chall = deactivated.body["challenges"][0]
    with pytest.raises(AcmeProblem) as info:
        await client.respond_challenge(chall["url"])
    assert info.value.type == ERR + "malformed"


async def test_order_rejects_bad_identifiers_with_subproblems(make_client: ClientFactory) -> None:
    client = await make_client()
    with pytest.raises(AcmeProblem) as info:
        await client.new_order(["com", "bad..name.test", "ok.example.test"])
    assert info.value.type == ERR + "rejectedIdentifier"
    values = {s["identifier"]["value"] for s in info.value.subproblems}
    assert values == {"com", "bad..name.test"}


async def test_order_rejects_unknown_identifier_type(make_client: ClientFactory) -> None:
    client = await make_client()
    with pytest.raises(AcmeProblem) as info:
        await client.new_order([{"type": "email", "value": "a@example.test"}])
    assert info.value.type == ERR + "unsupportedIdentifier"


async def test_order_not_after_beyond_profile_is_refused(make_client: ClientFactory) -> None:
    client = await make_client()
    url = (await client.directory())["newOrder"]
    with pytest.raises(AcmeProblem) as info:
        await client.post(
            url,
            {
                "identifiers": [{"type": "dns", "value": "long.example.test"}],
                "notAfter": "2100-01-01T00:00:00Z",
            },
        )
    assert info.value.type == ERR + "malformed"
    assert "validity" in info.value.detail


async def test_ip_identifier_order(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, leaf, _ = await issue(client, ["127.0.0.1"], challtestsrv)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


async def test_directory_and_new_nonce_accept_post_as_get(make_client: ClientFactory) -> None:
    # RFC 8555 §6.3: GET and POST-as-GET are both allowed on these two resources.
    client = await make_client()
    directory = await client.post_as_get(client.directory_url)
    assert directory.body["newOrder"].endswith("/acme/new-order")
    nonce = await client.post_as_get(directory.body["newNonce"])
    assert nonce.status == 200
    assert nonce.headers["replay-nonce"]


async def test_directory_post_with_payload_is_malformed(make_client: ClientFactory) -> None:
    client = await make_client()
    with pytest.raises(AcmeProblem) as info:
        await client.post(client.directory_url, {"a": 1})
    assert info.value.type == ERR + "malformed"


@pytest.mark.parametrize(
    "path", ["/directory/", "//directory", "/acme/new-order/", "/acme//new-order"]
)
async def test_paths_match_exactly(http: httpx.AsyncClient, path: str) -> None:
    resp = await http.get(path)
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
