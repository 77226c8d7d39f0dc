"""Problem documents (RFC 7807) as RFC 8555 §6.7 wants them."""

from __future__ import annotations

import pytest

from acme_ca.errors import AcmeError, Identifier, ProblemType, SubProblem
from acme_ca.protocol.problems import problem_document, subproblem_document

ERR = "urn:ietf:params:acme:error:"


def test_acme_type_and_status() -> None:
    doc = problem_document(AcmeError(type=ProblemType.BAD_NONCE, detail="stale"))
    assert doc == {"type": ERR + "badNonce", "detail": "stale", "status": 400}


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ProblemType.NOT_FOUND, 404),
        (ProblemType.METHOD_NOT_ALLOWED, 405),
        (ProblemType.CONFLICT, 409),
    ],
)
def test_http_only_problems_are_malformed_with_their_status(kind: ProblemType, status: int) -> None:
    # RFC 8555 §6.7: an ACME error type on every problem, never `about:blank`
    # (Boulder and Pebble send these as `malformed` with the HTTP status).
    doc = problem_document(AcmeError(type=kind, detail="x"))
    assert doc["type"] == ERR + "malformed"
    assert doc["status"] == status
    sub = subproblem_document(SubProblem(type=kind, detail="x"))
    assert sub["type"] == ERR + "malformed"


def test_subproblems_name_their_identifier() -> None:
    # RFC 8555 §6.7.1
    ident = Identifier(type="dns", value="a.example.test")
    error = AcmeError(
        type=ProblemType.REJECTED_IDENTIFIER,
        detail="refused",
        subproblems=(
            SubProblem(type=ProblemType.REJECTED_IDENTIFIER, detail="no", identifier=ident),
        ),
    )
    (sub,) = problem_document(error)["subproblems"]
    assert sub == {
        "type": ERR + "rejectedIdentifier",
        "detail": "no",
        "identifier": {"type": "dns", "value": "a.example.test"},
    }


def test_embedded_problem_may_omit_status() -> None:
    doc = problem_document(AcmeError(type=ProblemType.CONNECTION, detail="x"), with_status=False)
    assert "status" not in doc
