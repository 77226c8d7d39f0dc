"""Fixtures that run acme-ca and its challenge test server as real processes, and drive the
unmodified ACME clients certbot and lego against them over HTTPS.

One server and one challtestsrv serve the whole session; each test gets its own client state
directory. Every process started here is stopped by its PID at teardown. certbot and lego are
installed by scripts/install-interop-deps.sh; a missing client fails the test (so that a
broken install is seen) unless ACME_CA_INTEROP_SKIP_MISSING=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store

REPO = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).resolve().parent / "hooks"
ACME_CA = Path(sys.executable).parent / "acme-ca"
LOOPBACK = "127.0.0.1"

_STARTUP_TIMEOUT = 60.0  # the first start creates the CA keys and the database
_STOP_TIMEOUT = 10.0
CLIENT_TIMEOUT = 90.0
_LOG_TAIL_LINES = 60


# -- ports and processes -------------------------------------------------------------------


def _below_ephemeral_range() -> range:
    """Ports the kernel never hands out as the local end of an outgoing connection.

    A port found free now is bound later, by a server or a client's responder; taken
    from the ephemeral range, any outgoing connection in between (a database client, a
    validation) may take it first ("address already in use").
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), max(1025, low - 1))


def _bindable(port: int, *, udp_too: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp_too else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def free_port(*, udp_too: bool = False) -> int:
    """A loopback port that is free now (for TCP, and for UDP if asked), below the
    ephemeral range so that no outgoing connection takes it before it is bound."""
    candidates = _below_ephemeral_range()
    for _ in range(200):
        port = secrets.choice(candidates)
        if port not in _HANDED_OUT and _bindable(port, udp_too=udp_too):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free loopback port")


_HANDED_OUT: set[int] = set()


def _start(
    argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env=env,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)


def tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# -- the servers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallTestSrv:
    dns_port: int
    management_url: str
    log: Path

    def post(self, path: str, body: dict[str, str]) -> None:
        request = urllib.request.Request(
            f"{self.management_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200


@dataclass(frozen=True, slots=True, kw_only=True)
class AcmeServer:
    directory_url: str
    root_pem: Path
    data_dir: Path
    log: Path
    http01_port: int
    tlsalpn01_port: int
    challtestsrv: ChallTestSrv

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return tail(self.log, lines)


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} during startup:\n{tail(log)}")
        with contextlib.suppress(OSError, ssl.SSLError, urllib.error.URLError):
            if ready():
                return
        time.sleep(0.2)
    pytest.fail(f"{what} not ready after {_STARTUP_TIMEOUT}s:\n{tail(log)}")


@pytest.fixture(scope="session")
def challtestsrv_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallTestSrv]:
    workdir = tmp_path_factory.mktemp("challtestsrv")
    dns_port, mgmt_port = free_port(udp_too=True), free_port()
    srv = ChallTestSrv(
        dns_port=dns_port,
        management_url=f"http://{LOOPBACK}:{mgmt_port}",
        log=workdir / "challtestsrv.log",
    )
    proc = _start(
        [
            str(ACME_CA),
            "challtestsrv",
            "--dns",
            f"{LOOPBACK}:{dns_port}",
            "--management",
            f"{LOOPBACK}:{mgmt_port}",
        ],
        srv.log,
    )
    try:

        def ready() -> bool:
            srv.post("/clear-txt", {"host": "ready.example.test."})
            return True

        _wait_until(ready, proc, "challtestsrv", srv.log)
        yield srv
    finally:
        _stop(proc)


