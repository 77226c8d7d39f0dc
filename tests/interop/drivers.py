"""Running a library driver: a program of ours (tests/interop/node, ruby, goacme) that uses one
ACME client library's public API for a certificate's life and prints one JSON document, its
last line of output, with the outcome of every step and the exchanges it made."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.interop.conftest import AcmeServer, assert_chains_to_root, dns_names, tail

Result = dict[str, Any]

# What a driver's result may say about a failure, shown when it fails.
_FAILURE_KEYS = ("problem", "errorInfo", "transportErrors")


@dataclass(frozen=True, slots=True)
class DriverRun:
    returncode: int
    result: Result
    stderr: str


def run_driver(
    argv: Sequence[str],
    *,
    name: str,
    server: AcmeServer,
    env: dict[str, str],
    timeout: float,
    cwd: Path | None = None,
) -> DriverRun:
    """Run the driver `name` (for messages); its last line of output is the result (or
    `{"error": ...}` when that line is not JSON). A timeout fails the test."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"{name} timed out\n{out}\n{err}\n--- acme-ca log ---\n{server.log_tail()}")
    stdout = done.stdout.decode(errors="replace")
    try:
        result: Result = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": f"no JSON on stdout: {stdout!r}"}
    return DriverRun(
        returncode=done.returncode, result=result, stderr=done.stderr.decode(errors="replace")
    )


def succeeded(run: DriverRun, *, name: str, server: AcmeServer) -> Result:
    """The result of a run that must have gone through; else fail with its error, what it
    says of the failure, its last exchanges, its stderr and the server's log."""
    result = run.result
    if run.returncode != 0 or "error" in result:
        said = "".join(
            f"{key}: {json.dumps(result.get(key))}\n" for key in _FAILURE_KEYS if key in result
        )
        exchanges = json.dumps((result.get("exchanges") or [])[-6:], indent=1)
        pytest.fail(
            f"{name} exited with {run.returncode}: {result.get('error')}\n{said}"
            f"--- last exchanges ---\n{exchanges}\n--- stderr ---\n{run.stderr}\n"
            f"--- acme-ca log ---\n{tail(server.log, 40)}"
        )
    return result


def chain_of(pem: str) -> list[x509.Certificate]:
    """The certificates of a PEM chain a driver reported, leaf first."""
    return x509.load_pem_x509_certificates(pem.encode())


def assert_issued(pem: str, server: AcmeServer, names: set[str]) -> None:
    """The chain holds the leaf for exactly `names` and what links it to the test root."""
    leaf, *intermediates = chain_of(pem)
    assert intermediates, "the certificate URL must return the chain (RFC 8555 §7.4.2)"
    assert dns_names(leaf) == names
    for name in names:
        assert_chains_to_root(leaf, intermediates, server.root_pem, name.replace("*", "x"))


def root_x2(server: AcmeServer) -> Path:
    """The second root, which the alternate chain leads to."""
    return server.data_dir / "root-x2.pem"


def common_name(pem: Path) -> str:
    (cert,) = x509.load_pem_x509_certificates(pem.read_bytes())
    (attribute,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attribute.value)
