"""CAA: may this CA issue for an identifier (RFC 8659, RFC 8657)?

Pure like the rest of the VA: DNS through the injected `Resolver`, no state; the
answer is returned (None: permitted), never raised. IP identifiers have no CAA
(RFC 8738 defines none) and are always permitted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from acme_ca.errors import AcmeError, Identifier, ProblemType, SubProblem
from acme_ca.model import IdentifierType
from acme_ca.va.resolver import Resolver

__all__ = ["CaaChecker", "CaaRecord", "IssueValue", "parse_issue_value", "relevant_rrset"]

# RFC 8659 §4.1: the issuer-critical flag.
CRITICAL = 128
# Tags defined by RFC 8659 §4 and its successors (RFC 9495, RFC 9736, CA/B BR 3.2.2.8.1).
_KNOWN_TAGS = frozenset(
    {"issue", "issuewild", "iodef", "issuemail", "issuevmc", "contactemail", "contactphone"}
)
# RFC 8659 §4.2: issuer-domain-name = label *("." label); parameters key=value.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_KEY = re.compile(r"^[A-Za-z0-9]+$")
_VALUE = re.compile(r"^[\x21-\x3a\x3c-\x7e]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class CaaRecord:
    flags: int
    tag: str
    value: str

    @property
    def critical(self) -> bool:
        return bool(self.flags & CRITICAL)


@dataclass(frozen=True, slots=True, kw_only=True)
class IssueValue:
    """A parsed `issue`/`issuewild` value; `issuer` is None for `;` (nobody may issue)."""

    issuer: str | None
    parameters: dict[str, str]


def parse_issue_value(value: str) -> IssueValue | None:
    """RFC 8659 §4.2 grammar, whitespace tolerated; None when the value is malformed."""
    issuer_part, *params = value.split(";")
    issuer = issuer_part.strip()
    if issuer and not _DOMAIN.fullmatch(issuer):
        return None
    parameters: dict[str, str] = {}
    for raw in params:
        param = raw.strip()
        if not param:
            continue  # a trailing ";" is allowed
        key, sep, val = param.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(val):
            return None
        parameters[key.lower()] = val
    return IssueValue(issuer=issuer.lower().rstrip(".") or None, parameters=parameters)


async def relevant_rrset(resolver: Resolver, name: str) -> tuple[str, list[CaaRecord]]:
    """RFC 8659 §3: the first non-empty CAA RRset climbing from `name` to the TLD.

    The resolver follows CNAMEs; a lookup failure is raised as `AcmeError(dns)`.
    """
    labels = name.rstrip(".").lower().split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels))]
    # Every level at once, as Boulder does: the walk costs one round trip, not one per
    # label. Read in order from the name up: a failure below the closest non-empty
    # RRset fails the check; one above it does not matter.
    answers = await asyncio.gather(*(resolver.caa(c) for c in candidates), return_exceptions=True)
    for candidate, records in zip(candidates, answers, strict=True):
        if isinstance(records, BaseException):
            raise records
        if records:
            return candidate, [CaaRecord(flags=f, tag=t.lower(), value=v) for f, t, v in records]
    return "", []


class CaaChecker:
    """Checks CAA for the CA's `identities` (issuer domain names, RFC 8659 §4.2)."""

    def __init__(self, resolver: Resolver, identities: Sequence[str]) -> None:
        if not identities:
            raise ValueError("a CA needs at least one CAA identity")
        self._resolver = resolver
        self._identities = frozenset(i.lower().rstrip(".") for i in identities)

    @property
    def identities(self) -> frozenset[str]:
        return self._identities

    async def check_caa(
        self, identifier: Identifier, *, account_uri: str, method: str, wildcard: bool
    ) -> AcmeError | None:
        """None when CAA permits issuance, else a `caa` problem naming the identifier
        (a `dns` problem when the lookup itself failed, as Boulder reports it).

        `identifier` is the authorization's (no "*."); `method` is the challenge type
        that validated it (RFC 8657 §4 validationmethods).
        """
        if identifier.type != IdentifierType.DNS:
            return None
        shown = f"*.{identifier.value}" if wildcard else identifier.value
        try:
            owner, records = await relevant_rrset(self._resolver, identifier.value)
        except AcmeError as exc:
            # RFC 8659 §3: a failed lookup must not be read as "no CAA"; it is a DNS
            # problem (RFC 8555 §6.7 `dns`), not a refusal by a CAA record.
            return _problem(
                identifier, f"CAA lookup for {shown} failed: {exc.detail}", ProblemType.DNS
            )
        reason = self._refusal(records, account_uri=account_uri, method=method, wildcard=wildcard)
        if reason is None:
            return None
        return _problem(identifier, f"CAA record for {owner} prevents issuance: {reason}")

    def _refusal(
        self, records: Sequence[CaaRecord], *, account_uri: str, method: str, wildcard: bool
    ) -> str | None:
        for record in records:
            if record.critical and record.tag not in _KNOWN_TAGS:
                # RFC 8659 §4.1: an unknown tag marked critical forbids issuance.
                return f"unknown critical tag {record.tag!r}"
        issue = [r for r in records if r.tag == "issue"]
        issuewild = [r for r in records if r.tag == "issuewild"]
        # RFC 8659 §4.3: issuewild, when present, alone governs wildcard names.
        relevant = issuewild if wildcard and issuewild else issue
        if not relevant:
            # RFC 8659 §4.2: no issue property at all (e.g. only iodef) restricts nobody.
            return None
        for record in relevant:
            parsed = parse_issue_value(record.value)
            if parsed is None or parsed.issuer not in self._identities:
                continue
            # RFC 8657 §3: accounturi, when given, names the one account allowed.
            if "accounturi" in parsed.parameters and parsed.parameters["accounturi"] != account_uri:
                continue
            # RFC 8657 §4: validationmethods lists the challenge types allowed.
            methods = parsed.parameters.get("validationmethods")
            if methods is not None and method not in methods.split(","):
                continue
            return None
        tag = relevant[0].tag
        return f"no {tag!r} record authorizes this CA ({', '.join(sorted(self._identities))})"


def _problem(identifier: Identifier, detail: str, kind: ProblemType = ProblemType.CAA) -> AcmeError:
    return AcmeError(
        type=kind,
        detail=detail,
        subproblems=(SubProblem(type=kind, detail=detail, identifier=identifier),),
    )