@contextlib.contextmanager
def running_acme_server(
    workdir: Path, challtestsrv: ChallTestSrv, *extra_args: str
) -> Iterator[AcmeServer]:
    """`acme-ca serve` on free loopback ports with a fresh data dir, until the block ends."""
    port, http01, tlsalpn01 = free_port(), free_port(), free_port()
    server = AcmeServer(
        directory_url=f"https://{LOOPBACK}:{port}/directory",
        root_pem=workdir / "data" / "root.pem",
        data_dir=workdir / "data",
        log=workdir / "acme-ca.log",
        http01_port=http01,
        tlsalpn01_port=tlsalpn01,
        challtestsrv=challtestsrv,
    )
    proc = _start(
        [
            str(ACME_CA), "serve",
            "--data-dir", str(server.data_dir),
            "--listen", f"{LOOPBACK}:{port}",
            "--dns-resolver", f"{LOOPBACK}:{challtestsrv.dns_port}",
            "--http-01-port", str(http01),
            "--tls-alpn-01-port", str(tlsalpn01),
            "--allow-private-addresses",
            # Not the default port: test sessions running side by side must not collide.
            "--revocation-listen", f"{LOOPBACK}:{free_port()}",
            "--metrics-listen", f"{LOOPBACK}:{free_port()}",
            *extra_args,
        ],
        server.log,
    )  # fmt: skip
    try:

        def ready() -> bool:
            if not server.root_pem.exists():
                return False
            context = ssl.create_default_context(cafile=str(server.root_pem))
            with urllib.request.urlopen(
                server.directory_url, timeout=5, context=context
            ) as response:
                return response.status == 200 and "newAccount" in json.load(response)

        _wait_until(ready, proc, f"acme-ca serve {' '.join(extra_args)}", server.log)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def acme_server(
    tmp_path_factory: pytest.TempPathFactory, challtestsrv_process: ChallTestSrv
) -> Iterator[AcmeServer]:
    with running_acme_server(tmp_path_factory.mktemp("acme-ca"), challtestsrv_process) as server:
        yield server


