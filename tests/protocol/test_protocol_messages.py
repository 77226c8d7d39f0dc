"""Typed request payloads: one test per rule of each parse function (RFC 8555 §7)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.protocol.jws import b64url_encode
from acme_ca.protocol.messages import (
    MAX_CONTACTS,
    MAX_IDENTIFIERS,
    format_rfc3339,
    parse_account_update,
    parse_authz_update,
    parse_finalize,
    parse_identifier,
    parse_new_account,
    parse_new_order,
    parse_revoke,
    parse_rfc3339,
    validate_contacts,
)

ORDER = {"identifiers": [{"type": "dns", "value": "a.example.test"}]}


def refused(kind: ProblemType, fn: Any, *args: Any, **kwargs: Any) -> AcmeError:
    with pytest.raises(AcmeError) as info:
        fn(*args, **kwargs)
    assert info.value.type == kind, info.value
    return info.value


# --- contacts (RFC 8555 §7.3) -----------------------------------------------


@pytest.mark.parametrize(
    "contacts",
    [[], ["mailto:admin@example.test"], ["MAILTO:a.b+c@sub.example.test", "mailto:x@y.test"]],
)
def test_valid_contacts(contacts: list[str]) -> None:
    assert validate_contacts(contacts) == tuple(contacts)


@pytest.mark.parametrize("contacts", ["mailto:a@example.test", [1], [None], {"a": 1}, None])
def test_contacts_must_be_an_array_of_strings(contacts: Any) -> None:
    refused(ProblemType.MALFORMED, validate_contacts, contacts)


@pytest.mark.parametrize("contact", ["tel:+15551234", "https://example.test", "admin@example.test"])
def test_non_mailto_contact_is_unsupported(contact: str) -> None:
    refused(ProblemType.UNSUPPORTED_CONTACT, validate_contacts, [contact])


@pytest.mark.parametrize(
    "contact",
    [
        "mailto:",
        "mailto:no-at-sign",
        "mailto:a@example.test?subject=x",
        "mailto:a@example.test,b@example.test",
        "mailto:a@localhost",
        "mailto:a@[127.0.0.1]",
        'mailto:"quoted"@example.test',
        "mailto:" + "a" * 65 + "@example.test",
        "mailto:a@example.test\n",
    ],
)
def test_malformed_email_is_invalid_contact(contact: str) -> None:
    refused(ProblemType.INVALID_CONTACT, validate_contacts, [contact])


def test_too_many_contacts() -> None:
    ok = [f"mailto:a{i}@example.test" for i in range(MAX_CONTACTS)]
    assert len(validate_contacts(ok)) == MAX_CONTACTS
    refused(ProblemType.INVALID_CONTACT, validate_contacts, [*ok, "mailto:z@example.test"])


# --- newAccount and account updates (RFC 8555 §7.3, §7.3.2, §7.3.6) -----------


def test_new_account_defaults() -> None:
    req = parse_new_account({})
    assert req.contact is None
    assert req.terms_of_service_agreed is False
    assert req.only_return_existing is False
    assert req.external_account_binding is None


def test_new_account_fields() -> None:
    req = parse_new_account(
        {
            "contact": ["mailto:a@example.test"],
            "termsOfServiceAgreed": True,
            "onlyReturnExisting": True,
            "externalAccountBinding": {"protected": "x"},
            "unknownExtension": 1,  # RFC 8555 §7.1: unknown members are ignored
        }
    )
    assert req.contact == ("mailto:a@example.test",)
    assert req.terms_of_service_agreed is True
    assert req.only_return_existing is True
    assert req.external_account_binding == {"protected": "x"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("termsOfServiceAgreed", "yes"),
        ("termsOfServiceAgreed", 1),
        ("onlyReturnExisting", "true"),
        ("externalAccountBinding", "x"),
        ("externalAccountBinding", []),
    ],
)
def test_new_account_wrong_types_are_malformed(field: str, value: Any) -> None:
    refused(ProblemType.MALFORMED, parse_new_account, {field: value})


def test_account_update_deactivate_and_contact() -> None:
    update = parse_account_update({"status": "deactivated", "contact": []})
    assert update.deactivate is True
    assert update.contact == ()
    assert parse_account_update({}).deactivate is False


@pytest.mark.parametrize("status", ["valid", "revoked", "DEACTIVATED", "pending"])
def test_account_status_other_than_deactivated_is_ignored(status: str) -> None:
    # RFC 8555 §7.3.2: the server MUST ignore updates to "status" (but §7.3.6's).
    update = parse_account_update({"status": status, "contact": ["mailto:a@example.test"]})
    assert update.deactivate is False
    assert update.contact == ("mailto:a@example.test",)


@pytest.mark.parametrize("status", [1, True, ["deactivated"], {}])
def test_account_status_of_wrong_type_is_malformed(status: Any) -> None:
    refused(ProblemType.MALFORMED, parse_account_update, {"status": status})


def test_authz_update_only_deactivates() -> None:
    parse_authz_update({"status": "deactivated"})
    for payload in ({}, {"status": "valid"}, {"status": None}, {"status": ["deactivated"]}):
        refused(ProblemType.MALFORMED, parse_authz_update, payload)


# --- identifiers and newOrder (RFC 8555 §7.4) --------------------------------


def test_parse_identifier() -> None:
    assert parse_identifier({"type": "dns", "value": "x.test", "extra": 1}) == Identifier(
        type="dns", value="x.test"
    )


@pytest.mark.parametrize(
    "value",
    ["dns:x.test", ["dns", "x.test"], {"type": "dns"}, {"value": "x"}, {"type": 1, "value": "x"}],
)
def test_malformed_identifier(value: Any) -> None:
    refused(ProblemType.MALFORMED, parse_identifier, value)


def test_new_order_minimal() -> None:
    req = parse_new_order(ORDER)
    assert req.identifiers == (Identifier(type="dns", value="a.example.test"),)
    assert req.not_before is None
    assert req.not_after is None
    assert req.profile is None
    assert req.replaces is None


@pytest.mark.parametrize("identifiers", [None, [], {}, "a.example.test", [None]])
def test_new_order_needs_a_non_empty_identifier_array(identifiers: Any) -> None:
    refused(ProblemType.MALFORMED, parse_new_order, {"identifiers": identifiers})


def test_new_order_identifier_count_is_bounded() -> None:
    many = [{"type": "dns", "value": f"a{i}.example.test"} for i in range(MAX_IDENTIFIERS)]
    assert len(parse_new_order({"identifiers": many}).identifiers) == MAX_IDENTIFIERS
    extra = [*many, {"type": "dns", "value": "z.example.test"}]
    refused(ProblemType.REJECTED_IDENTIFIER, parse_new_order, {"identifiers": extra})


def test_new_order_validity_window_is_parsed() -> None:
    req = parse_new_order(
        {**ORDER, "notBefore": "2030-01-01T00:00:00Z", "notAfter": "2030-01-02T01:00:00+01:00"}
    )
    assert req.not_before == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert req.not_after == dt.datetime(2030, 1, 2, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("field", "value"),
    [("profile", 1), ("profile", ["x"]), ("notBefore", 0), ("notAfter", "tomorrow")],
)
def test_new_order_wrong_types_are_malformed(field: str, value: Any) -> None:
    refused(ProblemType.MALFORMED, parse_new_order, {**ORDER, field: value})


def test_new_order_replaces_is_an_ari_certificate_id() -> None:
    ok = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert parse_new_order({**ORDER, "replaces": ok}).replaces == ok
    for bad in ("", "no-dot", "a.b.c", "a" * 200 + "." + "b" * 200, "a b.c", 5):
        refused(ProblemType.MALFORMED, parse_new_order, {**ORDER, "replaces": bad})


# --- RFC 3339 date-times -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2030-01-01t00:00:00z", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2030-01-01T02:30:00+02:30", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2029-12-31T19:00:00-05:00", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2030-01-01T00:00:00.5Z", dt.datetime(2030, 1, 1, 0, 0, 0, 500_000, tzinfo=dt.UTC)),
        ("2030-01-01T00:00:00.123456789Z", dt.datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)),
    ],
)
def test_rfc3339_is_parsed_to_utc(text: str, expected: dt.datetime) -> None:
    parsed = parse_rfc3339(text, name="t")
    assert parsed == expected
    assert parsed.tzinfo == dt.UTC


@pytest.mark.parametrize(
    "text",
    [
        "2030-01-01T00:00:00",  # no offset
        "2030-01-01",  # date only
        "2030-01-01 00:00:00Z",  # space separator
        "20300101T000000Z",  # ISO 8601 basic format
        "2030-W01-1T00:00:00Z",  # ISO week date
        "2030-001T00:00:00Z",  # ordinal date
        "2030-01-01T00:00Z",  # no seconds
        "2030-01-01T00:00:00+0000",  # offset without colon
        "2030-01-01T00:00:00+24:00",
        "2030-13-01T00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-12-31T23:59:60Z",  # leap second: datetime cannot hold it
        "9999-12-31T23:59:59-23:59",  # past year 9999 in UTC
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "\uff12\uff10\uff13\uff10-01-01T00:00:00Z",  # fullwidth digits
        "2030-01-01T00:00:00Z ",
        "",
    ],
)
def test_non_rfc3339_is_malformed(text: str) -> None:
    refused(ProblemType.MALFORMED, parse_rfc3339, text, name="notBefore")


@pytest.mark.parametrize("value", [None, 1893456000, ["2030-01-01T00:00:00Z"]])
def test_rfc3339_must_be_a_string(value: Any) -> None:
    refused(ProblemType.MALFORMED, parse_rfc3339, value, name="notAfter")


def test_format_rfc3339() -> None:
    when = dt.datetime(2030, 1, 1, 5, 6, 7, 890, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert format_rfc3339(when) == "2030-01-01T03:06:07Z"


@given(st.datetimes(timezones=st.just(dt.UTC)).map(lambda d: d.replace(microsecond=0)))
def test_format_then_parse_round_trips(when: dt.datetime) -> None:
    assert parse_rfc3339(format_rfc3339(when), name="t") == when


@given(st.text(max_size=40) | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\Z"))
def test_parse_rfc3339_raises_only_malformed(text: str) -> None:
    try:
        parsed = parse_rfc3339(text, name="t")
    except AcmeError as exc:
        error = exc
    else:
        assert parsed.tzinfo == dt.UTC
        return
    assert error.type == ProblemType.MALFORMED


# --- finalize and revokeCert (RFC 8555 §7.4, §7.6) ---------------------------


def test_finalize_decodes_the_csr() -> None:
    assert parse_finalize({"csr": b64url_encode(b"\x30\x00")}).csr_der == b"\x30\x00"


@pytest.mark.parametrize("payload", [{}, {"csr": ""}, {"csr": 1}, {"csr": None}])
def test_finalize_without_csr_is_malformed(payload: dict[str, Any]) -> None:
    refused(ProblemType.MALFORMED, parse_finalize, payload)


@pytest.mark.parametrize("csr", ["MIIB+A==", "MIIB/", "a b", "A"])
def test_finalize_with_non_b64url_csr_is_bad_csr(csr: str) -> None:
    refused(ProblemType.BAD_CSR, parse_finalize, {"csr": csr})


def test_revoke_fields() -> None:
    req = parse_revoke({"certificate": b64url_encode(b"\x30\x00"), "reason": 4})
    assert req.certificate_der == b"\x30\x00"
    assert req.reason == 4
    assert parse_revoke({"certificate": "MAA"}).reason is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"certificate": ""},
        {"certificate": 5},
        {"certificate": "MA=="},
        {"certificate": "MAA", "reason": True},  # bool is not an int here
        {"certificate": "MAA", "reason": "1"},
        {"certificate": "MAA", "reason": 1.0},
    ],
)
def test_malformed_revocation(payload: dict[str, Any]) -> None:
    refused(ProblemType.MALFORMED, parse_revoke, payload)
