"""What acme-ca counts, and the one object every component records through.

Components hold a `Metrics` (the composition root injects it): the base class records
nothing (metrics off, and the default of every component), `PrometheusMetrics`
records into prometheus_client metrics. In a serving process those live in the files
of the run's directory (`acme_ca.metrics.run`), which the metrics listener adds up over
every process; elsewhere (tests) in memory, in `PrometheusMetrics.registry`.

Label values come from closed sets only: route names, methods folded to
GET/HEAD/POST/other, the statuses the server itself answers, the problem, challenge
and revocation-reason vocabularies, profile names from the configuration. Nothing a
client chooses (a path, an identifier, an account, an address) becomes a label.

A request costs a few dictionary lookups and three or four value updates (the
children are kept, so `labels()` runs once per label set). Each update is
prometheus_client's: an uncontended lock of this process and, in multiprocess mode, an
8-byte store into the mapped file; nothing waits on another process.

prometheus_client is imported when the first `PrometheusMetrics` is made, not with
this module: it chooses multiprocess or in-memory values when first imported, and this
module comes in with the RA and the front end, before `serve` has named its run's
directory (`acme_ca.metrics.run`).

Must not: import any component (it is imported by the front end, the RA and the
listeners).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, ClassVar

from acme_ca.errors import ProblemType
from acme_ca.metrics.run import ENV
from acme_ca.model import ChallengeType

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "NO_LISTENER",
    "NO_METRICS",
    "REQUEST_BUCKETS",
    "UNKNOWN_ENDPOINT",
    "VALIDATION_BUCKETS",
    "ListenerMetrics",
    "Metrics",
    "PrometheusMetrics",
    "problem_name",
    "process_metrics",
]

# An ACME request is 1-20 ms of work; a challenge POST waits up to
# challenge_wait_seconds (0.5 s) for its validation; past 10 s something is stuck.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From a loopback http-01 (milliseconds) to the VA's own bounds (DNS 5 s, http-01 20 s).
VALIDATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
)  # fmt: skip
UNKNOWN_ENDPOINT = "unknown"
"""The endpoint of a request whose path is no route (a 404)."""

_METHODS = {"GET": "GET", "HEAD": "HEAD", "POST": "POST"}
_CHALLENGE_TYPES = frozenset(str(t) for t in ChallengeType)


def problem_name(problem: str) -> str:
    """The short name of a problem type: `badNonce` for
    urn:ietf:params:acme:error:badNonce, `notFound` for about:blank#notFound."""
    return problem.rsplit(":", 1)[-1].rsplit("#", 1)[-1]


_PROBLEMS = {str(t): problem_name(t) for t in ProblemType}


class ListenerMetrics:
    """One listener's connections: open now, refused since the start. This base records
    nothing."""

    __slots__ = ()

    def opened(self) -> None:
        pass

    def closed(self) -> None:
        pass

    def refused(self) -> None:
        pass


NO_LISTENER = ListenerMetrics()


class _PrometheusListener(ListenerMetrics):
    __slots__ = ("_open", "_refused")

    def __init__(self, open_: Gauge, refused: Counter) -> None:
        self._open = open_
        self._refused = refused

    def opened(self) -> None:
        self._open.inc()

    def closed(self) -> None:
        self._open.dec()

    def refused(self) -> None:
        self._refused.inc()


class Metrics:
    """The recording interface. This base records nothing: what components hold when
    metrics are off (and by default)."""

    enabled: ClassVar[bool] = False

    def request(
        self, endpoint: str, method: str, status: int, problem: str | None, seconds: float | None
    ) -> None:
        """One answer of the ACME front end: `endpoint` a route name (or
        UNKNOWN_ENDPOINT), `problem` the answer's problem type if it is a problem
        document, `seconds` from dispatch to answer (None: refused before dispatch)."""

    def validation(self, challenge_type: str, valid: bool, seconds: float) -> None:
        """One validation run by the VA (CAA alongside), valid or not."""

    def caa_failure(self, stage: str) -> None:
        """CAA refused or could not be checked: at `validation` or at `finalize`."""

    def order_finalized(self, valid: bool) -> None:
        """An issuance ended: the certificate stored (valid) or the order failed."""

    def certificate_issued(self, profile: str) -> None:
        pass

    def revocation(self, reason: str) -> None:
        """An ACME revocation, by RFC 5280 reason name."""

    def account_created(self) -> None:
        pass

    def worker_restarted(self) -> None:
        """The supervisor restarted a worker that died."""

    def listener(self, name: str) -> ListenerMetrics:
        """The connection counts of the listener `name` (acme, status, metrics)."""
        return NO_LISTENER


NO_METRICS = Metrics()


