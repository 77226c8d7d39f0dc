"""tls-alpn-01 validation (RFC 8737; IP identifiers RFC 8738 §6).

Opens TLS to a resolved, guard-checked address on the configured port with
SNI naming the identifier and ALPN offering only "acme-tls/1", then checks
the presented self-signed certificate: one subjectAltName equal to the
identifier, and a critical acmeIdentifier extension holding SHA-256 of the key
authorization. The certificate is not verified: it is self-signed by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import ssl
from typing import Any

from cryptography import x509

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.model import IdentifierType
from acme_ca.va.address_guard import IPAddress, refused, usable_addresses
from acme_ca.va.resolver import Resolver
from acme_ca.va.types import VAConfig, ValidationRequest

ACME_TLS_1 = "acme-tls/1"
"""RFC 8737 §6.2 ALPN protocol name."""
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
"""RFC 8737 §6.1 id-pe-acmeIdentifier."""


def acme_identifier_value(key_authorization: str) -> bytes:
    """The DER extnValue content RFC 8737 §3 requires: OCTET STRING (SIZE (32)) of SHA-256."""
    digest = hashlib.sha256(key_authorization.encode("utf-8")).digest()
    return b"\x04\x20" + digest


def _tls(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.TLS, detail=detail)


def _unauthorized(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.UNAUTHORIZED, detail=detail)


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The validation certificate is self-signed (RFC 8737 §3): what is checked
    # is its content, below, not its chain or name.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # RFC 8737 §4: acme-tls/1 is only negotiated over TLS 1.2 or later.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_1])
    return context


async def _handshake(
    address: IPAddress, port: int, sni: str, connect_timeout: float
) -> tuple[str | None, bytes | None]:
    """Negotiated ALPN protocol and leaf certificate (DER); raises OSError/TimeoutError."""
    async with asyncio.timeout(connect_timeout):
        _, writer = await asyncio.open_connection(
            str(address),
            port,
            ssl=_context(),
            server_hostname=sni,
            ssl_handshake_timeout=connect_timeout,
        )
    try:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        return tls.selected_alpn_protocol(), tls.getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


def _san_problem(cert: x509.Certificate, request: ValidationRequest) -> AcmeError | None:
    """RFC 8737 §3: exactly one subjectAltName, the identifier being validated."""
    want = request.identifier.value
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return _unauthorized(
            f"Incorrect validation certificate for tls-alpn-01 challenge. Requested {want}. "
            "Received certificate without a subjectAltName extension"
        )
    names = list(san)
    found = ", ".join(str(getattr(n, "value", n)) for n in names[:5])
    if len(names) == 1:
        name = names[0]
        if request.identifier.type == IdentifierType.IP:
            if isinstance(name, x509.IPAddress) and name.value == ipaddress.ip_address(want):
                return None
        elif isinstance(name, x509.DNSName) and name.value.lower() == want.lower().rstrip("."):
            return None
    return _unauthorized(
        f"Incorrect validation certificate for tls-alpn-01 challenge. Requested {want}. "
        f"Received certificate containing: {found or 'no names'}"
    )


def _certificate_problem(der: bytes, request: ValidationRequest) -> AcmeError | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        problem = _san_problem(cert, request)
        if problem is not None:
            return problem
        extension = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return _unauthorized(
            "The tls-alpn-01 validation certificate has no acmeIdentifier extension"
        )
    except ValueError:  # unparseable certificate, duplicate or malformed extensions
        return _unauthorized("The tls-alpn-01 validation certificate could not be parsed")
    # RFC 8737 §3: the acmeIdentifier extension MUST be critical.
    if not extension.critical:
        return _unauthorized(
            "The tls-alpn-01 validation certificate's acmeIdentifier extension is not critical"
        )
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if not hmac.compare_digest(raw, acme_identifier_value(request.key_authorization)):
        return _unauthorized(
            "The tls-alpn-01 validation certificate's acmeIdentifier extension "
            "does not match the key authorization"
        )
    return None


async def validate_tlsalpn01(
    request: ValidationRequest,
    *,
    config: VAConfig,
    resolver: Resolver,
    records: list[dict[str, Any]],
) -> AcmeError | None:
    """Check a tls-alpn-01 challenge; returns None when valid, else the problem.

    Appends one validation record to `records`. Lookup failures are raised by
    the resolver as `AcmeError(dns)`.
    """
    identifier = request.identifier
    port = config.tlsalpn01_port
    ip = ipaddress.ip_address(identifier.value) if identifier.type == IdentifierType.IP else None
    # RFC 8738 §6: for an IP address, SNI carries its reverse-mapping name.
    host = ip.compressed if ip is not None else identifier.value.lower().rstrip(".")
    sni = ip.reverse_pointer if ip is not None else host
    record: dict[str, Any] = {"hostname": host, "port": str(port), "addressesResolved": []}
    records.append(record)
    addresses = [ip] if ip is not None else await resolver.addresses(host)
    record["addressesResolved"] = [str(a) for a in addresses]
    usable = usable_addresses(addresses, allow_private=config.allow_private_addresses)
    if not usable:
        return refused(host)

    # Boulder's order: the first IPv6 address, falling back to the first IPv4.
    v6 = [a for a in usable if isinstance(a, ipaddress.IPv6Address)][:1]
    v4 = [a for a in usable if isinstance(a, ipaddress.IPv4Address)][:1]
    problem: AcmeError | None = None
    for address in v6 + v4:
        record["addressUsed"] = str(address)
        try:
            alpn, der = await _handshake(address, port, sni, config.connect_timeout)
        except ssl.SSLError:
            return _tls(f"TLS handshake with {host}:{port} for tls-alpn-01 challenge failed")
        except TimeoutError:
            problem = AcmeError(
                type=ProblemType.CONNECTION,
                detail=f"Timeout during connect to {host}:{port} (likely firewall problem)",
            )
            continue
        except ConnectionRefusedError:
            problem = AcmeError(
                type=ProblemType.CONNECTION, detail=f"Connection refused by {host}:{port}"
            )
            continue
        except OSError:
            problem = AcmeError(
                type=ProblemType.CONNECTION, detail=f"Error connecting to {host}:{port}"
            )
            continue
        if alpn != ACME_TLS_1:
            return _tls(
                f'Cannot negotiate ALPN protocol "{ACME_TLS_1}" for tls-alpn-01 challenge '
                f"with {host}:{port}"
            )
        if not der:
            return _tls(f"No certificate presented by {host}:{port} for tls-alpn-01 challenge")
        return _certificate_problem(der, request)
    assert problem is not None
    return problem
