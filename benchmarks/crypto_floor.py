"""The cryptographic floor of one issuance flow (issue 5), measured in-process.

What no ACME server can avoid per certificate: verify the JWS of every POST of the flow,
check the CSR (`acme_ca.ca.check_csr`, which verifies its signature), and sign the leaf
(`CertificateAuthority.issue`). The keys are the benchmark's: P-256 account and
certificate keys, a P-256 issuer made by `acme_ca.ca.create_ca`.

Each cost is CPU time (`time.process_time`) per operation, the best of several rounds
(a shared machine only ever makes a round slower). Two JWS figures are kept: the bare
ECDSA P-256 verification (`cryptography`), which is the floor, and the server's own
verification path (`parse_flattened` + `verify_signature`), for comparison.

Given `acme-ca bench --json` files, it counts the POSTs per issuance from their
per-endpoint tables and states each level's server CPU per issuance as a multiple of
the floor.

usage: .venv/bin/python benchmarks/crypto_floor.py [--rounds 7] [--iterations 500]
           [--posts N | --bench-json FILE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from acme_ca.ca import CertificateAuthority, check_csr, create_ca
from acme_ca.clock import SystemClock
from acme_ca.errors import Identifier
from acme_ca.model import IdentifierType
from acme_ca.policy.keys import KeyPolicy, spki_sha256
from acme_ca.protocol.jws import import_public_jwk, parse_flattened, verify_signature

# Requests of a flow that carry no JWS (the bench labels them so).
UNSIGNED_ENDPOINTS = frozenset({"directory", "newNonce"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def cpu_per_op(op: Callable[[], object], *, iterations: int, rounds: int) -> float:
    """Seconds of this process's CPU per call of `op`, the best of `rounds`."""
    op()  # warm caches and lazy imports
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            op()
        best = min(best, (time.process_time() - start) / iterations)
    return best


def _es256_jws(key: ec.EllipticCurvePrivateKey, url: str, payload: bytes) -> bytes:
    """A flattened JWS signed with `kid`, as an ACME client sends one (RFC 8555 §6.2)."""
    protected = _b64(
        json.dumps(
            {"alg": "ES256", "kid": "https://ca.test/acme/acct/x", "nonce": "AAAA", "url": url}
        ).encode()
    )
    body = _b64(payload)
    der = key.sign(f"{protected}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return json.dumps({"protected": protected, "payload": body, "signature": signature}).encode()


def _jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def measure(*, iterations: int, rounds: int) -> dict[str, float]:
    """Seconds of CPU per operation."""
    account_key = ec.generate_private_key(ec.SECP256R1())
    cert_key = ec.generate_private_key(ec.SECP256R1())
    name = "bench-0.example.test"
    url = "https://ca.test/acme/finalize/abc"

    # The bare ECDSA P-256 verification of a JWS signing input.
    signing_input = b"x" * 180 + b"." + b"y" * 120
    der_sig = account_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    account_public = account_key.public_key()

    def bare_verify() -> None:
        account_public.verify(der_sig, signing_input, ec.ECDSA(hashes.SHA256()))

    # The server's path: parse the flattened JWS, verify with the (cached) JOSE key.
    body = _es256_jws(account_key, url, json.dumps({"csr": "x" * 300}).encode())
    jose_key = import_public_jwk(_jwk(account_key))

    def server_verify() -> None:
        verify_signature(parse_flattened(body), jose_key)

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(cert_key, hashes.SHA256())
    )
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    identifiers = [Identifier(type=IdentifierType.DNS, value=name)]
    account_spki = spki_sha256(account_public)
    policy = KeyPolicy()

    def csr_check() -> None:
        check_csr(
            csr_der, identifiers=identifiers, account_spki_sha256=account_spki, key_policy=policy
        )

    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        create_ca(Path(tmp), clock=clock, key_type="p256")
        # The same extensions as `acme-ca serve` puts in a leaf (AIA, CRL DP, OCSP).
        ca = CertificateAuthority.load(
            Path(tmp),
            clock=clock,
            issuer_url="http://127.0.0.1:14080/{issuer}/issuer.der",
            crl_url="http://127.0.0.1:14080/{issuer}/crl/{shard}.crl",
            ocsp_url="http://127.0.0.1:14080/ocsp",
            crl_shards=4,
        )
    parsed = x509.load_der_x509_csr(csr_der)

    def sign_leaf() -> None:
        ca.issue(csr=parsed, identifiers=identifiers, serial=CertificateAuthority.new_serial())

    return {
        "jws_verify_es256_bare_s": cpu_per_op(bare_verify, iterations=iterations, rounds=rounds),
        "jws_verify_es256_server_path_s": cpu_per_op(
            server_verify, iterations=iterations, rounds=rounds
        ),
        "check_csr_s": cpu_per_op(csr_check, iterations=iterations, rounds=rounds),
        "issue_leaf_s": cpu_per_op(sign_leaf, iterations=iterations, rounds=rounds),
    }


