"""Problem documents (RFC 7807) rendered from `AcmeError` (RFC 8555 §6.7)."""

from __future__ import annotations

from typing import Any

from acme_ca.errors import AcmeError, ProblemType, SubProblem

__all__ = ["CONTENT_TYPE", "problem_document", "subproblem_document"]

CONTENT_TYPE = "application/problem+json"


def _wire_type(problem_type: ProblemType) -> str:
    # RFC 8555 §6.7: ACME problems carry an ACME error type. 404, 405 and 409 have no
    # type of their own; as Boulder and Pebble, they are `malformed` with that status.
    if problem_type.startswith("about:"):
        return str(ProblemType.MALFORMED)
    return str(problem_type)


def subproblem_document(sub: SubProblem) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": _wire_type(sub.type), "detail": sub.detail}
    if sub.identifier is not None:
        doc["identifier"] = {"type": sub.identifier.type, "value": sub.identifier.value}
    return doc


def problem_document(error: AcmeError, *, with_status: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": _wire_type(error.type), "detail": error.detail}
    if with_status:
        doc["status"] = error.http_status
    if error.subproblems:
        doc["subproblems"] = [subproblem_document(s) for s in error.subproblems]
    doc.update(error.extra)
    return doc
