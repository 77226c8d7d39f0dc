"""The operator's revocation service: its reasons, and revocations that race."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from acme_ca.clock import SystemClock
from acme_ca.errors import Identifier
from acme_ca.model import RevocationReason
from acme_ca.ra.revocation import (
    OPERATOR_REASONS,
    OperatorRevocationService,
    RevocationOutcome,
    operator_reason,
    reason_name,
)
from acme_ca.service import AcmeService
from acme_ca.storage.inventory import Inventory
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _service(service: AcmeService) -> OperatorRevocationService:
    storage = service.ra.ctx.storage
    return OperatorRevocationService(
        storage=storage, inventory=Inventory(storage.engines), clock=SystemClock()
    )


def test_reasons_are_rfc_5280_names_in_any_case() -> None:
    allowed = {
        "unspecified": 0,
        "keyCompromise": 1,
        "affiliationChanged": 3,
        "superseded": 4,
        "cessationOfOperation": 5,
        "privilegeWithdrawn": 9,
    }
    assert {reason_name(r): int(r) for r in OPERATOR_REASONS} == allowed
    for name, code in allowed.items():
        assert operator_reason(name) == code
        assert operator_reason(f" {name.upper()} ") == code
    # Not for a leaf (CA, AA), or undoing a revocation (hold), or not a name at all.
    for refused in ("cACompromise", "certificateHold", "removeFromCRL", "aACompromise", "1", ""):
        with pytest.raises(ValueError, match="not allowed; allowed: unspecified, keyCompromise"):
            operator_reason(refused)
    assert {reason_name(r) for r in RevocationReason} >= set(allowed)


async def test_of_two_revocations_at_once_the_first_stands(
    service: AcmeService, make_client: ClientFactory, challtestsrv: ChallengeTestServer
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["ra-race.example"], challtestsrv)
    operator = _service(service)
    results = await asyncio.gather(
        operator.revoke_serials([serial_of(cert)], RevocationReason.SUPERSEDED),
        operator.revoke_serials([serial_of(cert)], RevocationReason.KEY_COMPROMISE),
    )
    by_outcome = {result.outcome: result for (result,) in results}
    assert set(by_outcome) == {RevocationOutcome.REVOKED, RevocationOutcome.ALREADY_REVOKED}
    won_result = by_outcome[RevocationOutcome.REVOKED]
    lost_result = by_outcome[RevocationOutcome.ALREADY_REVOKED]
    stored = await service.ra.ctx.storage.get_certificate_by_serial(serial_of(cert))
    assert stored is not None
    # The loser reports the revocation that stands, whichever request it was.
    assert lost_result.certificate is not None
    assert lost_result.certificate.revocation_reason == stored.revocation_reason
    assert lost_result.certificate.revoked_at == stored.revoked_at
    assert won_result.certificate is not None
    assert won_result.certificate.revoked_at is None  # as read before revoking


async def test_what_the_service_refuses(service: AcmeService) -> None:
    operator = _service(service)
    with pytest.raises(ValueError, match="account or a name"):
        await operator.revoke_live(reason=RevocationReason.UNSPECIFIED)
    with pytest.raises(ValueError, match="not allowed"):
        await operator.revoke_live(
            name=Identifier(type="dns", value="x.example"),
            reason=RevocationReason.CERTIFICATE_HOLD,
        )
    # Unknown serials are outcomes, once each, in the order given.
    results = await operator.revoke_serials(["ab", "cd", "ab"], RevocationReason.UNSPECIFIED)
    assert [(r.serial, r.outcome) for r in results] == [
        ("ab", RevocationOutcome.NOT_FOUND),
        ("cd", RevocationOutcome.NOT_FOUND),
    ]