class PrometheusMetrics(Metrics):
    """Records into prometheus_client metrics registered in `registry` (a private one
    by default). One per process when the values are multiprocess: two would each
    write their own copy of a series into the process's file."""

    enabled: ClassVar[bool] = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        if os.environ.get(ENV) and not getattr(values.ValueClass, "_multiprocess", False):
            # Its values would stay in this process: a scrape would never see them.
            raise RuntimeError(
                f"prometheus_client was imported before {ENV} was set (acme_ca.metrics.run)"
            )
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._http_requests = Counter(
            "acme_ca_http_requests",
            "ACME requests answered, by route, method and status",
            ["endpoint", "method", "code"],
            registry=r,
        )
        self._http_duration = Histogram(
            "acme_ca_http_request_duration_seconds",
            "Time from dispatch to answer of ACME requests, by route",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._problems = Counter(
            "acme_ca_problems", "Problem documents sent, by short type", ["type"], registry=r
        )
        self._validations = Counter(
            "acme_ca_validations",
            "Challenge validations run, by challenge type and result",
            ["challenge_type", "result"],
            registry=r,
        )
        self._validation_duration = Histogram(
            "acme_ca_validation_duration_seconds",
            "Time a validation took (challenge and CAA), by challenge type and result",
            ["challenge_type", "result"],
            buckets=VALIDATION_BUCKETS,
            registry=r,
        )
        self._caa_failures = Counter(
            "acme_ca_caa_check_failures",
            "CAA checks that refused issuance or could not be made, by stage",
            ["stage"],
            registry=r,
        )
        self._orders_finalized = Counter(
            "acme_ca_orders_finalized",
            "Issuances ended: valid (certificate stored) or invalid (order failed)",
            ["result"],
            registry=r,
        )
        self._certificates = Counter(
            "acme_ca_certificates_issued",
            "Certificates issued, by profile",
            ["profile"],
            registry=r,
        )
        self._revocations = Counter(
            "acme_ca_revocations",
            "Certificates revoked through ACME, by reason",
            ["reason"],
            registry=r,
        )
        self._accounts = Counter("acme_ca_accounts_created", "Accounts created", registry=r)
        self._restarts = Counter(
            "acme_ca_worker_restarts", "Workers restarted after they died", registry=r
        )
        # Summed over the live processes: a dead worker's files are dropped
        # (mark_process_dead) and its connections with them.
        self._connections_open = Gauge(
            "acme_ca_connections_open",
            "Connections open, TLS handshakes included, by listener",
            ["listener"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self._connections_refused = Counter(
            "acme_ca_connections_refused",
            "Connections closed at once because the listener was at max_connections",
            ["listener"],
            registry=r,
        )
        # Label children, made once per label set: labels() takes a lock and builds keys.
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._problem_children: dict[str, Counter] = {}

    def request(
        self, endpoint: str, method: str, status: int, problem: str | None, seconds: float | None
    ) -> None:
        method = _METHODS.get(method, "other")
        key = (endpoint, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._http_requests.labels(endpoint, method, str(status))
            self._request_children[key] = counter
        counter.inc()
        if seconds is not None:
            histogram = self._duration_children.get(endpoint)
            if histogram is None:
                histogram = self._http_duration.labels(endpoint)
                self._duration_children[endpoint] = histogram
            histogram.observe(seconds)
        if problem is not None:
            name = _PROBLEMS.get(problem, "other")
            problems = self._problem_children.get(name)
            if problems is None:
                problems = self._problems.labels(name)
                self._problem_children[name] = problems
            problems.inc()

    def validation(self, challenge_type: str, valid: bool, seconds: float) -> None:
        kind = challenge_type if challenge_type in _CHALLENGE_TYPES else "other"
        result = "valid" if valid else "invalid"
        self._validations.labels(kind, result).inc()
        self._validation_duration.labels(kind, result).observe(seconds)

    def caa_failure(self, stage: str) -> None:
        self._caa_failures.labels(stage).inc()

    def order_finalized(self, valid: bool) -> None:
        self._orders_finalized.labels("valid" if valid else "invalid").inc()

    def certificate_issued(self, profile: str) -> None:
        self._certificates.labels(profile).inc()

    def revocation(self, reason: str) -> None:
        self._revocations.labels(reason).inc()

    def account_created(self) -> None:
        self._accounts.inc()

    def worker_restarted(self) -> None:
        self._restarts.inc()

    def listener(self, name: str) -> ListenerMetrics:
        # Both series exist from the start (at 0), so rate() and alerts see them.
        return _PrometheusListener(
            self._connections_open.labels(name), self._connections_refused.labels(name)
        )


_process_lock = threading.Lock()
_process: list[Metrics] = []


def process_metrics() -> Metrics:
    """The recorder of this serving process, shared by all its servers: recording into
    the run's directory when `serve` made one (metrics on), else nothing.

    Made once (under a lock: the status listener's thread may ask first)."""
    with _process_lock:
        if not _process:
            _process.append(PrometheusMetrics() if os.environ.get(ENV) else NO_METRICS)
        return _process[0]
