"""Certificate profiles: the shipped set, their TOML form, and what each puts in a leaf."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from acme_ca.bench.client import build_csr
from acme_ca.bench.jws import generate_key
from acme_ca.ca import CertificateAuthority, CertificateProfile
from acme_ca.ca.profiles import DEFAULT_PROFILES, profile_description, profiles_from_config
from acme_ca.clock import SystemClock
from acme_ca.errors import Identifier

NAMES = [Identifier(type="dns", value="www.profile.example.test")]


@pytest.fixture
def ca(data_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load(
        data_dir,
        clock=SystemClock(),
        issuer_url="http://ca.test/issuer",
        crl_url="http://ca.test/crl",
        ocsp_url="http://ca.test/ocsp",
    )


def _issue(ca: CertificateAuthority, profile: CertificateProfile) -> x509.Certificate:
    csr = x509.load_der_x509_csr(build_csr(generate_key("p256"), ["www.profile.example.test"]))
    issued = ca.issue(csr=csr, identifiers=NAMES, serial=ca.new_serial(), profile=profile)
    return x509.load_der_x509_certificate(issued.der)


def _ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _aia_methods(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    return {d.access_method for d in aia}


def test_shipped_profiles() -> None:
    assert set(DEFAULT_PROFILES) == {"classic", "tlsserver", "shortlived"}
    assert DEFAULT_PROFILES["classic"].validity == dt.timedelta(days=90)
    assert DEFAULT_PROFILES["shortlived"].validity < dt.timedelta(days=7)
    assert all(p.description for p in DEFAULT_PROFILES.values())


def test_shipped_descriptions_survive_acme_sh_list_profiles() -> None:
    # acme.sh --list-profiles: `_egrep_o '"profiles" *: *[{][^}]*[}]'`, then
    # `tr ',' '\n'`, one line per profile: a comma (or brace) in a description
    # would show its pieces as profiles of their own.
    for profile in DEFAULT_PROFILES.values():
        assert not set(profile_description(profile)) & set(',{}"'), profile.name


def test_classic_has_cn_both_ekus_and_revocation_pointers(ca: CertificateAuthority) -> None:
    cert = _issue(ca, DEFAULT_PROFILES["classic"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert _ekus(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert AuthorityInformationAccessOID.OCSP in _aia_methods(cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90)


def test_tlsserver_has_no_cn_and_server_auth_only(ca: CertificateAuthority) -> None:
    cert = _issue(ca, DEFAULT_PROFILES["tlsserver"])
    assert cert.subject == x509.Name([])
    assert _ekus(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # RFC 5280 §4.2.1.6: with an empty subject the SAN is critical.
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_shortlived_has_no_crl_or_ocsp_pointer(ca: CertificateAuthority) -> None:
    cert = _issue(ca, DEFAULT_PROFILES["shortlived"])
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert _aia_methods(cert) == {AuthorityInformationAccessOID.CA_ISSUERS}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=160)


def test_config_changes_adds_and_withdraws_profiles() -> None:
    profiles = profiles_from_config(
        {
            "classic": {"validity_days": 30},
            "internal": {
                "validity_hours": 24,
                "client_auth": False,
                "common_name": False,
                "revocation_pointers": False,
                "max_names": 5,
                "description": "one-day internal certificate",
            },
            "shortlived": False,
        },
        "classic",
    )
    assert set(profiles) == {"classic", "tlsserver", "internal"}
    assert profiles["classic"].validity == dt.timedelta(days=30)
    assert profiles["classic"].client_auth  # unchanged keys keep the shipped values
    internal = profiles["internal"]
    assert internal.validity == dt.timedelta(hours=24)
    assert not internal.client_auth
    assert not internal.include_common_name
    assert not internal.revocation_pointers
    assert internal.max_names == 5
    assert profile_description(internal) == "one-day internal certificate"


@pytest.mark.parametrize(
    ("tables", "default", "message"),
    [
        ({"x": {"validity_days": 0}}, "classic", "positive"),
        ({"x": {"validity_days": 1, "validity_hours": 2}}, "classic", "not both"),
        ({"x": {"colour": "red"}}, "classic", "unknown keys"),
        ({"x": {"client_auth": "yes"}}, "classic", "true or false"),
        ({"x": {"max_names": 0}}, "classic", "max_names"),
        ({"x": "big"}, "classic", "table"),
        ({}, "nonesuch", "default_profile"),
        ({"classic": False}, "classic", "default_profile"),
    ],
)
def test_bad_profile_config_is_refused(
    tables: dict[str, object], default: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        profiles_from_config(tables, default)


def test_description_falls_back_to_validity() -> None:
    assert profile_description(CertificateProfile(validity=dt.timedelta(days=10))) == (
        "10-day certificate"
    )
    assert profile_description(CertificateProfile(validity=dt.timedelta(hours=36))) == (
        "36-hour certificate"
    )
