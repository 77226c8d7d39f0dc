"""The front end's own HTTP request and response: what a handler reads and returns.

Handlers see a request whose body has already been read (within the size limit),
so the same handler runs behind the HTTP/1.1 server of `wfe/http_server.py` and
behind the ASGI adapter the in-process tests use. A response is status, headers
and a whole body: ACME answers are small and never streamed.
"""

from __future__ import annotations

import http
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

__all__ = [
    "Address",
    "Headers",
    "Request",
    "Response",
    "ResponseHeaders",
    "carries_body",
    "serialize_response",
]

RawHeaders = list[tuple[bytes, bytes]]


class Address(NamedTuple):
    host: str
    port: int


class Headers(Mapping[str, str]):
    """Request headers, looked up by lower-case name; the first of repeated headers."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: RawHeaders) -> None:
        """`raw` holds lower-case names, as both servers deliver them."""
        self._raw = raw
        self._map: dict[str, str] | None = None

    @property
    def raw(self) -> RawHeaders:
        return self._raw

    def _mapping(self) -> dict[str, str]:
        if self._map is None:
            found: dict[str, str] = {}
            for name, value in self._raw:
                found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
            self._map = found
        return self._map

    def _find(self, name: str) -> bytes | None:
        # A request has a handful of headers and a handler asks for two or three: a
        # scan of the raw list costs less than decoding all of them into a dict.
        key = name.lower().encode("latin-1")
        for raw_name, value in self._raw:
            if raw_name == key:
                return value
        return None

    def __getitem__(self, name: str) -> str:
        value = self._find(name)
        if value is None:
            raise KeyError(name)
        return value.decode("latin-1")

    def get(self, name: str, default: Any = None) -> Any:
        value = self._find(name)
        return default if value is None else value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())


@dataclass(slots=True, eq=False)
class Request:
    method: str
    path: str
    """Percent-decoded, as in the request line."""
    query_string: bytes
    headers: Headers
    body: bytes
    client: Address | None
    path_params: dict[str, Any] = field(default_factory=dict)

    @property
    def query_params(self) -> dict[str, str]:
        # The first of repeated parameters, as Starlette's QueryParams.get gives.
        params: dict[str, str] = {}
        for name, value in parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True):
            params.setdefault(name, value)
        return params


class ResponseHeaders:
    """Mutable view over a response's raw header list; names compare case-insensitively."""

    __slots__ = ("_raw",)

    def __init__(self, raw: RawHeaders) -> None:
        self._raw = raw

    def __setitem__(self, name: str, value: str) -> None:
        key = name.lower().encode("latin-1")
        self._raw[:] = [(n, v) for n, v in self._raw if n != key]
        self._raw.append((key, value.encode("latin-1")))

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for n, v in self._raw:
            if n == key:
                return v.decode("latin-1")
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


def carries_body(status: int) -> bool:
    """Whether an answer with this status has a body and a Content-Length (RFC 9110
    §6.4.1: no 1xx, 204 or 304 does)."""
    return status >= 200 and status not in (204, 304)


class Response:
    """A whole response. Content-Length is added when it is written, not stored."""

    __slots__ = ("body", "problem", "raw_headers", "status_code")

    def __init__(
        self,
        content: bytes | str = b"",
        status_code: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = content.encode("utf-8") if isinstance(content, str) else content
        raw: RawHeaders = []
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            raw = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in items]
        if media_type is not None:
            if media_type.startswith("text/") and "charset" not in media_type:
                media_type += "; charset=utf-8"
            raw.append((b"content-type", media_type.encode("latin-1")))
        self.raw_headers = raw
        # The problem type when the body is a problem document (metrics count them).
        self.problem: str | None = None

    @property
    def headers(self) -> ResponseHeaders:
        return ResponseHeaders(self.raw_headers)


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def serialize_response(
    response: Response,
    *,
    head: bool,
    keep_alive: bool,
    default_headers: list[tuple[bytes, bytes]],
) -> bytes:
    status = response.status_code
    parts = [_STATUS_LINES[status]]
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in response.raw_headers:
        parts += (name, b": ", value, b"\r\n")
    # Status line, headers, blank line; then Content-Length and Connection if added.
    lines = len(default_headers) + len(response.raw_headers) + 2
    body = response.body
    if carries_body(status):
        parts += (b"content-length: ", str(len(body)).encode("ascii"), b"\r\n")
        lines += 1
    else:
        body = b""
    if not keep_alive:
        parts.append(b"connection: close\r\n")
        lines += 1
    parts.append(b"\r\n")
    head_bytes = b"".join(parts)
    # Header values carry URLs and IDs; none may end a header line early: one CR and
    # one LF per line, counted in C instead of five searches per header.
    if head_bytes.count(b"\n") != lines or head_bytes.count(b"\r") != lines:
        raise ValueError("a response header holds a line break")
    return head_bytes + body if body and not head else head_bytes
