"""The benchmark loop against scripted servers: error accounting, stall detection, setup
failure; and the command line's option parsing."""

from __future__ import annotations

import time

import pytest

from acme_ca.bench.cli import _config, build_parser
from acme_ca.bench.jws import KeyKind
from acme_ca.bench.responder import Http01Responder, Http01Solver
from acme_ca.bench.runner import BenchConfig, run_level
from tests.bench.bench_fakes import fake_acme_server


async def test_failed_flows_are_counted_by_problem_type_and_workers_go_on() -> None:
    async with fake_acme_server() as fake, Http01Responder("127.0.0.1", 0) as responder:
        fake.new_order_problem = "rejectedIdentifier"
        config = BenchConfig(directory=f"{fake.base}/directory", count=5, stall_timeout=5)
        result = await run_level(config, 2, Http01Solver(responder))
    assert (result.issued, result.failed) == (0, 5)
    assert result.errors == {"urn:ietf:params:acme:error:rejectedIdentifier": 5}
    assert result.stop_reason == "count"
    assert result.endpoints["newOrder"].errors == 5
    assert "newAccount" not in result.endpoints  # set-up is not timed


async def test_a_stalled_server_stops_the_level() -> None:
    async with fake_acme_server() as fake, Http01Responder("127.0.0.1", 0) as responder:
        fake.hang_new_order = True
        config = BenchConfig(directory=f"{fake.base}/directory", count=5, stall_timeout=0.5)
        start = time.monotonic()
        result = await run_level(config, 2, Http01Solver(responder))
    assert time.monotonic() - start < 5
    assert result.stop_reason == "stall"
    assert result.issued == 0


async def test_a_duration_bounds_the_level() -> None:
    async with fake_acme_server() as fake, Http01Responder("127.0.0.1", 0) as responder:
        fake.new_order_problem = "rateLimited"
        config = BenchConfig(directory=f"{fake.base}/directory", count=None, duration=0.3)
        result = await run_level(config, 1, Http01Solver(responder))
    assert result.stop_reason == "duration"
    assert result.failed > 0
    assert 0.3 <= result.elapsed < 2


async def test_an_unreachable_server_fails_setup() -> None:
    async with Http01Responder("127.0.0.1", 0) as responder:
        config = BenchConfig(directory="http://127.0.0.1:9/directory", count=1)
        result = await run_level(config, 1, Http01Solver(responder))
    assert result.stop_reason == "setup"
    assert next(iter(result.errors)).startswith("setup: transport")


def test_options_become_a_config() -> None:
    args = build_parser().parse_args(
        [
            "--directory",
            "https://ca/dir",
            "--insecure",
            "--concurrency",
            "1,2,4",
            "--cert-key",
            "rsa2048",
            "--responder-listen",
            "127.0.0.1:5555",
        ]
    )
    assert args.concurrency == [1, 2, 4]
    config = _config(args)
    assert config.count == 100  # the default when neither count nor duration is given
    assert config.verify is False
    assert config.cert_key is KeyKind.RSA2048
    assert (config.responder_host, config.responder_port) == ("127.0.0.1", 5555)


def test_duration_alone_leaves_count_unbounded() -> None:
    args = build_parser().parse_args(["--directory", "u", "--duration", "5"])
    assert _config(args).count is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "1,x"],
        ["--concurrency", "0"],
        ["--count", "0"],
        ["--responder-listen", "5002"],
        ["--insecure", "--ca-bundle", "x.pem"],
    ],
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--directory", "u", *argv])


def test_dns01_needs_a_challtestsrv() -> None:
    with pytest.raises(ValueError, match="challtestsrv"):
        BenchConfig(directory="u", challenge="dns-01")
