"""Which identifiers the CA may issue for (Boulder's `policy` package). No I/O.

Names for a private PKI (`.internal`, `.test`, `.lan`, ...) are normal here; the
Public Suffix List (shipped in the `publicsuffixlist` package, read at import, no
network) only refuses names that are themselves public suffixes.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import idna
from publicsuffixlist import PublicSuffixList

from acme_ca.errors import AcmeError, Identifier, ProblemType, SubProblem
from acme_ca.model import IdentifierType

__all__ = ["IdentifierPolicy", "check_identifiers", "normalize_identifiers"]

_PSL = PublicSuffixList(only_icann=True)
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_NAME_LENGTH = 253  # RFC 1035 §2.3.4, without the trailing dot


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifierPolicy:
    allow_ip: bool = True
    ip_ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    allow_patterns: tuple[str, ...] = ()
    """When non-empty, a dns name must match one (fnmatch on the whole name)."""
    deny_patterns: tuple[str, ...] = field(default_factory=tuple)
    """A dns name matching one is refused, whatever the allow list says."""


def _reject(identifier: Identifier, detail: str) -> SubProblem:
    return SubProblem(type=ProblemType.REJECTED_IDENTIFIER, detail=detail, identifier=identifier)


def _check_dns(value: str, policy: IdentifierPolicy) -> str | None:
    """The reason `value` (lowercase, maybe `*.`-prefixed) is refused, or None."""
    if not value.isascii():
        # IDNA 2008: clients send A-labels; U-labels are refused, not converted.
        return "Name contains non-ASCII characters; use its IDNA A-label (xn--) form"
    if value.endswith("."):
        return "Name must not end with a dot"
    if len(value) > MAX_NAME_LENGTH:
        return f"Name is longer than {MAX_NAME_LENGTH} characters"
    base = value
    if value.startswith("*."):
        base = value[2:]
    if "*" in base:
        # RFC 8555 §7.1.3: a wildcard is only the whole leftmost label.
        return "Wildcard is allowed only as the whole leftmost label"
    try:
        ipaddress.ip_address(base)
    except ValueError:
        pass
    else:
        # RFC 8738 §3: IP addresses are `ip` identifiers, never `dns`.
        return "An IP address must be requested as an 'ip' identifier"
    labels = base.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"Label {label!r} is not a valid DNS label"
        if label.startswith("xn--") or label[2:4] == "--":
            if not label.startswith("xn--"):
                return f"Label {label!r} has hyphens in the third and fourth positions"
            try:
                idna.decode(label)
            except idna.IDNAError:
                return f"Label {label!r} is not a valid IDNA 2008 A-label"
    if labels[-1].isdigit():
        return "The top-level label must not be all-numeric"
    if len(labels) < 2 or _PSL.is_public(base):
        return f"{base!r} is a public suffix; certificates are issued only for names below one"
    denied = policy.deny_patterns
    if any(fnmatch.fnmatchcase(value, p) or fnmatch.fnmatchcase(base, p) for p in denied):
        return "Name is forbidden by this CA's policy"
    if policy.allow_patterns and not any(
        fnmatch.fnmatchcase(value, p) for p in policy.allow_patterns
    ):
        return "Name is not allowed by this CA's policy"
    return None


def _check_ip(value: str, policy: IdentifierPolicy) -> tuple[str, str | None]:
    """(canonical form, reason refused or None)."""
    if not policy.allow_ip:
        return value, "IP identifiers are not enabled on this CA"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value, "Value is not a valid IPv4 or IPv6 address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # A zone index (`fe80::1%eth0`) names a local interface, not an address.
        return value, "IPv6 address must not carry a zone index"
    if not any(address in net for net in policy.ip_ranges if net.version == address.version):
        return value, "IP address is outside the ranges this CA issues for"
    # RFC 8738 §3: IPv6 in RFC 5952 canonical text form.
    return address.compressed, None


def normalize_identifiers(
    identifiers: Sequence[Identifier], policy: IdentifierPolicy
) -> tuple[Identifier, ...]:
    """Lowercase, canonicalize, deduplicate and check; raises one problem for all refusals."""
    result: list[Identifier] = []
    problems: list[SubProblem] = []
    seen: set[tuple[str, str]] = set()
    for identifier in identifiers:
        if identifier.type == IdentifierType.DNS:
            value = identifier.value.lower()
            reason = _check_dns(value, policy)
        elif identifier.type == IdentifierType.IP:
            value, reason = _check_ip(identifier.value, policy)
        else:
            problems.append(
                SubProblem(
                    type=ProblemType.UNSUPPORTED_IDENTIFIER,
                    detail=f"Identifier type {identifier.type!r} is not supported",
                    identifier=identifier,
                )
            )
            continue
        normalized = Identifier(type=identifier.type, value=value)
        if reason is not None:
            problems.append(_reject(normalized, reason))
            continue
        if (normalized.type, normalized.value) not in seen:
            seen.add((normalized.type, normalized.value))
            result.append(normalized)
    if problems:
        raise _combined(problems)
    return tuple(result)


def _combined(problems: Sequence[SubProblem]) -> AcmeError:
    # RFC 8555 §6.7.1: one problem with a subproblem per failing identifier.
    types = {p.type for p in problems}
    top = types.pop() if len(types) == 1 else ProblemType.COMPOUND
    if len(problems) == 1:
        only = problems[0]
        value = only.identifier.value if only.identifier else "?"
        detail = f"Cannot issue for {value!r}: {only.detail}"
    else:
        detail = f"Cannot issue for {len(problems)} identifiers (see subproblems)"
    return AcmeError(type=top, detail=detail, subproblems=tuple(problems))


def check_identifiers(identifiers: Iterable[Identifier], policy: IdentifierPolicy) -> None:
    normalize_identifiers(tuple(identifiers), policy)
