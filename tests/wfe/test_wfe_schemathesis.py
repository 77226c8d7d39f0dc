"""schemathesis against the in-process app, from the OpenAPI document it serves.

Every operation of `acme_ca/wfe/openapi.yaml` gets generated requests, both ones
that fit the document (flattened JWS objects of random base64url strings, random
path ids) and ones that do not (wrong types, missing members, bodies that are not
JSON, other media types). Every answer must fit the document too: no 5xx, a
declared status and media type, the declared headers (Replay-Nonce on every
answer but those to a GET of another resource than newNonce) and a body matching its
schema. None of these requests carries a valid
signature, so every POST must be refused with a 4xx problem document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import acme_ca.wfe
from acme_ca.service import AcmeService
from acme_ca.wfe.app import RouteSpec

BASE = "https://acme.test:14000"
SPEC = Path(acme_ca.wfe.__file__).with_name("openapi.yaml")
SCHEMA = schemathesis.openapi.from_path(SPEC)


def _operations(schema: Any) -> list[Any]:
    """The operations of `schema`; a part it cannot load fails the test run."""
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    return operations


OPERATIONS = _operations(SCHEMA)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
STRATEGIES = {
    op.label: st.one_of(
        op.as_strategy(generation_mode=GenerationMode.POSITIVE),
        op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    for op in OPERATIONS
}
_PARAM = re.compile(r"\{[^}]*\}")


def _shape(path: str) -> str:
    """A path with its parameters blanked: `/acme/order/{order_id}` -> `/acme/order/{}`."""
    return _PARAM.sub("{}", path)


def test_document_describes_every_route(service: AcmeService) -> None:
    routes = {
        (method, _shape(route.path))
        for route in service.app.routes
        if isinstance(route, RouteSpec)
        for method in route.methods
    }
    documented = {(op.method.upper(), _shape(op.path)) for op in OPERATIONS}
    # The app answers HEAD wherever GET is routed (RFC 9110 §9.3.2); the document
    # lists HEAD only where it means something of its own (newNonce).
    implied = {("HEAD", path) for method, path in routes if method == "GET"} - documented
    assert documented == routes - implied


async def test_document_is_served_at_a_stable_path(
    http: httpx.AsyncClient, service: AcmeService
) -> None:
    resp = await http.get("/openapi.yaml")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/yaml")
    assert resp.content == SPEC.read_bytes()
    served = schemathesis.openapi.from_asgi("/openapi.yaml", service.app)
    # schemathesis leaves out the operation that serves the document itself.
    assert {op.label for op in _operations(served)} == set(STRATEGIES) - {"GET /openapi.yaml"}


def _send_kwargs(case: Any) -> dict[str, Any]:
    kwargs = case.as_transport_kwargs(base_url=BASE)
    out: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": kwargs.get("headers") or {},
        "params": kwargs.get("params") or {},
    }
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        out["content"] = data if isinstance(data, bytes) else str(data).encode()
    return out


@pytest.mark.parametrize("label", sorted(STRATEGIES))
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
async def test_operation_conforms(http: httpx.AsyncClient, label: str, data: st.DataObject) -> None:
    case = data.draw(STRATEGIES[label], label="case")
    resp = await http.request(**_send_kwargs(case))
    case.validate_response(resp, checks=CHECKS)
    # RFC 8555 §6.5, §7.2: a nonce on every answer but one to a GET of another resource than
    # newNonce (as Boulder).
    wants_nonce = case.method.upper() != "GET" or case.path == "/acme/new-nonce"
    assert ("replay-nonce" in resp.headers) is wants_nonce, (case.method, case.path)
    if case.method.upper() == "POST":
        # Unsigned garbage, however well shaped: always a 4xx problem document.
        assert 400 <= resp.status_code < 500, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == resp.status_code
