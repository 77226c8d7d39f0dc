"""Identifier policy: one test per rule, each with its accepted and refused case."""

from __future__ import annotations

import ipaddress

import pytest

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.policy.identifiers import IdentifierPolicy, check_identifiers, normalize_identifiers

DEFAULT = IdentifierPolicy()


def dns(value: str) -> Identifier:
    return Identifier(type="dns", value=value)


def ip(value: str) -> Identifier:
    return Identifier(type="ip", value=value)


def accepted(*identifiers: Identifier, policy: IdentifierPolicy = DEFAULT) -> list[str]:
    return [i.value for i in normalize_identifiers(identifiers, policy)]


def refused(identifier: Identifier, policy: IdentifierPolicy = DEFAULT) -> AcmeError:
    with pytest.raises(AcmeError) as info:
        normalize_identifiers((identifier,), policy)
    error = info.value
    assert error.type == ProblemType.REJECTED_IDENTIFIER
    assert len(error.subproblems) == 1
    sub = error.subproblems[0]
    assert sub.type == ProblemType.REJECTED_IDENTIFIER
    assert sub.identifier is not None
    assert sub.identifier.type == identifier.type
    return error


def test_dns_names_are_lowercased() -> None:
    assert accepted(dns("WWW.Example.TEST")) == ["www.example.test"]


def test_lowercased_duplicates_collapse_into_one() -> None:
    assert accepted(dns("a.example.test"), dns("A.EXAMPLE.test")) == ["a.example.test"]


def test_refusal_names_the_lowercased_identifier() -> None:
    error = refused(dns("COM"))
    assert error.subproblems[0].identifier == dns("com")


@pytest.mark.parametrize("name", ["xn--bcher-kva.example.test", "xn--nxasmq6b.example.test"])
def test_valid_a_labels_are_accepted(name: str) -> None:
    assert accepted(dns(name)) == [name]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("xn--a.example.test", "IDNA 2008"),  # punycode of U+0080
        ("xn--n3h.example.test", "IDNA 2008"),  # snowman: valid IDNA 2003, not 2008
        ("xn--ls8h.example.test", "IDNA 2008"),  # emoji
        ("xn--bcher-kva-.example.test", "not a valid DNS label"),  # trailing hyphen
    ],
)
def test_invalid_a_labels_are_refused(name: str, reason: str) -> None:
    assert reason in refused(dns(name)).subproblems[0].detail


def test_hyphens_in_third_and_fourth_position_need_xn_prefix() -> None:
    assert "hyphens" in refused(dns("ab--cd.example.test")).subproblems[0].detail
    assert accepted(dns("ab-cd.example.test")) == ["ab-cd.example.test"]


@pytest.mark.parametrize("name", ["bücher.example.test", "пример.test", "a.example.tést"])
def test_u_labels_are_refused(name: str) -> None:
    assert "A-label" in refused(dns(name)).subproblems[0].detail


def test_label_of_63_is_accepted_and_64_refused() -> None:
    assert accepted(dns("a" * 63 + ".example.test")) == ["a" * 63 + ".example.test"]
    refused(dns("a" * 64 + ".example.test"))


def _name_of_length(length: int) -> str:
    # Labels of 49 characters plus dots, topped up to exactly `length`, under ".test".
    body = length - len(".test")
    labels: list[str] = []
    while body > 0:
        size = min(49, body if not labels else body - 1)
        labels.append("a" * size)
        body -= size + (1 if len(labels) > 1 else 0)
    name = ".".join(labels) + ".test"
    assert len(name) == length, len(name)
    return name


def test_name_of_253_is_accepted_and_254_refused() -> None:
    ok = _name_of_length(253)
    assert accepted(dns(ok)) == [ok]
    assert "longer than 253" in refused(dns(_name_of_length(254))).subproblems[0].detail


def test_trailing_dot_is_refused() -> None:
    assert "dot" in refused(dns("www.example.test.")).subproblems[0].detail
    assert accepted(dns("www.example.test")) == ["www.example.test"]


@pytest.mark.parametrize("value", ["127.0.0.1", "10.0.0.1", "::1", "2001:db8::1"])
def test_ip_literal_as_dns_is_refused(value: str) -> None:
    assert "'ip' identifier" in refused(dns(value)).subproblems[0].detail


def test_all_numeric_top_level_label_is_refused() -> None:
    refused(dns("host.123"))
    assert accepted(dns("host.a123")) == ["host.a123"]


@pytest.mark.parametrize(
    "name", ["a..example.test", "-a.example.test", "a-.example.test", "a_b.example.test", ""]
)
def test_malformed_labels_are_refused(name: str) -> None:
    refused(dns(name))


@pytest.mark.parametrize("name", ["com", "co.uk", "test", "*.com", "*.co.uk", "github.io"])
def test_public_suffixes_are_refused(name: str) -> None:
    # github.io is a private-section entry: only ICANN suffixes are refused.
    if name == "github.io":
        assert accepted(dns(name)) == [name]
        return
    assert "public suffix" in refused(dns(name)).subproblems[0].detail


