"""Finalize-time CSR checks (RFC 8555 §7.4; Boulder `csr.VerifyCSR`).

A pure function from DER bytes and the order's facts to a parsed CSR or an
`AcmeError` (badCSR / badPublicKey) whose detail names what is wrong. It reads
no storage and signs nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.policy.keys import KeyPolicy, check_public_key, spki_sha256

__all__ = ["check_csr"]

# RFC 5280 upper bound (ub-common-name).
_MAX_CN = 64
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)

_Name = tuple[IdentifierType, str]


def check_csr(
    csr_der: bytes,
    *,
    identifiers: Sequence[Identifier],
    account_spki_sha256: str,
    key_policy: KeyPolicy,
) -> x509.CertificateSigningRequest:
    """Parse `csr_der` and check it against the order; return the CSR or raise AcmeError.

    The names of the CSR (SAN dNSNames lowercased, SAN iPAddresses, and the CN)
    must be exactly the order's `identifiers`.
    """
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise _bad_csr("CSR is not a valid DER-encoded PKCS#10 request") from exc
    _check_signature(csr)
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _bad_csr("CSR public key cannot be parsed or is of an unsupported type") from exc
    try:
        check_public_key(public_key, key_policy)
    except AcmeError as exc:
        raise AcmeError(
            type=ProblemType.BAD_PUBLIC_KEY, detail=f"CSR public key is unacceptable: {exc.detail}"
        ) from exc
    # RFC 8555 §11.1: the certificate key must differ from the account key.
    if spki_sha256(public_key) == account_spki_sha256:
        raise _bad_csr("CSR public key must not be the same as the account key")
    names = _san_names(csr)
    cn = _common_name(csr)
    if cn is not None:
        # The CN is one more name, as Boulder reads a CSR (`NamesFromCSR`): a CSR with
        # only a CN (`openssl req -subj /CN=...`, as acme-tiny's README makes one) asks
        # for that name. RFC 8555 §7.4: the CSR's names are the order's identifiers.
        names.add(cn)
    _check_names_match(names, identifiers)
    return csr


def _check_signature(csr: x509.CertificateSigningRequest) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise _bad_csr(
            f"CSR signature algorithm {csr.signature_algorithm_oid.dotted_string} is not supported"
        ) from exc
    if isinstance(algorithm, _WEAK_HASHES):
        raise _bad_csr(f"CSR signature algorithm uses {algorithm.name.upper()}, which is too weak")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _bad_csr("CSR signature cannot be verified") from exc
    if not valid:
        raise _bad_csr("CSR signature is invalid")


def _san_names(csr: x509.CertificateSigningRequest) -> set[_Name]:
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    except ValueError as exc:  # duplicate or malformed extensions
        raise _bad_csr(f"CSR extensions are malformed: {exc}") from exc
    names: set[_Name] = set()
    for general_name in extension.value:
        if isinstance(general_name, x509.DNSName):
            names.add((IdentifierType.DNS, general_name.value.lower()))
        elif isinstance(general_name, x509.IPAddress) and not isinstance(
            general_name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            names.add((IdentifierType.IP, general_name.value.compressed))
        else:
            raise _bad_csr(
                f"CSR subjectAltName contains a {type(general_name).__name__} "
                "(only dNSName and iPAddress are allowed)"
            )
    return names


def _common_name(csr: x509.CertificateSigningRequest) -> _Name | None:
    try:
        attributes = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise _bad_csr(f"CSR subject is malformed: {exc}") from exc
    if not attributes:
        return None
    if len(attributes) > 1:
        raise _bad_csr("CSR subject has more than one common name")
    value = attributes[0].value
    if not isinstance(value, str):
        raise _bad_csr("CSR common name is not a string")
    if len(value) > _MAX_CN:
        raise _bad_csr(f"CSR common name is longer than {_MAX_CN} characters")
    try:
        return IdentifierType.IP, ipaddress.ip_address(value).compressed
    except ValueError:
        return IdentifierType.DNS, value.lower()


def _check_names_match(csr_names: set[_Name], identifiers: Sequence[Identifier]) -> None:
    wanted = {_normalize(ident) for ident in identifiers}
    if not csr_names:
        raise _bad_csr("CSR contains no names (no subjectAltName and no common name)")
    missing = wanted - csr_names
    extra = csr_names - wanted
    problems = []
    if missing:
        problems.append(f"missing the order's identifiers {_render(missing)}")
    if extra:
        problems.append(f"has names not in the order {_render(extra)}")
    if problems:
        raise _bad_csr("CSR names do not match the order: CSR is " + "; ".join(problems))


def _normalize(ident: Identifier) -> _Name:
    if ident.type == IdentifierType.IP:
        return IdentifierType.IP, ipaddress.ip_address(ident.value).compressed
    if ident.type == IdentifierType.DNS:
        return IdentifierType.DNS, ident.value.lower()
    raise AcmeError(
        type=ProblemType.UNSUPPORTED_IDENTIFIER,
        detail=f"identifier type {ident.type!r} cannot be certified",
    )


def _render(names: Iterable[_Name]) -> str:
    return ", ".join(f"{kind}:{value}" for kind, value in sorted(names))


def _bad_csr(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.BAD_CSR, detail=detail)