# -- running the clients -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRun:
    argv: list[str]
    returncode: int
    output: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Client:
    """Runs one ACME client binary with a fixed environment and state directory."""

    name: str
    binary: Path
    server: AcmeServer
    state_dir: Path  # certbot's --config-dir, lego's --path
    env: dict[str, str]
    common_args: list[str]
    # certbot takes its flags after the subcommand; lego takes global flags before it.
    subcommand_first: bool
    extra_logs: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<{self.name} in {self.state_dir}>"

    def run(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> ClientRun:
        head = list(args[:1]) if self.subcommand_first else []
        argv = [str(self.binary), *head, *self.common_args, *args[len(head) :]]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode(errors="replace")
            pytest.fail(
                self.explain(ClientRun(argv=argv, returncode=-1, output=output), "timed out")
            )
        return ClientRun(
            argv=argv, returncode=done.returncode, output=done.stdout.decode(errors="replace")
        )

    def ok(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> ClientRun:
        """Run and fail the test, with the client's output and the server log, unless it exits 0."""
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(self.explain(result, f"exited with {result.returncode}"))
        return result

    def fails(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> ClientRun:
        result = self.run(*args, timeout=timeout)
        if result.returncode == 0:
            pytest.fail(self.explain(result, "succeeded where it must fail"))
        return result

    def expect_in_output(self, result: ClientRun, *needles: str) -> None:
        """Fail unless the output names one of ``needles`` (case-insensitive): the problem the
        server is expected to have sent."""
        if not any(needle.lower() in result.output.lower() for needle in needles):
            pytest.fail(self.explain(result, f"did not report any of {needles}"))

    def explain(self, result: ClientRun, what: str) -> str:
        parts = [
            f"{self.name} {what}: {shlex.join(result.argv)}",
            f"--- {self.name} output ---\n{result.output.strip()}",
        ]
        parts += [f"--- tail of {log} ---\n{tail(log, 40)}" for log in self.extra_logs]
        parts.append(f"--- tail of the acme-ca log ---\n{self.server.log_tail()}")
        return "\n".join(parts)


def _client_env(server: AcmeServer) -> dict[str, str]:
    env = dict(os.environ)
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(proxy, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["CHALLTESTSRV_MANAGEMENT"] = server.challtestsrv.management_url
    return env


def _require(name: str, path: Path | None) -> Path:
    if path is not None and path.is_file() and os.access(path, os.X_OK):
        return path
    message = (
        f"{name} is not installed: run `bash scripts/install-interop-deps.sh` (or `make test`)"
    )
    if os.environ.get("ACME_CA_INTEROP_SKIP_MISSING") == "1":
        pytest.skip(message)
    pytest.fail(message)


@pytest.fixture(scope="session")
def certbot_bin() -> Path:
    venv = REPO / ".venv-certbot" / "bin" / "certbot"
    on_path = shutil.which("certbot")
    return _require("certbot", venv if venv.exists() else Path(on_path) if on_path else None)


@pytest.fixture(scope="session")
def lego_bin() -> Path:
    on_path = shutil.which("lego")
    return _require("lego", Path(on_path) if on_path else None)


def certbot_client(binary: Path, server: AcmeServer, tmp_path: Path) -> Client:
    """certbot against `server`, with its config, work and logs directories in `tmp_path`.

    ``.run("certonly", ...)`` puts the common flags after the subcommand.
    """
    env = _client_env(server)
    env["REQUESTS_CA_BUNDLE"] = str(server.root_pem)
    root = tmp_path / "certbot"
    return Client(
        name="certbot",
        binary=binary,
        server=server,
        state_dir=root / "config",
        env=env,
        common_args=[
            "--config-dir",
            str(root / "config"),
            "--work-dir",
            str(root / "work"),
            "--logs-dir",
            str(root / "logs"),
            "--non-interactive",
            "--server",
            server.directory_url,
        ],
        subcommand_first=True,
        extra_logs=[root / "logs" / "letsencrypt.log"],
    )


def lego_client(binary: Path, server: AcmeServer, tmp_path: Path) -> Client:
    """lego against `server` with ``--path`` in `tmp_path`; ``.run(...)`` puts the global
    flags first, so pass the flags and then the command: ``.run("--http", ..., "run")``."""
    env = _client_env(server)
    env["LEGO_CA_CERTIFICATES"] = str(server.root_pem)
    return Client(
        name="lego",
        binary=binary,
        server=server,
        state_dir=tmp_path / "lego",
        env=env,
        common_args=[
            "--path",
            str(tmp_path / "lego"),  # = state_dir
            "--server",
            server.directory_url,
            "--email",
            "lego@example.test",
            "--accept-tos",
        ],
        subcommand_first=False,
    )


@pytest.fixture
def certbot(certbot_bin: Path, acme_server: AcmeServer, tmp_path: Path) -> Client:
    return certbot_client(certbot_bin, acme_server, tmp_path)


@pytest.fixture
def lego(lego_bin: Path, acme_server: AcmeServer, tmp_path: Path) -> Client:
    return lego_client(lego_bin, acme_server, tmp_path)


def hook_command(*args: str) -> str:
    """A shell command line running the dns-01 hook with this interpreter."""
    return shlex.join([sys.executable, str(HOOKS / "challtestsrv_txt.py"), *args])


def hook_executable(
    directory: Path,
    script: str = "challtestsrv_txt.py",
    *,
    name: str = "challtestsrv-txt-hook",
    env: dict[str, str] | None = None,
) -> Path:
    """An executable wrapper running the hook `script` of tests/interop/hooks with this
    interpreter and `env` exported (lego's exec provider and uacme run a program, not a
    shell line), so that the hook's own file mode does not matter."""
    wrapper = directory / name
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in (env or {}).items())
    command = shlex.join([sys.executable, str(HOOKS / script)])
    wrapper.write_text(f'#!/bin/sh\n{exports}exec {command} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


# -- checking certificates -----------------------------------------------------------------


def load_pems(path: Path) -> list[x509.Certificate]:
    assert path.is_file(), f"{path} was not written"
    return x509.load_pem_x509_certificates(path.read_bytes())


def dns_names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    return set(san.get_values_for_type(x509.DNSName))


def assert_chains_to_root(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    root_pem: Path,
    name: str,
) -> None:
    """Verify as a TLS client would: path to the CA's root, server-auth policy, ``name`` in SAN."""
    roots = x509.load_pem_x509_certificates(root_pem.read_bytes())
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
    chain = verifier.verify(leaf, list(intermediates))
    assert chain[-1] in roots


@pytest.fixture
def wellknown(acme_server: AcmeServer, tmp_path: Path) -> Iterator[Path]:
    """The http-01 files' directory, served at /.well-known/acme-challenge/ on the
    server's http-01 port (RFC 8555 §8.3) while the test runs, for clients that only
    write the files (dehydrated, acme-tiny)."""
    root = tmp_path / "www"
    directory = root / ".well-known" / "acme-challenge"
    directory.mkdir(parents=True)
    log = tmp_path / "http01-files.log"
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root)]
    server = _start([*argv, str(acme_server.http01_port)], log)
    try:
        probe = directory / "probe"
        probe.write_text("ok")
        _wait_until(lambda: _served(acme_server.http01_port), server, "http-01 file server", log)
        probe.unlink()
        yield directory
    finally:
        _stop(server)


def _served(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/.well-known/acme-challenge/probe"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
