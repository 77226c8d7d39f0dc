"""The challenge test server: a mock DNS resolver, an http-01 responder and an API to program them.

Modelled on Pebble's challtestsrv, and compatible with its management API, so that scripts
written for Pebble drive this one unchanged. Tests point the validation authority's resolver
and http-01 port at it; users do the same to test their ACME clients. Everything here is for
tests on loopback: there is no authentication and no persistence.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from acme_ca.testing.dns_server import DnsRecords, DnsServer

__all__ = ["ChallengeTestServer", "main"]

# Management bodies are a host and a few values; anything bigger is a mistake.
_MAX_BODY = 64 * 1024
_STARTUP_TIMEOUT = 5.0
_SHUTDOWN_TIMEOUT = 5.0


class _BadRequestError(Exception):
    """A management request whose body does not have the documented shape."""


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever owns the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind_tcp(host: str, port: int) -> socket.socket:
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _HttpListener:
    """One Starlette app served by uvicorn as a task on a socket bound up front (port 0 works)."""

    def __init__(self, app: Starlette, listen: tuple[str, int]) -> None:
        self._app = app
        self._listen = listen
        self._sock: socket.socket | None = None
        self._server: _SignalFreeServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("listener is not running")
        port: int = self._sock.getsockname()[1]
        return port

    async def start(self) -> None:
        self._sock = _bind_tcp(*self._listen)
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            log_config=None,  # leave the host application's logging configuration alone
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = _SignalFreeServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        async with asyncio.timeout(_STARTUP_TIMEOUT):
            while not self._server.started:
                if self._task.done():
                    await self._task
                    raise RuntimeError("HTTP listener exited during startup")
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(self._task, timeout=_SHUTDOWN_TIMEOUT)
            except TimeoutError:
                self._task.cancel()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._server = self._task = None


class ChallengeTestServer:
    """DNS (UDP and TCP), a management HTTP API and an optional http-01 responder.

    The in-process methods and the management API have the same effect. Records may be set
    before ``start``. ``None`` for ``management_listen`` or ``http01_listen`` leaves that
    listener off; port 0 anywhere takes an ephemeral port, read back from the ``*_port``
    properties. Setters raise ValueError for a malformed host, address or policy.
    """

    def __init__(
        self,
        *,
        dns_listen: tuple[str, int] = ("127.0.0.1", 8053),
        management_listen: tuple[str, int] | None = ("127.0.0.1", 8055),
        http01_listen: tuple[str, int] | None = None,
        default_ipv4: str | None = "127.0.0.1",
        default_ipv6: str | None = None,
    ) -> None:
        self._records = DnsRecords(default_ipv4=default_ipv4, default_ipv6=default_ipv6)
        self._http01: dict[str, str] = {}
        self._dns = DnsServer(self._records, listen=dns_listen)
        self._management = (
            _HttpListener(_management_app(self), management_listen) if management_listen else None
        )
        self._http01_listener = (
            _HttpListener(_http01_app(self._http01), http01_listen) if http01_listen else None
        )
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("challenge test server already started")
        self._running = True
        try:
            await self._dns.start()
            if self._management is not None:
                await self._management.start()
            if self._http01_listener is not None:
                await self._http01_listener.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every listener; safe to call twice or after a failed start."""
        # Concurrently: each uvicorn shutdown spends a fixed ~0.2 s in its own sleeps.
        listeners = [h for h in (self._management, self._http01_listener) if h is not None]
        await asyncio.gather(self._dns.stop(), *(h.stop() for h in listeners))
        self._running = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def dns_port(self) -> int:
        return self._dns.port

    @property
    def management_port(self) -> int:
        if self._management is None:
            raise RuntimeError("management API is disabled")
        return self._management.port

    @property
    def http01_port(self) -> int:
        if self._http01_listener is None:
            raise RuntimeError("http-01 responder is disabled")
        return self._http01_listener.port

    # -- DNS records -------------------------------------------------------------------------

    def set_default_ipv4(self, ip: str | None) -> None:
        """The A answer for every name without explicit A records; None or "" answers none."""
        self._records.set_default_ipv4(ip)

    def set_default_ipv6(self, ip: str | None) -> None:
        """The AAAA answer for names without explicit AAAA records; None or "" answers none."""
        self._records.set_default_ipv6(ip)

    def add_a(self, host: str, addresses: list[str]) -> None:
        self._records.add_a(host, addresses)

    def clear_a(self, host: str) -> None:
        self._records.clear_a(host)

    def add_aaaa(self, host: str, addresses: list[str]) -> None:
        self._records.add_aaaa(host, addresses)

    def clear_aaaa(self, host: str) -> None:
        self._records.clear_aaaa(host)

    def set_txt(self, host: str, value: str) -> None:
        """Append a TXT value: certbot puts a wildcard's and its base name's digests at one name."""
        self._records.set_txt(host, value)

    def clear_txt(self, host: str) -> None:
        self._records.clear_txt(host)

    def add_caa(self, host: str, policies: list[tuple[int, str, str]]) -> None:
        """Append CAA records, each (flags, tag, value), as in RFC 8659 §4.1."""
        self._records.add_caa(host, policies)

    def clear_caa(self, host: str) -> None:
        self._records.clear_caa(host)

    def set_servfail(self, host: str) -> None:
        self._records.set_servfail(host)

    def clear_servfail(self, host: str) -> None:
        self._records.clear_servfail(host)

    # -- http-01 -----------------------------------------------------------------------------

    def add_http01(self, token: str, content: str) -> None:
        """Serve ``content`` at /.well-known/acme-challenge/<token> (RFC 8555 §8.3)."""
        if not isinstance(token, str) or not token or "/" in token:
            raise ValueError("token must be a non-empty string without '/'")
        if not isinstance(content, str):
            raise ValueError("content must be a string")
        self._http01[token] = content

    def del_http01(self, token: str) -> None:
        self._http01.pop(token, None)