def posts_per_issuance(level: dict[str, Any]) -> float:
    """Signed requests per issued certificate in one level of a bench JSON document."""
    posts = sum(
        int(ep["count"])
        for name, ep in level["endpoints"].items()
        if name not in UNSIGNED_ENDPOINTS
    )
    return posts / int(level["issued"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--posts", type=float, help="POSTs per issuance (else from --bench-json)")
    p.add_argument("--bench-json", nargs="*", default=[], metavar="FILE")
    p.add_argument("--json", metavar="OUT", help="write the results here")
    args = p.parse_args(argv)
    if not 1 <= args.iterations <= 100_000 or not 1 <= args.rounds <= 50:
        p.error("iterations within 1..100000, rounds within 1..50")

    costs = measure(iterations=args.iterations, rounds=args.rounds)
    levels: list[dict[str, Any]] = []
    for path in args.bench_json:
        doc = json.loads(Path(path).read_text())
        for level in doc["levels"]:
            if level["issued"]:
                levels.append(
                    {
                        "file": path,
                        "label": doc.get("label"),
                        "concurrency": level["concurrency"],
                        "posts_per_issuance": posts_per_issuance(level),
                        "server_cpu_s_per_issuance": level.get("server_cpu_s_per_issuance"),
                    }
                )
    if args.posts is not None:
        posts = args.posts
    elif levels:
        posts = sum(lv["posts_per_issuance"] for lv in levels) / len(levels)
    else:
        p.error("give --posts or --bench-json")
    floor = posts * costs["jws_verify_es256_bare_s"] + costs["check_csr_s"] + costs["issue_leaf_s"]
    server_path_floor = (
        posts * costs["jws_verify_es256_server_path_s"]
        + costs["check_csr_s"]
        + costs["issue_leaf_s"]
    )
    for lv in levels:
        cpu = lv["server_cpu_s_per_issuance"]
        lv["multiple_of_floor"] = None if cpu is None else cpu / floor

    print(f"cost per operation (CPU, best of {args.rounds} x {args.iterations}):")
    names = {
        "jws_verify_es256_bare_s": "JWS ES256 verify, bare ECDSA P-256",
        "jws_verify_es256_server_path_s": "JWS ES256 verify, server path (parse + verify)",
        "check_csr_s": "check_csr (P-256 CSR, 1 name)",
        "issue_leaf_s": "CertificateAuthority.issue (P-256 issuer)",
    }
    for key, label in names.items():
        print(f"  {label:48s} {costs[key] * 1e6:8.1f} us")
    print(f"POSTs per issuance: {posts:.2f}")
    print(f"floor per issuance: {floor * 1e3:.3f} ms")
    print(f"  (with the server's JWS path instead of bare ECDSA: {server_path_floor * 1e3:.3f} ms)")
    for lv in levels:
        mult = lv["multiple_of_floor"]
        cpu = lv["server_cpu_s_per_issuance"]
        if mult is not None:
            print(
                f"  {lv['label']} c={lv['concurrency']}: {cpu * 1e3:.2f} ms CPU/issuance"
                f" = {mult:.1f}x floor ({lv['posts_per_issuance']:.2f} POSTs/issuance)"
            )
    if args.json:
        out = {
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rounds": args.rounds,
            "iterations": args.iterations,
            "costs_s": costs,
            "posts_per_issuance": posts,
            "floor_s": floor,
            "floor_with_server_jws_path_s": server_path_floor,
            "levels": levels,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
