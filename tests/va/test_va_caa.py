"""CAA (RFC 8659, RFC 8657): the value parser, and the checker against real DNS answers
from the challenge test server."""

from __future__ import annotations

import pytest

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.testing import ChallengeTestServer
from acme_ca.va import DnsResolver, VAConfig
from acme_ca.va.caa import CaaChecker, IssueValue, parse_issue_value, relevant_rrset

CA = "ca.example.net"
ACCOUNT = "https://acme.test/acme/acct/abc"


# ---- the issue-value grammar (RFC 8659 §4.2) -------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ca.example.net", IssueValue(issuer="ca.example.net", parameters={})),
        ("  CA.Example.NET  ", IssueValue(issuer="ca.example.net", parameters={})),
        (";", IssueValue(issuer=None, parameters={})),
        ("", IssueValue(issuer=None, parameters={})),
        (
            "ca.example.net; accounturi=https://a/b ; validationmethods=http-01,dns-01",
            IssueValue(
                issuer="ca.example.net",
                parameters={"accounturi": "https://a/b", "validationmethods": "http-01,dns-01"},
            ),
        ),
        ("ca.example.net;", IssueValue(issuer="ca.example.net", parameters={})),
    ],
)
def test_parse_issue_value(value: str, expected: IssueValue) -> None:
    assert parse_issue_value(value) == expected


@pytest.mark.parametrize(
    "value",
    ["ca..example", "-ca.example", "ca.example; novalue", "ca.example; k=v w", "c a.example"],
)
def test_parse_issue_value_refuses_malformed(value: str) -> None:
    assert parse_issue_value(value) is None


# ---- the checker over DNS ---------------------------------------------------------------


@pytest.fixture
async def checker(challtestsrv: ChallengeTestServer) -> CaaChecker:
    resolver = DnsResolver(VAConfig(dns_resolver=("127.0.0.1", challtestsrv.dns_port)))
    return CaaChecker(resolver, (CA, "other-name.example.net"))


def _dns(name: str) -> Identifier:
    return Identifier(type="dns", value=name)


async def _check(
    checker: CaaChecker, name: str, *, wildcard: bool = False, method: str = "http-01"
) -> str | None:
    error = await checker.check_caa(
        _dns(name), account_uri=ACCOUNT, method=method, wildcard=wildcard
    )
    if error is None:
        return None
    assert error.type == ProblemType.CAA
    (sub,) = error.subproblems
    assert sub.identifier == _dns(name)
    return error.detail


async def test_no_caa_anywhere_permits(checker: CaaChecker) -> None:
    assert await _check(checker, "www.no-caa.example.test") is None