# -- management API (Pebble challtestsrv compatible) ---------------------------------------


def _str_field(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _BadRequestError(f"field {key!r} must be a string")
    return value


def _optional_ip(data: dict[str, Any]) -> str | None:
    value = data.get("ip")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRequestError("field 'ip' must be a string")
    return value


def _addresses(data: dict[str, Any]) -> list[str]:
    value = data.get("addresses")
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise _BadRequestError("field 'addresses' must be a list of strings")
    return value


def _policies(data: dict[str, Any]) -> list[tuple[int, str, str]]:
    value = data.get("policies")
    if not isinstance(value, list):
        raise _BadRequestError("field 'policies' must be a list")
    policies: list[tuple[int, str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise _BadRequestError("each policy must be an object with tag and value")
        flags = item.get("flags", 0)
        if not isinstance(flags, int) or isinstance(flags, bool):
            raise _BadRequestError("policy 'flags' must be an integer")
        policies.append((flags, _str_field(item, "tag"), _str_field(item, "value")))
    return policies


async def _json_object(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise _BadRequestError("body too large")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise _BadRequestError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _BadRequestError("body must be a JSON object")
    return data


_Action = Callable[[dict[str, Any]], None]


def _endpoint(action: _Action) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            action(await _json_object(request))
        except (_BadRequestError, ValueError) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        return Response(status_code=200)

    return endpoint


def _management_app(srv: ChallengeTestServer) -> Starlette:
    def host(d: dict[str, Any]) -> str:
        return _str_field(d, "host")

    actions: dict[str, _Action] = {
        "/set-default-ipv4": lambda d: srv.set_default_ipv4(_optional_ip(d)),
        "/set-default-ipv6": lambda d: srv.set_default_ipv6(_optional_ip(d)),
        "/add-a": lambda d: srv.add_a(host(d), _addresses(d)),
        "/clear-a": lambda d: srv.clear_a(host(d)),
        "/add-aaaa": lambda d: srv.add_aaaa(host(d), _addresses(d)),
        "/clear-aaaa": lambda d: srv.clear_aaaa(host(d)),
        "/set-txt": lambda d: srv.set_txt(host(d), _str_field(d, "value")),
        "/clear-txt": lambda d: srv.clear_txt(host(d)),
        "/add-caa": lambda d: srv.add_caa(host(d), _policies(d)),
        "/clear-caa": lambda d: srv.clear_caa(host(d)),
        "/set-servfail": lambda d: srv.set_servfail(host(d)),
        "/clear-servfail": lambda d: srv.clear_servfail(host(d)),
        "/add-http01": lambda d: srv.add_http01(_str_field(d, "token"), _str_field(d, "content")),
        "/del-http01": lambda d: srv.del_http01(_str_field(d, "token")),
    }
    routes = [Route(path, _endpoint(action), methods=["POST"]) for path, action in actions.items()]
    return Starlette(routes=routes)


def _http01_app(contents: dict[str, str]) -> Starlette:
    async def challenge(request: Request) -> Response:
        content = contents.get(request.path_params["token"])
        if content is None:
            return PlainTextResponse("not found\n", status_code=404)
        # RFC 8555 §8.3: the body is the key authorization; the VA compares it after trimming.
        return Response(content, media_type="text/plain")

    return Starlette(
        routes=[Route("/.well-known/acme-challenge/{token}", challenge, methods=["GET"])]
    )


# -- command line ---------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int] | None:
    if text.lower() == "off":
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or 'off', got {text!r}")
    return host, int(port_text)


def _format(listen: tuple[str, int] | None, port: Callable[[], int]) -> str:
    if listen is None:
        return "off"
    host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
    return f"{host}:{port()}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acme-ca challtestsrv",
        description="Mock DNS resolver, http-01 responder and management API for ACME tests.",
    )
    parser.add_argument("--dns", type=_host_port, default=("127.0.0.1", 8053), metavar="HOST:PORT")
    parser.add_argument(
        "--management",
        type=_host_port,
        default=("127.0.0.1", 8055),
        metavar="HOST:PORT",
        help="management API address, or 'off'",
    )
    parser.add_argument(
        "--http01",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="http-01 responder address (off by default)",
    )
    parser.add_argument(
        "--default-ipv4", default="127.0.0.1", help='A answer for every name; "" disables'
    )
    parser.add_argument("--default-ipv6", default="", help='AAAA answer; "" (default) disables')
    return parser


async def _run(args: argparse.Namespace) -> int:
    if args.dns is None:
        print("challtestsrv: --dns cannot be off", file=sys.stderr)
        return 2
    try:
        server = ChallengeTestServer(
            dns_listen=args.dns,
            management_listen=args.management,
            http01_listen=args.http01,
            default_ipv4=args.default_ipv4 or None,
            default_ipv6=args.default_ipv6 or None,
        )
    except ValueError as exc:
        print(f"challtestsrv: {exc}", file=sys.stderr)
        return 2
    try:
        await server.start()
    except OSError as exc:
        print(f"challtestsrv: cannot listen: {exc}", file=sys.stderr)
        return 1
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        print(
            f"challtestsrv: dns={_format(args.dns, lambda: server.dns_port)} (udp+tcp)"
            f" management={_format(args.management, lambda: server.management_port)}"
            f" http01={_format(args.http01, lambda: server.http01_port)}",
            flush=True,
        )
        await stopping.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM; 0 on a clean stop, 1 if a port is taken, 2 on bad input."""
    return asyncio.run(_run(_parser().parse_args(argv)))
