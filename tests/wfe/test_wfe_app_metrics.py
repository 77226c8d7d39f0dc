"""The front end counts every answer by route name, method and status: unknown URLs, IDs
and odd methods make no series of their own; problem documents are counted by short type;
an answer made without dispatch (a refused body) has no duration."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from acme_ca.metrics.recorder import PrometheusMetrics
from acme_ca.service import AcmeService
from tests.acme_helpers import post_raw


def _registry(service: AcmeService) -> CollectorRegistry:
    metrics = service.front_end.metrics
    assert isinstance(metrics, PrometheusMetrics)
    assert service.ra.ctx.metrics is metrics
    return metrics.registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_answers_are_counted_by_route_never_by_path(
    service: AcmeService, http: httpx.AsyncClient
) -> None:
    r = _registry(service)
    assert (await http.get("/directory")).status_code == 200
    assert (await http.head("/acme/new-nonce")).status_code == 200
    for path in ("/acme/order/some-order-id", "/acme/order/another-order-id"):
        assert (await http.get(path)).status_code == 405  # POST-as-GET only
    for path in ("/nothing/here", "/acme/cert/abc/notanumber", "/directory/", "/x" * 40):
        assert (await http.get(path)).status_code == 404
    assert (await http.request("PURGE", "/directory")).status_code == 405
    assert (await post_raw(http, "/acme/new-order", {"protected": "x"})).status_code == 400

    requests = "acme_ca_http_requests_total"
    assert _value(r, requests, endpoint="directory", method="GET", code="200") == 1
    assert _value(r, requests, endpoint="newNonce", method="HEAD", code="200") == 1
    assert _value(r, requests, endpoint="order", method="GET", code="405") == 2
    assert _value(r, requests, endpoint="unknown", method="GET", code="404") == 4
    assert _value(r, requests, endpoint="directory", method="other", code="405") == 1
    assert _value(r, requests, endpoint="newOrder", method="POST", code="400") == 1
    assert _value(r, "acme_ca_problems_total", type="notFound") == 4
    assert _value(r, "acme_ca_problems_total", type="methodNotAllowed") == 3
    assert _value(r, "acme_ca_problems_total", type="malformed") == 1
    assert _value(r, "acme_ca_http_request_duration_seconds_count", endpoint="unknown") == 4

    labels = {
        value
        for metric in r.collect()
        if metric.name.startswith("acme_ca_")
        for sample in metric.samples
        for value in sample.labels.values()
    }
    assert not {v for v in labels if "/" in v or "order-id" in v or "notanumber" in v}
    endpoints = {
        s.labels["endpoint"]
        for m in r.collect()
        for s in m.samples
        if s.name == requests and "endpoint" in s.labels
    }
    assert endpoints == {"directory", "newNonce", "order", "unknown", "newOrder"}


async def test_a_body_refused_before_dispatch_is_counted_without_a_duration(
    service: AcmeService, http: httpx.AsyncClient
) -> None:
    r = _registry(service)
    response = await post_raw(http, "/acme/new-order", b"x" * (65 * 1024))
    assert response.status_code == 413
    requests = "acme_ca_http_requests_total"
    assert _value(r, requests, endpoint="newOrder", method="POST", code="413") == 1
    assert _value(r, "acme_ca_problems_total", type="malformed") == 1
    assert _value(r, "acme_ca_http_request_duration_seconds_count", endpoint="newOrder") == 0
