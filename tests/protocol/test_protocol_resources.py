"""JSON renderings of ACME resources (RFC 8555 §7.1)."""

from __future__ import annotations

import datetime as dt

import pytest

from acme_ca.errors import Identifier
from acme_ca.model import (
    Authorization,
    AuthzStatus,
    Challenge,
    ChallengeStatus,
    ChallengeType,
)
from acme_ca.protocol.resources import render_authz
from acme_ca.protocol.urls import Urls

URLS = Urls("https://ca.example.test")
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _authz(status: AuthzStatus, http01: ChallengeStatus) -> Authorization:
    kinds = {ChallengeType.HTTP_01: http01}
    kinds |= {ChallengeType.DNS_01: ChallengeStatus.PENDING}
    kinds |= {ChallengeType.TLS_ALPN_01: ChallengeStatus.PENDING}
    return Authorization(
        id="az",
        account_id="acct",
        identifier=Identifier(type="dns", value="a.example.test"),
        status=status,
        expires=NOW,
        challenges=tuple(
            Challenge(id=f"ch-{kind}", authz_id="az", type=kind, token="t" * 43, status=state)
            for kind, state in kinds.items()
        ),
        created_at=NOW,
    )


@pytest.mark.parametrize(
    ("status", "used"),
    [(AuthzStatus.VALID, ChallengeStatus.VALID), (AuthzStatus.INVALID, ChallengeStatus.INVALID)],
)
def test_final_authz_lists_only_the_challenge_used(
    status: AuthzStatus, used: ChallengeStatus
) -> None:
    # RFC 8555 §7.1.4: for a valid authorization, the challenge that was validated;
    # for an invalid one, the challenge that was attempted and failed.
    doc = render_authz(_authz(status, used), URLS)
    assert [(c["type"], c["status"]) for c in doc["challenges"]] == [("http-01", str(used))]


@pytest.mark.parametrize("status", [AuthzStatus.PENDING, AuthzStatus.DEACTIVATED])
def test_other_authz_lists_every_challenge(status: AuthzStatus) -> None:
    # RFC 8555 §7.1.4: a pending authorization offers every challenge it can be proven with.
    doc = render_authz(_authz(status, ChallengeStatus.PENDING), URLS)
    assert [c["type"] for c in doc["challenges"]] == ["http-01", "dns-01", "tls-alpn-01"]
