"""Certificate profiles with certbot's `--required-profile` and `--preferred-profile`
(draft-ietf-acme-profiles), against the session's running acme-ca."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.interop.conftest import AcmeServer, Client, dns_names, load_pems

pytestmark = pytest.mark.interop


def _certonly(certbot: Client, server: AcmeServer, name: str, *extra: str) -> list[str]:
    return [
        "certonly",
        "--agree-tos",
        "--email",
        "profiles@example.test",
        "--standalone",
        "--preferred-challenges",
        "http-01",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(server.http01_port),
        "-d",
        name,
        *extra,
    ]


def _leaf(certbot: Client, name: str) -> x509.Certificate:
    (leaf,) = load_pems(certbot.state_dir / "live" / name / "cert.pem")
    assert dns_names(leaf) == {name}
    return leaf


def test_certbot_required_profile_tlsserver(certbot: Client, acme_server: AcmeServer) -> None:
    name = "prof-tls.example.test"
    certbot.ok(*_certonly(certbot, acme_server, name, "--required-profile", "tlsserver"))
    leaf = _leaf(certbot, name)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_certbot_required_profile_shortlived(certbot: Client, acme_server: AcmeServer) -> None:
    name = "prof-short.example.test"
    certbot.ok(*_certonly(certbot, acme_server, name, "--required-profile", "shortlived"))
    leaf = _leaf(certbot, name)
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days < 7


def test_certbot_required_unknown_profile_fails(certbot: Client, acme_server: AcmeServer) -> None:
    name = "prof-none.example.test"
    result = certbot.fails(*_certonly(certbot, acme_server, name, "--required-profile", "gold"))
    certbot.expect_in_output(result, "gold", "invalidProfile", "profile")


def test_certbot_preferred_unknown_profile_falls_back(
    certbot: Client, acme_server: AcmeServer
) -> None:
    name = "prof-pref.example.test"
    certbot.ok(*_certonly(certbot, acme_server, name, "--preferred-profile", "gold"))
    # The default (classic) profile: a common name and clientAuth.
    leaf = _leaf(certbot, name)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)


def test_certbot_preferred_known_profile_is_used(certbot: Client, acme_server: AcmeServer) -> None:
    name = "prof-pref2.example.test"
    certbot.ok(*_certonly(certbot, acme_server, name, "--preferred-profile", "tlsserver"))
    assert _leaf(certbot, name).subject == x509.Name([])
