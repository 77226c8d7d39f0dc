"""One typed, validated settings object from TOML, `ACME_CA_*` environment and flags.

Precedence: command-line flag > environment variable > TOML file > default.
Only `cli` reads configuration; components get plain values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ConfigError", "Settings", "load_settings", "parse_hostport"]

ENV_PREFIX = "ACME_CA_"


class ConfigError(ValueError):
    pass


def parse_hostport(value: str, *, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: str = "127.0.0.1:14000"
    """HOST:PORT of the HTTPS ACME listener."""
    data_dir: Path = Path("./data")
    """CA material, TLS certificate and (by default) the SQLite database."""
    database: str | None = None
    """SQLAlchemy URL; default: SQLite file `acme-ca.db` in the data dir."""
    dns_resolver: str | None = None
    """HOST:PORT of the DNS server used for validation; default: the system resolver."""
    http_01_port: int = 80
    tls_alpn_01_port: int = 443
    allow_private_addresses: bool = False
    """Validate against private, loopback and reserved addresses (tests, closed networks)."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    external_url: str | None = None
    """Base URL clients see (behind a proxy or load balancer); default https://listen."""
    workers: int = 1
    key_type: str = "p256"
    log_level: str = "info"
    eab_required: bool = False
    eab_bind_many: bool = False
    """Let one EAB key bind more than one account (default: each key binds one)."""
    caa_recheck_hours: int = 8
    """At finalize, CAA is checked again for authorizations validated longer ago."""
    rate_limits: str = "default"
    """Rate-limit preset: `default` (generous), `letsencrypt`, or `off` (docs/POLICY.md)."""
    rate_limit_rules: dict[str, Any] = field(default_factory=dict)
    """Per-limit values and per-account overrides on top of the preset (docs/POLICY.md)."""
    profiles: dict[str, Any] = field(default_factory=dict)
    """Certificate profiles added to or changing the shipped ones (docs/POLICY.md)."""
    default_profile: str = "classic"
    new_authz: bool = False
    """Offer pre-authorization, newAuthz (RFC 8555 §7.4.1)."""
    ip_identifiers: bool = True
    """Issue for `ip` identifiers (RFC 8738)."""
    ip_ranges: tuple[str, ...] = ()
    """CIDR ranges `ip` identifiers must fall in; empty: any address."""
    terms_of_service: str | None = None
    """URL of the terms of service (directory meta); default the CA's own /terms page."""
    require_terms_reagreement: bool = False
    """Refuse requests of accounts that agreed to other terms than `terms_of_service`
    until they agree again (RFC 8555 §7.3.3, userActionRequired)."""
    website: str | None = None
    caa_identities: tuple[str, ...] = ()
    sqlite_synchronous: str = "FULL"
    db_pool_size: int = 10
    auto_migrate: bool = True
    job_lease_seconds: int = 60
    """How long a validation or issuance job may run before another process takes it up."""
    extra_tls_names: tuple[str, ...] = field(default_factory=tuple)
    revocation_listen: str = "127.0.0.1:14080"
    """HOST:PORT of the plain-HTTP listener for CRLs and OCSP (docs/REVOCATION.md)."""
    revocation_url: str | None = None
    """That listener's base URL as relying parties reach it; default http://revocation_listen."""
    ocsp: bool = True
    """Run the OCSP responder and name it in leaves (AIA)."""
    crl_shards: int = 4
    """CRL shards per issuer; keep it fixed for the CA's life (leaves name their shard)."""
    ari_retry_after: int = 21600
    """Seconds a client should wait before asking for renewalInfo again (RFC 9773 §4.3)."""
    max_connections: int = 1024
    """Open connections per listener of each process (each worker's ACME listener, the
    status listener), TLS handshakes included; beyond it new ones are closed at once."""
    tls_handshake_timeout: int = 30
    """Seconds a client may take over its TLS handshake."""
    request_header_timeout: int = 10
    """Seconds from a request's first byte to the end of its headers (slowloris)."""
    request_timeout: int = 30
    """Seconds from a request's first byte to its last; also how long a client may read
    none of its answers."""
    keep_alive_timeout: int = 5
    """Seconds an idle connection is kept open (before its first request, between them)."""
    shutdown_timeout: int = 5
    """Seconds answers in flight get on SIGTERM; those still running then get a 503."""
    metrics: bool = True
    """Record Prometheus metrics and serve them on `metrics_listen` (docs/DEPLOYMENT.md)."""
    metrics_listen: str = "127.0.0.1:14090"
    """HOST:PORT of the plain-HTTP listener answering GET /metrics."""

    def __post_init__(self) -> None:
        parse_hostport(self.listen, what="listen")
        if self.dns_resolver:
            parse_hostport(self.dns_resolver, what="dns_resolver")
        for name in ("http_01_port", "tls_alpn_01_port"):
            if not 0 < getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be a port number")
        if self.job_lease_seconds < 1:
            raise ConfigError("job_lease_seconds must be at least 1")
        if self.rate_limits not in ("default", "letsencrypt", "off"):
            raise ConfigError("rate_limits must be one of default, letsencrypt, off")
        for cidr in self.ip_ranges:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"ip_ranges: {cidr!r} is not a CIDR range") from None
        if self.caa_recheck_hours < 0:
            raise ConfigError("caa_recheck_hours must not be negative")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.external_url and urlsplit(self.external_url).scheme not in ("http", "https"):
            raise ConfigError("external_url must be an http(s) URL")
        if self.key_type not in ("p256", "p384", "rsa2048", "rsa3072", "rsa4096"):
            raise ConfigError(f"unknown key type {self.key_type!r}")
        parse_hostport(self.revocation_listen, what="revocation_listen")
        if self.revocation_url and urlsplit(self.revocation_url).scheme not in ("http", "https"):
            raise ConfigError("revocation_url must be an http(s) URL")
        if not 1 <= self.crl_shards <= 4096:
            raise ConfigError("crl_shards must be between 1 and 4096")
        if self.ari_retry_after < 0:
            raise ConfigError("ari_retry_after must not be negative")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        for name in (
            "tls_handshake_timeout",
            "request_header_timeout",
            "request_timeout",
            "keep_alive_timeout",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (seconds)")
        if self.request_header_timeout > self.request_timeout:
            raise ConfigError("request_header_timeout must not exceed request_timeout")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown_timeout must not be negative")
        parse_hostport(self.metrics_listen, what="metrics_listen")

    @property
    def listen_host(self) -> str:
        return parse_hostport(self.listen, what="listen")[0]

    @property
    def listen_port(self) -> int:
        return parse_hostport(self.listen, what="listen")[1]

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return f"sqlite:///{(self.data_dir / 'acme-ca.db').resolve()}"

    @property
    def base_url(self) -> str:
        if self.external_url:
            return self.external_url.rstrip("/")
        host = self.listen_host
        if host in ("0.0.0.0", "::"):  # noqa: S104 -- a comparison, not a bind
            host = "127.0.0.1"
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"https://{host}:{self.listen_port}"

    @property
    def revocation_base_url(self) -> str:
        """Where leaves send relying parties for CRLs and OCSP: plain HTTP by default."""
        if self.revocation_url:
            return self.revocation_url.rstrip("/")
        host, port = parse_hostport(self.revocation_listen, what="revocation_listen")
        if host in ("0.0.0.0", "::"):  # noqa: S104 -- a comparison, not a bind
            host = "127.0.0.1"
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"http://{host}:{port}"

    @property
    def dns_resolver_address(self) -> tuple[str, int] | None:
        return parse_hostport(self.dns_resolver, what="dns_resolver") if self.dns_resolver else None

    def to_json(self) -> str:
        return json.dumps(
            {
                f.name: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self)
                for v in [getattr(self, f.name)]
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return _build(json.loads(text))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    if value is None:
        return None
    if kind.startswith("bool"):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{name}: expected a boolean, got {value!r}")
        return bool(value)
    if kind.startswith("int"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if "Path" in kind:
        return Path(value)
    if kind.startswith("dict"):
        if isinstance(value, str):  # from the environment: a JSON object
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"{name}: expected a JSON object") from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table")
        return dict(value)
    if kind.startswith("tuple"):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value)
    return str(value)


def _build(values: Mapping[str, Any]) -> Settings:
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from exc
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(values)
