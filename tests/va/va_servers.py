"""Loopback servers and a fake resolver for the VA's tests.

Real sockets on 127.0.0.1: an HTTP(S) server with a route table, a TLS server
answering ALPN "acme-tls/1", and a tiny UDP DNS server built on dnspython.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.va import ACME_TLS_1, ID_PE_ACME_IDENTIFIER, acme_identifier_value

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = "127.0.0.1"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
THUMBPRINT = "nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEY0Ew4bOA"
KEY_AUTH = f"{TOKEN}.{THUMBPRINT}"


class FakeResolver:
    """A `Resolver` answering from dictionaries; unknown names fail as DNS problems."""

    def __init__(
        self,
        addresses: dict[str, list[str]] | None = None,
        txt: dict[str, list[str]] | None = None,
    ) -> None:
        self.address_map = {
            k: [ipaddress.ip_address(a) for a in v] for k, v in (addresses or {}).items()
        }
        self.txt_map = dict(txt or {})
        self.lookups: list[str] = []

    async def addresses(self, name: str) -> list[IPAddress]:
        self.lookups.append(name)
        if name not in self.address_map:
            raise AcmeError(type=ProblemType.DNS, detail=f"NXDOMAIN looking up A for {name}")
        return list(self.address_map[name])

    async def txt(self, name: str) -> list[str]:
        self.lookups.append(name)
        if name not in self.txt_map:
            raise AcmeError(type=ProblemType.DNS, detail=f"NXDOMAIN looking up TXT for {name}")
        return list(self.txt_map[name])

    async def caa(self, name: str) -> list[tuple[int, str, str]]:
        return []


# --- certificates ---------------------------------------------------------------------------


def make_cert(
    directory: Path,
    *,
    names: Sequence[x509.GeneralName],
    acme_extension: bytes | None = None,
    critical: bool = True,
) -> tuple[Path, Path]:
    """A self-signed certificate and key as PEM files; returns (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-ca test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if acme_extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, acme_extension), critical=critical
        )
    cert = builder.sign(key, hashes.SHA256())
    n = len(list(directory.glob("cert*.pem")))
    cert_path, key_path = directory / f"cert{n}.pem", directory / f"key{n}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def alpn_cert(directory: Path, name: str, *, key_auth: str = KEY_AUTH) -> tuple[Path, Path]:
    """A correct RFC 8737 validation certificate for `name` (DNS name or IP address)."""
    try:
        general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        general = x509.DNSName(name)
    return make_cert(directory, names=[general], acme_extension=acme_identifier_value(key_auth))


def server_context(cert: tuple[Path, Path], *, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


# --- TCP servers ----------------------------------------------------------------------------


class _TcpServer:
    """Runs `_serve` per connection on 127.0.0.1 and cancels stragglers on exit."""

    def __init__(self, context: ssl.SSLContext | None = None, *, host: str = LOOPBACK) -> None:
        self._context = context
        self._host = host
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sni: list[str | None] = []
        self.connections = 0
        if context is not None:
            context.sni_callback = self._record_sni

    def _record_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self._host, 0, ssl=self._context)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            async with asyncio.timeout(5):
                await self._serve(reader, writer)
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handshake done; this server says nothing."""


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0


@dataclass(frozen=True)
class Seen:
    path: str
    host: str | None


class HttpServer(_TcpServer):
    """HTTP/1.1 (or HTTPS, given a context) answering from `routes`; 404 otherwise."""

    def __init__(self, context: ssl.SSLContext | None = None, *, host: str = LOOPBACK) -> None:
        super().__init__(context, host=host)
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []

    def challenge(self, body: bytes | str, *, token: str = TOKEN) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes[f"/.well-known/acme-challenge/{token}"] = Route(body=data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(":", 1) for line in lines[1:] if line)
        }
        self.requests.append(Seen(path=path, host=headers.get("host")))
        route = self.routes.get(path, Route(status=404, body=b"not found"))
        if route.delay:
            await asyncio.sleep(route.delay)
        out = [f"HTTP/1.1 {route.status} {http.HTTPStatus(route.status).phrase}"]
        out += [f"{k}: {v}" for k, v in route.headers]
        out += [f"Content-Length: {len(route.body)}", "Connection: close", "", ""]
        writer.write("\r\n".join(out).encode("latin-1") + route.body)
        await writer.drain()


class TlsServer(_TcpServer):
    """Completes the TLS handshake (recording SNI) and closes."""


class GarbageServer(_TcpServer):
    """Plain TCP that answers any bytes with an HTTP error, as a non-TLS server would."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()


# --- DNS ------------------------------------------------------------------------------------


class DnsServer(asyncio.DatagramProtocol):
    """A UDP DNS server on 127.0.0.1: `records[(name, type)]` in zone-file text."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self._transport: asyncio.DatagramTransport | None = None

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype.upper()), []).extend(values)

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None
        return LOOPBACK, int(self._transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name,
                    60,
                    dns.rdataclass.IN,
                    question.rdtype,
                    self.records[(name, rdtype)],
                )
            )
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(LOOPBACK, 0))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._transport is not None
        self._transport.close()


__all__ = [
    "ACME_TLS_1",
    "KEY_AUTH",
    "LOOPBACK",
    "THUMBPRINT",
    "TOKEN",
    "DnsServer",
    "FakeResolver",
    "GarbageServer",
    "HttpServer",
    "Route",
    "TlsServer",
    "alpn_cert",
    "make_cert",
    "server_context",
]
