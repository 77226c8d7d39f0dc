"""Profiles over ACME (draft-ietf-acme-profiles): advertised, honoured, echoed, refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_ca.bench.client import AcmeClient, AcmeProblem, build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory
from tests.policy_helpers import client_for, running_service


async def _issue_with_profile(
    client: AcmeClient, name: str, profile: str | None, cts: ChallengeTestServer
) -> tuple[dict[str, object], x509.Certificate]:
    resp = await client.new_order([name], profile=profile)
    assert resp.body.get("profile") == profile
    authz_url = resp.body["authorizations"][0]
    authz = (await client.post_as_get(authz_url)).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    cts.add_http01(chall["token"], client.key_authorization(chall["token"]))
    await client.respond_challenge(chall["url"])
    assert resp.location is not None
    await client.poll(resp.location, until={"ready"}, timeout=10)
    final = await client.finalize(resp.body["finalize"], build_csr(generate_key("p256"), [name]))
    assert final.body["status"] == "valid"
    pem = (await client.download_certificate(final.body["certificate"])).content
    return final.body, x509.load_pem_x509_certificates(pem)[0]


async def test_directory_lists_profiles_with_descriptions(make_client: ClientFactory) -> None:
    client = await make_client(register=False)
    profiles = (await client.directory())["meta"]["profiles"]
    assert set(profiles) == {"classic", "tlsserver", "shortlived"}
    assert "90-day" in profiles["classic"]
    assert "CRL" in profiles["shortlived"]


async def test_tlsserver_order_is_echoed_and_shapes_the_certificate(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    order, cert = await _issue_with_profile(client, "tls.profile.test", "tlsserver", challtestsrv)
    assert order["profile"] == "tlsserver"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


async def test_shortlived_order_gets_a_week_or_less(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, cert = await _issue_with_profile(client, "short.profile.test", "shortlived", challtestsrv)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.total_seconds() <= 7 * 86400


async def test_no_profile_uses_the_default_and_echoes_none(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    order, cert = await _issue_with_profile(client, "plain.profile.test", None, challtestsrv)
    assert "profile" not in order
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)


async def test_unknown_profile_is_invalid_profile(make_client: ClientFactory) -> None:
    client = await make_client()
    with pytest.raises(AcmeProblem) as info:
        await client.new_order(["x.profile.test"], profile="nonesuch")
    assert info.value.type == "urn:ietf:params:acme:error:invalidProfile"
    assert "classic" in info.value.detail


async def test_configured_profile_and_its_max_names(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    profiles = {"small": {"validity_days": 10, "max_names": 1, "description": "tiny"}}
    async with (
        running_service(
            data_dir, challtestsrv, database_url, profiles=profiles, default_profile="small"
        ) as svc,
        client_for(svc) as client,
    ):
        meta = (await client.directory())["meta"]
        assert meta["profiles"]["small"] == "tiny"
        with pytest.raises(AcmeProblem) as info:
            await client.new_order(["a.small.test", "b.small.test"])
        assert info.value.type == "urn:ietf:params:acme:error:rejectedIdentifier"
        assert "at most 1" in info.value.detail
        _, cert = await _issue_with_profile(client, "a.small.test", None, challtestsrv)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime.days == 10


def _must_staple_csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


async def _ready_order(
    client: AcmeClient, name: str, profile: str | None, cts: ChallengeTestServer
) -> tuple[str, str]:
    resp = await client.new_order([name], profile=profile)
    authz = (await client.post_as_get(resp.body["authorizations"][0])).body
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    cts.add_http01(chall["token"], client.key_authorization(chall["token"]))
    await client.respond_challenge(chall["url"])
    assert resp.location is not None
    await client.poll(resp.location, until={"ready"}, timeout=10)
    return resp.location, resp.body["finalize"]


async def test_must_staple_csr_gets_a_must_staple_certificate(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    # RFC 7633: what certbot --must-staple asks for, on a profile whose leaves name OCSP.
    client = await make_client()
    _, finalize = await _ready_order(client, "staple.profile.test", None, challtestsrv)
    final = await client.finalize(finalize, _must_staple_csr("staple.profile.test"))
    pem = (await client.download_certificate(final.body["certificate"])).content
    cert = x509.load_pem_x509_certificates(pem)[0]
    feature = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    assert list(feature) == [x509.TLSFeatureType.status_request]


async def test_must_staple_on_a_profile_without_ocsp_is_bad_csr_and_the_order_stays_ready(
    make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    location, finalize = await _ready_order(
        client, "staple-short.profile.test", "shortlived", challtestsrv
    )
    with pytest.raises(AcmeProblem) as info:
        await client.finalize(finalize, _must_staple_csr("staple-short.profile.test"))
    assert info.value.type == "urn:ietf:params:acme:error:badCSR"
    assert "Must-Staple" in info.value.detail
    assert (await client.post_as_get(location)).body["status"] == "ready"
