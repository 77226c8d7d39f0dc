"""Settings: the connection limits and timeouts, and the metrics switch and address: their
defaults, sources and checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from acme_ca.cli import _settings
from acme_ca.config import ConfigError, Settings, load_settings

LIMITS = {
    "max_connections": 1024,
    "tls_handshake_timeout": 30,
    "request_header_timeout": 10,
    "request_timeout": 30,
    "keep_alive_timeout": 5,
    "shutdown_timeout": 5,
}


def test_connection_limits_have_defaults() -> None:
    settings = Settings()
    assert {name: getattr(settings, name) for name in LIMITS} == LIMITS


def test_connection_limits_come_from_the_environment_and_flags() -> None:
    settings = load_settings(
        environ={"ACME_CA_MAX_CONNECTIONS": "50", "ACME_CA_REQUEST_TIMEOUT": "20"},
        overrides={"request_timeout": 25, "shutdown_timeout": 0},
    )
    assert settings.max_connections == 50
    assert settings.request_timeout == 25  # the flag wins over the environment
    assert settings.shutdown_timeout == 0
    assert Settings.from_json(settings.to_json()) == settings  # as workers get them


def test_serve_flags_reach_the_settings() -> None:
    flags = {name: value + 1 for name, value in LIMITS.items()}
    settings = _settings(argparse.Namespace(config=None, **flags))
    assert {name: getattr(settings, name) for name in LIMITS} == flags


@pytest.mark.parametrize(
    "values",
    [
        {"max_connections": 0},
        {"tls_handshake_timeout": 0},
        {"request_header_timeout": 0},
        {"request_timeout": 0},
        {"keep_alive_timeout": 0},
        {"shutdown_timeout": -1},
        {"request_header_timeout": 31, "request_timeout": 30},
        {"max_connections": "many"},
    ],
)
def test_invalid_connection_limits_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_settings(environ={}, overrides=values)


def test_metrics_are_on_by_default_and_switched_off_or_moved_by_any_source(
    tmp_path: Path,
) -> None:
    settings = Settings()
    assert settings.metrics is True
    assert settings.metrics_listen == "127.0.0.1:14090"
    config = tmp_path / "acme-ca.toml"
    config.write_text('metrics = false\nmetrics_listen = "10.0.0.5:9100"\n')
    from_file = load_settings(config_file=config, environ={})
    assert (from_file.metrics, from_file.metrics_listen) == (False, "10.0.0.5:9100")
    from_env = load_settings(
        environ={"ACME_CA_METRICS": "false", "ACME_CA_METRICS_LISTEN": "0.0.0.0:9100"}
    )
    assert (from_env.metrics, from_env.metrics_listen) == (False, "0.0.0.0:9100")
    flags = _settings(argparse.Namespace(config=None, metrics=False, metrics_listen="[::1]:1"))
    assert (flags.metrics, flags.metrics_listen) == (False, "[::1]:1")
    with pytest.raises(ConfigError):
        load_settings(environ={}, overrides={"metrics_listen": "no-port"})
