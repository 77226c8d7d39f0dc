"""Responses: ACME JSON, problem documents, and the headers every response carries."""

from __future__ import annotations

import json
from typing import Any

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.protocol.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from acme_ca.protocol.problems import problem_document
from acme_ca.wfe.http_types import Response

__all__ = ["body_too_large", "json_response", "problem_response"]

# One encoder: `json.dumps` with separators builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = _ENCODER.encode(data).encode("utf-8")
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def problem_response(error: AcmeError) -> Response:
    body = _ENCODER.encode(problem_document(error)).encode("utf-8")
    response = Response(body, status_code=error.http_status, media_type=PROBLEM_CONTENT_TYPE)
    response.problem = error.type
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def body_too_large(limit: int) -> AcmeError:
    return AcmeError(
        type=ProblemType.MALFORMED, detail=f"Request body exceeds {limit} bytes", status=413
    )