async def test_issue_for_this_ca_permits_and_for_another_refuses(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("ok.example.test", [(0, "issue", CA)])
    challtestsrv.add_caa("no.example.test", [(0, "issue", "letsencrypt.org")])
    assert await _check(checker, "ok.example.test") is None
    detail = await _check(checker, "no.example.test")
    assert detail is not None
    assert "no.example.test" in detail


async def test_tree_climbing_finds_the_parent_record(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("climb.example.test", [(0, "issue", "letsencrypt.org")])
    detail = await _check(checker, "a.b.climb.example.test")
    assert detail is not None
    assert "climb.example.test" in detail
    # The closest RRset wins: a permissive child overrides the parent.
    challtestsrv.add_caa("b.climb.example.test", [(0, "issue", CA)])
    assert await _check(checker, "a.b.climb.example.test") is None


async def test_issuewild_governs_wildcards_only(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("wild.example.test", [(0, "issue", CA), (0, "issuewild", ";")])
    assert await _check(checker, "wild.example.test") is None
    assert await _check(checker, "wild.example.test", wildcard=True) is not None
    challtestsrv.add_caa("wild2.example.test", [(0, "issue", ";"), (0, "issuewild", CA)])
    assert await _check(checker, "wild2.example.test") is not None
    assert await _check(checker, "wild2.example.test", wildcard=True) is None


async def test_wildcard_without_issuewild_uses_issue(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("wild3.example.test", [(0, "issue", CA)])
    assert await _check(checker, "wild3.example.test", wildcard=True) is None


async def test_empty_issue_forbids_everyone(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("none.example.test", [(0, "issue", ";")])
    assert await _check(checker, "none.example.test") is not None


async def test_only_iodef_restricts_nobody(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("iodef.example.test", [(0, "iodef", "mailto:sec@example.test")])
    assert await _check(checker, "iodef.example.test") is None


async def test_unknown_critical_tag_refuses_unknown_noncritical_is_ignored(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("crit.example.test", [(0, "issue", CA), (128, "tbs", "x")])
    detail = await _check(checker, "crit.example.test")
    assert detail is not None
    assert "critical" in detail
    challtestsrv.add_caa("noncrit.example.test", [(0, "issue", CA), (0, "tbs", "x")])
    assert await _check(checker, "noncrit.example.test") is None


async def test_accounturi_names_the_one_account(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("acct.example.test", [(0, "issue", f"{CA}; accounturi={ACCOUNT}")])
    assert await _check(checker, "acct.example.test") is None
    challtestsrv.add_caa(
        "acct2.example.test", [(0, "issue", f"{CA}; accounturi=https://acme.test/acme/acct/zz")]
    )
    assert await _check(checker, "acct2.example.test") is not None


async def test_validationmethods_limits_the_challenge_types(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("vm.example.test", [(0, "issue", f"{CA}; validationmethods=dns-01")])
    assert await _check(checker, "vm.example.test", method="dns-01") is None
    assert await _check(checker, "vm.example.test", method="http-01") is not None


async def test_any_of_several_identities_is_accepted(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    challtestsrv.add_caa("alias.example.test", [(0, "issue", "other-name.example.net")])
    assert await _check(checker, "alias.example.test") is None


async def test_lookup_failure_refuses_as_a_dns_problem(
    checker: CaaChecker, challtestsrv: ChallengeTestServer
) -> None:
    # RFC 8659 §3: a failed lookup is no permission; RFC 8555 §6.7: it is a `dns` problem.
    challtestsrv.set_servfail("broken.example.test")
    error = await checker.check_caa(
        _dns("broken.example.test"), account_uri=ACCOUNT, method="http-01", wildcard=False
    )
    assert error is not None
    assert error.type == ProblemType.DNS
    assert [sub.type for sub in error.subproblems] == [ProblemType.DNS]
    assert "lookup" in error.detail


async def test_ip_identifiers_have_no_caa(checker: CaaChecker) -> None:
    ip = Identifier(type="ip", value="192.0.2.1")
    assert (
        await checker.check_caa(ip, account_uri=ACCOUNT, method="http-01", wildcard=False) is None
    )


def test_checker_needs_an_identity() -> None:
    with pytest.raises(ValueError, match="identity"):
        CaaChecker(DnsResolver(VAConfig(dns_resolver=("127.0.0.1", 53))), ())


# ---- the walk up the name (RFC 8659 §3) --------------------------------------------------


class _WalkResolver:
    """CAA answers per name; a name in `failing` raises the resolver's dns problem."""

    def __init__(self, records: dict[str, list[tuple[int, str, str]]], failing: set[str]) -> None:
        self._records = records
        self._failing = failing
        self.asked: list[str] = []

    async def caa(self, name: str) -> list[tuple[int, str, str]]:
        self.asked.append(name)
        if name in self._failing:
            raise AcmeError(type=ProblemType.DNS, detail=f"SERVFAIL looking up CAA for {name}")
        return self._records.get(name, [])


async def test_walk_asks_every_level_at_once_and_takes_the_closest_rrset() -> None:
    resolver = _WalkResolver({"b.example": [(0, "issue", CA)]}, failing={"example"})
    owner, records = await relevant_rrset(resolver, "a.b.example")  # type: ignore[arg-type]
    # A failure above the closest non-empty RRset does not matter.
    assert owner == "b.example"
    assert [r.value for r in records] == [CA]
    assert sorted(resolver.asked) == ["a.b.example", "b.example", "example"]


async def test_walk_fails_on_a_failure_below_the_closest_rrset() -> None:
    resolver = _WalkResolver({"example": [(0, "issue", CA)]}, failing={"b.example"})
    with pytest.raises(AcmeError) as failed:
        await relevant_rrset(resolver, "a.b.example")  # type: ignore[arg-type]
    assert failed.value.type == ProblemType.DNS
