"""`acme-ca`: init, serve, db, challtestsrv, bench. The only reader of configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acme_ca.ca import ensure_ca, import_ca
from acme_ca.ca.ocsp import ensure_ocsp_signer
from acme_ca.clock import SystemClock
from acme_ca.config import ConfigError, Settings, load_settings, parse_hostport

if TYPE_CHECKING:
    import socket

    from acme_ca.listener import ConnectionLimits
    from acme_ca.metrics.exposition import MetricsExporter
    from acme_ca.status import StatusListener

__all__ = ["main"]

_RESOLVED_ENV = "ACME_CA__RESOLVED_SETTINGS"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--data-dir", dest="data_dir", help="CA material and SQLite (./data)")
    parser.add_argument("--database", help="SQLAlchemy URL (default: SQLite in the data dir)")
    parser.add_argument("--key-type", dest="key_type", help="p256|p384|rsa2048|rsa3072|rsa4096")


def _add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="HOST:PORT of the HTTPS listener (127.0.0.1:14000)")
    parser.add_argument("--dns-resolver", dest="dns_resolver", help="HOST:PORT for validation")
    parser.add_argument("--http-01-port", dest="http_01_port", type=int)
    parser.add_argument("--tls-alpn-01-port", dest="tls_alpn_01_port", type=int)
    parser.add_argument(
        "--allow-private-addresses",
        dest="allow_private_addresses",
        action="store_const",
        const=True,
        help="validate against private/loopback/reserved addresses",
    )
    parser.add_argument("--tls-cert", dest="tls_cert")
    parser.add_argument("--tls-key", dest="tls_key")
    parser.add_argument("--external-url", dest="external_url", help="base URL seen by clients")
    parser.add_argument("--workers", type=int, help="processes sharing the listener (1)")
    parser.add_argument("--eab-required", dest="eab_required", action="store_const", const=True)
    parser.add_argument(
        "--rate-limits", dest="rate_limits", help="rate-limit preset: default|letsencrypt|off"
    )
    parser.add_argument(
        "--allow-new-authz",
        dest="new_authz",
        action="store_const",
        const=True,
        help="offer pre-authorization (newAuthz, RFC 8555 §7.4.1)",
    )
    parser.add_argument(
        "--require-terms-reagreement",
        dest="require_terms_reagreement",
        action="store_const",
        const=True,
        help="accounts that agreed to other terms must agree again (RFC 8555 §7.3.3)",
    )
    parser.add_argument("--log-level", dest="log_level")
    parser.add_argument(
        "--revocation-listen",
        dest="revocation_listen",
        help="HOST:PORT of the plain-HTTP CRL and OCSP listener (127.0.0.1:14080)",
    )
    parser.add_argument(
        "--revocation-url",
        dest="revocation_url",
        help="base URL of that listener as relying parties see it (behind a proxy)",
    )
    parser.add_argument(
        "--no-ocsp",
        dest="ocsp",
        action="store_const",
        const=False,
        help="no OCSP responder, no OCSP URL in certificates (CRLs only)",
    )
    parser.add_argument("--crl-shards", dest="crl_shards", type=int, help="CRL shards (4)")
    parser.add_argument(
        "--metrics-listen",
        dest="metrics_listen",
        help="HOST:PORT of the plain-HTTP Prometheus /metrics listener (127.0.0.1:14090)",
    )
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_const",
        const=False,
        help="record no metrics and serve no /metrics",
    )
    parser.add_argument(
        "--ari-retry-after",
        dest="ari_retry_after",
        type=int,
        help="seconds between a client's renewalInfo checks (21600)",
    )
    parser.add_argument(
        "--job-lease-seconds",
        dest="job_lease_seconds",
        type=int,
        help="seconds before a crashed process's validation/issuance job is taken up (60)",
    )
    limits = parser.add_argument_group("connection limits (docs/DEPLOYMENT.md)")
    limits.add_argument(
        "--max-connections",
        dest="max_connections",
        type=int,
        help="open connections per listener of each process; more are closed at once (1024)",
    )
    limits.add_argument(
        "--tls-handshake-timeout",
        dest="tls_handshake_timeout",
        type=int,
        help="seconds a TLS handshake may take (30)",
    )
    limits.add_argument(
        "--request-header-timeout",
        dest="request_header_timeout",
        type=int,
        help="seconds from a request's first byte to the end of its headers (10)",
    )
    limits.add_argument(
        "--request-timeout",
        dest="request_timeout",
        type=int,
        help="seconds from a request's first byte to its last (30)",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        dest="keep_alive_timeout",
        type=int,
        help="seconds an idle connection is kept open (5)",
    )
    limits.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout",
        type=int,
        help="seconds answers in flight get on SIGTERM before a 503 (5)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    keys = [
        "data_dir",
        "database",
        "key_type",
        "listen",
        "dns_resolver",
        "http_01_port",
        "tls_alpn_01_port",
        "allow_private_addresses",
        "tls_cert",
        "tls_key",
        "external_url",
        "workers",
        "eab_required",
        "rate_limits",
        "new_authz",
        "require_terms_reagreement",
        "log_level",
        "job_lease_seconds",
        "revocation_listen",
        "revocation_url",
        "ocsp",
        "crl_shards",
        "ari_retry_after",
        "max_connections",
        "tls_handshake_timeout",
        "request_header_timeout",
        "request_timeout",
        "keep_alive_timeout",
        "shutdown_timeout",
        "metrics",
        "metrics_listen",
    ]
    overrides = {k: getattr(args, k, None) for k in keys}
    return load_settings(config_file=args.config, overrides=overrides)


def _tls_names(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    names = ["localhost", "127.0.0.1", "::1"]
    for extra in (
        settings.listen_host,
        urlsplit(settings.base_url).hostname,
        *settings.extra_tls_names,
    ):
        if extra and extra not in names and extra not in ("0.0.0.0", "::"):  # noqa: S104
            names.append(extra)
    return names


def _ensure_ca(settings: Settings) -> bool:
    return ensure_ca(
        settings.data_dir,
        clock=SystemClock(),
        key_type=settings.key_type,  # type: ignore[arg-type]
        tls_names=_tls_names(settings),
    )


def cmd_init(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.import_cert:
        if not args.import_key:
            print("acme-ca init --import needs --cert and --key", file=sys.stderr)
            return 2
        import_ca(
            settings.data_dir,
            cert_pem=Path(args.import_cert),
            key_pem=Path(args.import_key),
            chain_pem=Path(args.import_chain) if args.import_chain else None,
            clock=SystemClock(),
        )
        print(f"imported CA into {settings.data_dir}")
    elif _ensure_ca(settings):
        print(f"created CA in {settings.data_dir}")
    else:
        print(f"CA already exists in {settings.data_dir}")
    if settings.ocsp and ensure_ocsp_signer(settings.data_dir, clock=SystemClock()):
        print(f"created the OCSP signing certificate in {settings.data_dir}")
    asyncio.run(_migrate(settings.database_url))
    print(f"root certificate: {(settings.data_dir / 'root.pem').resolve()}")
    return 0


async def _migrate(url: str) -> None:
    from acme_ca.storage.engine import create_engines
    from acme_ca.storage.migrate import upgrade

    engines = create_engines(url)
    try:
        await upgrade(engines)
    finally:
        await engines.dispose()


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    asyncio.run(_migrate(settings.database_url))
    print(f"database at head: {settings.database_url.split('@')[-1]}")
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(process)d %(name)s %(message)s"
    )
    # One line per validation request and per migration plugin is noise, and costs
    # CPU on the hot path; their warnings still show.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def app_factory() -> Any:
    """Uvicorn factory for worker processes; settings come resolved from the parent."""
    from acme_ca.service import AcmeAsgiApp

    settings = Settings.from_json(os.environ[_RESOLVED_ENV])
    # `--workers N` spawns fresh interpreters: configure their logging as the parent's
    # (a no-op in a single process, where cmd_serve already did).
    _configure_logging(settings)
    return AcmeAsgiApp(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings)
    from acme_ca.metrics import run as metrics_run

    # Before anything imports prometheus_client, which picks its multiprocess mode then;
    # the workers inherit the directory through the environment.
    metrics_dir = metrics_run.begin() if settings.metrics else None
    if metrics_dir is None:
        metrics_run.disable()
    try:
        return _serve(settings, metrics_dir)
    finally:
        if metrics_dir is not None:
            metrics_run.end(metrics_dir)


def _serve(settings: Settings, metrics_dir: Path | None) -> int:
    data_dir = settings.data_dir
    if _ensure_ca(settings):
        print(f"created CA in {data_dir}", flush=True)
    # Migrate once here so that workers do not race to create the schema.
    asyncio.run(_migrate(settings.database_url))
    settings = load_settings(
        config_file=None, environ={}, overrides={**_as_dict(settings), "auto_migrate": False}
    )
    os.environ[_RESOLVED_ENV] = settings.to_json()
    cert = settings.tls_cert or data_dir / "tls.pem"
    key = settings.tls_key or data_dir / "tls-key.pem"
    print(f"acme-ca directory: {settings.base_url}/directory", flush=True)
    print(f"root certificate to trust: {(data_dir / 'root.pem').resolve()}", flush=True)
    limits = _connection_limits(settings)
    exporter: MetricsExporter | None = None
    metrics_sock: socket.socket | None = None
    metrics_asgi: Any = None
    if metrics_dir is not None:
        from acme_ca.metrics.exposition import MetricsExporter, metrics_app
        from acme_ca.metrics.recorder import process_metrics
        from acme_ca.status import bind_listener

        process_metrics()  # this process's one recorder, made before any thread records
        exporter = MetricsExporter(metrics_dir)
        metrics_asgi = metrics_app(exporter)
        try:
            metrics_sock = bind_listener(
                *parse_hostport(settings.metrics_listen, what="metrics_listen")
            )
        except OSError as exc:
            where = settings.metrics_listen
            print(f"acme-ca: cannot serve metrics on {where}: {exc}", file=sys.stderr)
            return 1
    try:
        status_listener = _start_status_listener(settings, limits, metrics_sock, metrics_asgi)
    except Exception as exc:  # port in use, unreadable CA files, database: say which
        if metrics_sock is not None:
            metrics_sock.close()
        where = settings.revocation_listen
        print(f"acme-ca: cannot serve CRLs/OCSP on {where}: {exc}", file=sys.stderr)
        return 1
    from acme_ca.supervisor import WorkerSpec, run_single, run_workers
    from acme_ca.wfe.http_server import HttpLimits

    spec = WorkerSpec(
        host=settings.listen_host,
        port=settings.listen_port,
        certfile=str(cert),
        keyfile=str(key),
        log_level=settings.log_level,
        limits=limits,
        http=HttpLimits(
            header_timeout=settings.request_header_timeout,
            request_timeout=settings.request_timeout,
        ),
        keep_alive_timeout=settings.keep_alive_timeout,
        shutdown_timeout=settings.shutdown_timeout,
    )
    try:
        if settings.workers > 1:
            run_workers(spec, settings.workers, exporter=exporter)
        else:
            if metrics_dir is not None:
                from acme_ca.metrics import run as metrics_run

                metrics_run.end_on_signal(metrics_dir)
            run_single(spec)
    except OSError as exc:
        print(f"acme-ca: cannot listen on {settings.listen}: {exc}", file=sys.stderr)
        return 1
    finally:
        status_listener.stop()
    return 0


def _connection_limits(settings: Settings) -> ConnectionLimits:
    """The cap, within this process's open-file limit (raised toward what it needs): in
    one process the ACME, status and metrics listeners share it; a supervisor holds the
    status and metrics listeners and, at worst, a copy of every connection it hands
    (each worker's share)."""
    from acme_ca.listener import ConnectionLimits, fit_limits

    limits = ConnectionLimits(
        max_connections=settings.max_connections,
        handshake_timeout=settings.tls_handshake_timeout,
    )
    own = 2 if settings.metrics else 1  # status (and metrics)
    return fit_limits(limits, listeners=own + (1 if settings.workers == 1 else settings.workers))


def _start_status_listener(
    settings: Settings,
    limits: ConnectionLimits,
    metrics_sock: socket.socket | None = None,
    metrics_asgi: Any = None,
) -> StatusListener:
    """The CRL/OCSP listener, and the metrics listener beside it when `metrics_sock`:
    one per `serve`, in this (parent) process, whatever the number of workers
    (acme_ca.status.server explains why)."""
    from acme_ca.status import CrlSettings, StatusListener, StatusSettings, bind_listener

    if settings.ocsp:
        ensure_ocsp_signer(settings.data_dir, clock=SystemClock())
    host, port = parse_hostport(settings.revocation_listen, what="revocation_listen")
    listener = StatusListener(
        StatusSettings(
            data_dir=settings.data_dir,
            database_url=settings.database_url,
            base_url=settings.revocation_base_url,
            ocsp=settings.ocsp,
            crl=CrlSettings(shards=settings.crl_shards),
            log_level=settings.log_level,
            limits=limits,
            request_timeout=settings.request_timeout,
            keep_alive_timeout=settings.keep_alive_timeout,
        ),
        bind_listener(host, port),
        metrics_sock=metrics_sock,
        metrics_app=metrics_asgi,
    )
    listener.start()
    what = "CRLs and OCSP" if settings.ocsp else "CRLs"
    print(f"{what}: {settings.revocation_base_url}", flush=True)
    if metrics_sock is not None:
        print(f"metrics: http://{settings.metrics_listen}/metrics", flush=True)
    return listener


def _as_dict(settings: Settings) -> dict[str, Any]:
    import json

    return dict(json.loads(settings.to_json()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands with their own parsers take the rest of the line as is.
    if argv and argv[0] == "challtestsrv":
        from acme_ca.testing.challtestsrv import main as challtestsrv_main

        return challtestsrv_main(argv[1:])
    if argv and argv[0] == "bench":
        from acme_ca.bench.cli import main as bench_main

        return bench_main(argv[1:])

    parser = argparse.ArgumentParser(prog="acme-ca", description="An ACME (RFC 8555) CA server")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create (or import) the CA and the database")
    _add_common(init)
    init.add_argument("--import", dest="import_cert", metavar="CERT_PEM", help="existing CA cert")
    init.add_argument("--key", dest="import_key", metavar="KEY_PEM", help="its private key")
    init.add_argument("--chain", dest="import_chain", metavar="CHAIN_PEM", help="chain to root")
    init.set_defaults(func=cmd_init)
    serve = sub.add_parser("serve", help="serve ACME over HTTPS")
    _add_common(serve)
    _add_serve(serve)
    serve.set_defaults(func=cmd_serve)
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply Alembic migrations")
    _add_common(up)
    up.set_defaults(func=cmd_db)
    from acme_ca.admin import register_admin_commands

    admin = sub.add_parser("admin", help="operator commands (EAB, renewal, revocation, listing)")
    register_admin_commands(admin, add_common=_add_common, load=_settings)
    sub.add_parser("challtestsrv", help="challenge test server (DNS + HTTP API)")
    sub.add_parser("bench", help="benchmark full issuance flows against a directory URL")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"acme-ca: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
