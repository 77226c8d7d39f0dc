"""The recorder: what each call counts, labels from closed sets only, and the no-op base."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values

from acme_ca.errors import ProblemType
from acme_ca.metrics import run
from acme_ca.metrics.recorder import (
    NO_LISTENER,
    NO_METRICS,
    UNKNOWN_ENDPOINT,
    PrometheusMetrics,
    problem_name,
)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def _series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() for s in m.samples if s.name == name]


def test_problem_names_are_the_short_types() -> None:
    assert problem_name(ProblemType.BAD_NONCE) == "badNonce"
    assert problem_name(ProblemType.NOT_FOUND) == "notFound"
    assert problem_name(ProblemType.METHOD_NOT_ALLOWED) == "methodNotAllowed"


def test_a_request_counts_its_route_method_status_duration_and_problem() -> None:
    metrics = PrometheusMetrics()
    r = metrics.registry
    metrics.request("newOrder", "POST", 201, None, 0.004)
    metrics.request("newOrder", "POST", 201, None, 0.02)
    metrics.request("newOrder", "POST", 400, str(ProblemType.BAD_NONCE), 0.001)
    metrics.request("finalize", "POST", 503, str(ProblemType.SERVER_INTERNAL), None)

    requests = "acme_ca_http_requests_total"
    assert _value(r, requests, endpoint="newOrder", method="POST", code="201") == 2
    assert _value(r, requests, endpoint="newOrder", method="POST", code="400") == 1
    assert _value(r, requests, endpoint="finalize", method="POST", code="503") == 1
    duration = "acme_ca_http_request_duration_seconds"
    assert _value(r, f"{duration}_count", endpoint="newOrder") == 3
    assert _value(r, f"{duration}_bucket", endpoint="newOrder", le="0.005") == 2
    assert _value(r, f"{duration}_sum", endpoint="newOrder") == pytest.approx(0.025)
    # Answered without dispatch: counted, no duration.
    assert _value(r, f"{duration}_count", endpoint="finalize") == 0
    assert _value(r, "acme_ca_problems_total", type="badNonce") == 1
    assert _value(r, "acme_ca_problems_total", type="serverInternal") == 1


def test_labels_stay_in_closed_sets_whatever_the_client_sends() -> None:
    metrics = PrometheusMetrics()
    for i in range(500):
        metrics.request(UNKNOWN_ENDPOINT, f"M{i}", 404, str(ProblemType.NOT_FOUND), 0.001)
        metrics.request("directory", "get", 405, f"urn:x:{i}", 0.001)
    requests = _series(metrics.registry, "acme_ca_http_requests_total")
    assert sorted(map(sorted, (s.items() for s in requests))) == [
        [("code", "404"), ("endpoint", "unknown"), ("method", "other")],
        [("code", "405"), ("endpoint", "directory"), ("method", "other")],
    ]
    problems = {s["type"] for s in _series(metrics.registry, "acme_ca_problems_total")}
    assert problems == {"notFound", "other"}
    # The kept children are as few as the series.
    assert len(metrics._request_children) == 2
    assert len(metrics._problem_children) == 2


def test_validations_issuance_revocations_accounts_restarts() -> None:
    metrics = PrometheusMetrics()
    r = metrics.registry
    metrics.validation("http-01", True, 0.05)
    metrics.validation("dns-01", False, 2.0)
    metrics.validation("made-up-01", False, 0.1)
    metrics.caa_failure("validation")
    metrics.caa_failure("finalize")
    metrics.order_finalized(True)
    metrics.order_finalized(False)
    metrics.certificate_issued("classic")
    metrics.revocation("keyCompromise")
    metrics.account_created()
    metrics.worker_restarted()

    validations = "acme_ca_validations_total"
    assert _value(r, validations, challenge_type="http-01", result="valid") == 1
    assert _value(r, validations, challenge_type="dns-01", result="invalid") == 1
    assert _value(r, validations, challenge_type="other", result="invalid") == 1
    assert (
        _value(
            r,
            "acme_ca_validation_duration_seconds_bucket",
            challenge_type="dns-01",
            result="invalid",
            le="2.5",
        )
        == 1
    )
    assert _value(r, "acme_ca_caa_check_failures_total", stage="validation") == 1
    assert _value(r, "acme_ca_caa_check_failures_total", stage="finalize") == 1
    assert _value(r, "acme_ca_orders_finalized_total", result="valid") == 1
    assert _value(r, "acme_ca_orders_finalized_total", result="invalid") == 1
    assert _value(r, "acme_ca_certificates_issued_total", profile="classic") == 1
    assert _value(r, "acme_ca_revocations_total", reason="keyCompromise") == 1
    assert _value(r, "acme_ca_accounts_created_total") == 1
    assert _value(r, "acme_ca_worker_restarts_total") == 1


def test_a_listener_counts_open_and_refused_connections_from_zero() -> None:
    metrics = PrometheusMetrics()
    r = metrics.registry
    acme = metrics.listener("acme")
    assert _value(r, "acme_ca_connections_refused_total", listener="acme") == 0
    acme.opened()
    acme.opened()
    acme.closed()
    acme.refused()
    assert _value(r, "acme_ca_connections_open", listener="acme") == 1
    assert _value(r, "acme_ca_connections_refused_total", listener="acme") == 1


def test_the_base_records_nothing() -> None:
    assert not NO_METRICS.enabled
    NO_METRICS.request("newOrder", "POST", 201, None, 0.01)
    NO_METRICS.validation("http-01", True, 0.01)
    assert NO_METRICS.listener("acme") is NO_LISTENER


def test_a_recorder_refuses_values_a_scrape_would_never_see(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # This process chose in-memory values when it imported prometheus_client; with a
    # run directory named afterwards, its counts would never reach the directory.
    if getattr(values.ValueClass, "_multiprocess", False):
        pytest.skip("the test process itself runs prometheus_client in multiprocess mode")
    monkeypatch.setenv(run.ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before"):
        PrometheusMetrics()
