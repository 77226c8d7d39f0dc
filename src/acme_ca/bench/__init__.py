"""A load generator for ACME servers, and the minimal ACME client it is built on.

An external client: nothing here imports the server side of acme_ca, so it measures
any RFC 8555 server (acme-ca, Pebble, Boulder) the same way.
"""

from acme_ca.bench.cli import main
from acme_ca.bench.client import (
    AcmeClient,
    AcmeProblem,
    AcmeResponse,
    Endpoint,
    PollFailed,
    RequestHook,
    build_csr,
    identifier_of,
)
from acme_ca.bench.jws import KeyKind, generate_key, jwk_of, jwk_thumbprint, sign_jws
from acme_ca.bench.report import LatencySummary, LevelResult, percentile
from acme_ca.bench.responder import Dns01Solver, Http01Responder, Http01Solver
from acme_ca.bench.runner import BenchConfig, run_benchmark, run_level

__all__ = [
    "AcmeClient",
    "AcmeProblem",
    "AcmeResponse",
    "Endpoint",
    "PollFailed",
    "RequestHook",
    "build_csr",
    "identifier_of",
    "KeyKind",
    "generate_key",
    "jwk_of",
    "jwk_thumbprint",
    "sign_jws",
    "Http01Responder",
    "Http01Solver",
    "Dns01Solver",
    "BenchConfig",
    "run_benchmark",
    "run_level",
    "LevelResult",
    "LatencySummary",
    "percentile",
    "main",
]
