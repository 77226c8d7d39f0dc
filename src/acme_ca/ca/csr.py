"""Finalize-time CSR checks (RFC 8555 §7.4; Boulder `csr.VerifyCSR`).

A pure function from DER bytes and the order's facts to a parsed CSR or an
`AcmeError` (badCSR / badPublicKey) whose detail names what is wrong. It reads
no storage and signs nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.policy.keys import KeyPolicy, check_public_key, spki_sha256

__all__ = ["check_csr", "load_csr", "requests_must_staple"]

# RFC 5280 upper bound (ub-common-name).
_MAX_CN = 64
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)
# RFC 2986 §4.1: the version is 0. The Ruby gem acme-client before 2.0.19
# (Acme::Client::CertificateRequest; 2.0.9 in Debian 12) writes 2, a certificate's v3;
# Boulder (Go's x509) ignores the field, and RFC 8555 §7.4 leaves a CSR's acceptability to
# the CA. Such a CSR is read with its version octet set to 0, its signature checked over the
# bytes as signed.
_TOLERATED_VERSIONS = frozenset({1, 2})

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
        csr, signed = _load(csr_der)
    except x509.InvalidVersion as exc:
        raise _bad_csr(f"CSR version {exc.parsed_version} is not 0 (v1, RFC 2986 §4.1)") from exc
    except ValueError as exc:
        raise _bad_csr("CSR is not a valid DER-encoded PKCS#10 request") from exc
    _check_signature(csr, signed)
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


def requests_must_staple(csr: x509.CertificateSigningRequest) -> bool:
    """The CSR asks for OCSP Must-Staple: a TLS Feature extension with status_request in
    its extension request (what certbot --must-staple and acme.sh --ocsp-must-staple send)."""
    try:
        feature = csr.extensions.get_extension_for_class(x509.TLSFeature)
    except (x509.ExtensionNotFound, ValueError):
        return False
    return x509.TLSFeatureType.status_request in feature.value


def load_csr(csr_der: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR as `check_csr` does (a tolerated version is read as 0), checking nothing:
    for a CSR that passed `check_csr` before (an issuance job taken up again)."""
    return _load(csr_der)[0]


def _load(csr_der: bytes) -> tuple[x509.CertificateSigningRequest, bytes | None]:
    """The parsed CSR, and the signed CertificationRequestInfo bytes if they are not the
    parsed CSR's own (a tolerated version). Raises ValueError or x509.InvalidVersion."""
    try:
        return x509.load_der_x509_csr(csr_der), None
    except x509.InvalidVersion as exc:
        if exc.parsed_version not in _TOLERATED_VERSIONS:
            raise
        info_start, version_at, info_end = _version_octet(csr_der)
        if csr_der[version_at] != exc.parsed_version:
            raise  # not where DER puts it: refuse rather than guess
        read = bytearray(csr_der)
        read[version_at] = 0  # same length: no other byte moves
        return x509.load_der_x509_csr(bytes(read)), csr_der[info_start:info_end]


def _version_octet(der: bytes) -> tuple[int, int, int]:
    """(start of CertificationRequestInfo, offset of its one-octet version, end of it)."""
    tag, outer, _ = _der_header(der, 0)
    if tag != 0x30:
        raise ValueError("CSR is not a SEQUENCE")
    tag, info, info_length = _der_header(der, outer)
    if tag != 0x30:
        raise ValueError("CertificationRequestInfo is not a SEQUENCE")
    tag, version, version_length = _der_header(der, info)
    if tag != 0x02 or version_length != 1:
        raise ValueError("CSR version is not a one-octet INTEGER")
    return outer, version, info + info_length


def _der_header(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, offset of the contents, length of the contents) of the DER element at `at`."""
    if at + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        return tag, at + 2, first
    count = first & 0x7F
    if not 1 <= count <= 4 or at + 2 + count > len(der):
        raise ValueError("bad DER length")
    return tag, at + 2 + count, int.from_bytes(der[at + 2 : at + 2 + count], "big")


def _check_signature(csr: x509.CertificateSigningRequest, signed: bytes | None) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise _bad_csr(
            f"CSR signature algorithm {csr.signature_algorithm_oid.dotted_string} is not supported"
        ) from exc
    if isinstance(algorithm, _WEAK_HASHES):
        raise _bad_csr(f"CSR signature algorithm uses {algorithm.name.upper()}, which is too weak")
    try:
        valid = csr.is_signature_valid if signed is None else _signs(csr, signed, algorithm)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _bad_csr("CSR signature cannot be verified") from exc
    if not valid:
        raise _bad_csr("CSR signature is invalid")


def _signs(
    csr: x509.CertificateSigningRequest, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    """Whether the CSR's signature, by its own key, is over `data`."""
    key = csr.public_key()
    parameters = csr.signature_algorithm_parameters
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if algorithm is None or not isinstance(parameters, padding.PKCS1v15 | padding.PSS):
                return False
            key.verify(csr.signature, data, parameters, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(parameters, ec.ECDSA):
                return False
            key.verify(csr.signature, data, parameters)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            if parameters is not None or algorithm is not None:
                return False
            key.verify(csr.signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


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
        problems.append(f"is missing the order's identifiers {_render(missing)}")
    if extra:
        problems.append(f"has names not in the order {_render(extra)}")
    if problems:
        raise _bad_csr("CSR names do not match the order: CSR " + " and ".join(problems))


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