@pytest.mark.parametrize(
    "name", ["foo.test", "a.internal", "example.co.uk", "host.lan", "*.foo.test"]
)
def test_names_below_a_suffix_and_private_names_are_accepted(name: str) -> None:
    assert accepted(dns(name)) == [name]


@pytest.mark.parametrize(
    "name", ["*.example.test", "*.a.b.example.test"], ids=["leftmost", "leftmost-deep"]
)
def test_wildcard_as_whole_leftmost_label_is_accepted(name: str) -> None:
    assert accepted(dns(name)) == [name]


@pytest.mark.parametrize(
    "name", ["a*.example.test", "*a.example.test", "www.*.example.test", "*.*.example.test", "*"]
)
def test_wildcard_elsewhere_is_refused(name: str) -> None:
    refused(dns(name))


def test_deny_pattern_refuses_matching_names_and_wildcards() -> None:
    policy = IdentifierPolicy(deny_patterns=("*.corp.example.test",))
    assert "forbidden" in refused(dns("db.corp.example.test"), policy).subproblems[0].detail
    # The pattern matches the base of a wildcard too.
    refused(dns("*.db.corp.example.test"), policy)
    assert accepted(dns("www.example.test"), policy=policy) == ["www.example.test"]


def test_allow_pattern_admits_only_matching_names() -> None:
    policy = IdentifierPolicy(allow_patterns=("*.example.test", "example.test"))
    assert accepted(dns("example.test"), dns("a.example.test"), policy=policy) == [
        "example.test",
        "a.example.test",
    ]
    assert "not allowed" in refused(dns("a.other.test"), policy).subproblems[0].detail


def test_deny_wins_over_allow() -> None:
    policy = IdentifierPolicy(
        allow_patterns=("*.example.test",), deny_patterns=("secret.example.test",)
    )
    refused(dns("secret.example.test"), policy)
    assert accepted(dns("public.example.test"), policy=policy) == ["public.example.test"]


def test_several_refusals_come_back_as_one_problem() -> None:
    with pytest.raises(AcmeError) as info:
        normalize_identifiers(
            (dns("com"), dns("ok.example.test"), dns("bad..test"), dns("trailing.test.")),
            DEFAULT,
        )
    error = info.value
    assert error.type == ProblemType.REJECTED_IDENTIFIER
    assert [s.identifier for s in error.subproblems] == [
        dns("com"),
        dns("bad..test"),
        dns("trailing.test."),
    ]
    assert all(s.type == ProblemType.REJECTED_IDENTIFIER for s in error.subproblems)
    assert "3 identifiers" in error.detail


def test_mixed_refusal_types_are_compound() -> None:
    with pytest.raises(AcmeError) as info:
        check_identifiers([dns("com"), Identifier(type="email", value="a@b.test")], DEFAULT)
    assert info.value.type == ProblemType.COMPOUND
    assert {s.type for s in info.value.subproblems} == {
        ProblemType.REJECTED_IDENTIFIER,
        ProblemType.UNSUPPORTED_IDENTIFIER,
    }


@pytest.mark.parametrize("kind", ["email", "DNS", "", "permanent-identifier"])
def test_unsupported_identifier_type(kind: str) -> None:
    with pytest.raises(AcmeError) as info:
        normalize_identifiers((Identifier(type=kind, value="x.example.test"),), DEFAULT)
    assert info.value.type == ProblemType.UNSUPPORTED_IDENTIFIER
    assert info.value.subproblems[0].identifier == Identifier(type=kind, value="x.example.test")


@pytest.mark.parametrize(
    ("value", "canonical"),
    [("192.0.2.7", "192.0.2.7"), ("2001:DB8:0:0::0001", "2001:db8::1"), ("::1", "::1")],
)
def test_ip_identifiers_are_canonicalized(value: str, canonical: str) -> None:
    assert accepted(ip(value)) == [canonical]


@pytest.mark.parametrize(
    "value", ["example.test", "300.1.1.1", "01.2.3.4", "1.2.3", "fe80::1%eth0", "1.2.3.4/32"]
)
def test_invalid_ip_identifiers_are_refused(value: str) -> None:
    refused(ip(value))


def test_ip_identifiers_can_be_disabled() -> None:
    policy = IdentifierPolicy(allow_ip=False)
    assert "not enabled" in refused(ip("192.0.2.1"), policy).subproblems[0].detail


def test_ip_identifiers_are_limited_to_configured_ranges() -> None:
    policy = IdentifierPolicy(ip_ranges=(ipaddress.ip_network("10.0.0.0/8"),))
    assert accepted(ip("10.1.2.3"), policy=policy) == ["10.1.2.3"]
    refused(ip("192.0.2.1"), policy)
    refused(ip("::1"), policy)  # no IPv6 range configured
