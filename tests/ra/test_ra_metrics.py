"""The RA counts its events: accounts created, validations (by challenge type and result,
with their duration), CAA failures, issuances by profile and outcome, revocations by
reason. Through the in-process service, as a client drives it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from acme_ca.bench.client import PollFailed
from acme_ca.metrics.recorder import PrometheusMetrics
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue, order_with_http01


def _registry(service: AcmeService) -> CollectorRegistry:
    metrics = service.ra.ctx.metrics
    assert isinstance(metrics, PrometheusMetrics)
    return metrics.registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_an_issuance_and_its_revocation_are_counted(
    service: AcmeService, make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    r = _registry(service)
    client = await make_client()
    assert _value(r, "acme_ca_accounts_created_total") == 1
    _, cert, _ = await issue(client, ["count.metrics.test"], challtestsrv)
    http01 = {"challenge_type": "http-01", "result": "valid"}
    assert _value(r, "acme_ca_validations_total", **http01) == 1
    assert _value(r, "acme_ca_validation_duration_seconds_count", **http01) == 1
    assert _value(r, "acme_ca_orders_finalized_total", result="valid") == 1
    assert _value(r, "acme_ca_certificates_issued_total", profile="classic") == 1
    assert _value(r, "acme_ca_caa_check_failures_total", stage="validation") == 0

    await client.revoke(cert.public_bytes(serialization.Encoding.DER), reason=4)
    assert _value(r, "acme_ca_revocations_total", reason="superseded") == 1
    # Registering the same key again finds the account: nothing created.
    await client.new_account(contact=["mailto:admin@example.test"])
    assert _value(r, "acme_ca_accounts_created_total") == 1


async def test_a_caa_refusal_counts_an_invalid_validation_and_a_caa_failure(
    service: AcmeService, make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    r = _registry(service)
    challtestsrv.add_caa("caa.metrics.test", [(0, "issue", "letsencrypt.org")])
    with pytest.raises(PollFailed):
        await order_with_http01(await make_client(), ["caa.metrics.test"], challtestsrv)
    invalid = {"challenge_type": "http-01", "result": "invalid"}
    assert _value(r, "acme_ca_validations_total", **invalid) == 1
    assert _value(r, "acme_ca_caa_check_failures_total", stage="validation") == 1
    assert _value(r, "acme_ca_orders_finalized_total", result="valid") == 0
