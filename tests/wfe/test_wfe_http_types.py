"""The front end's own request and response types."""

from __future__ import annotations

import pytest

from acme_ca.wfe.http_types import Headers, Request, Response


def test_request_headers_are_case_insensitive_and_first_wins() -> None:
    headers = Headers([(b"content-type", b"application/jose+json"), (b"x-a", b"1"), (b"x-a", b"2")])
    assert headers.get("Content-Type") == "application/jose+json"
    assert headers["X-A"] == "1"
    assert "x-a" in headers
    assert "x-b" not in headers
    assert headers.get("x-b", "none") == "none"
    with pytest.raises(KeyError):
        headers["x-b"]
    assert dict(headers) == {"content-type": "application/jose+json", "x-a": "1"}
    assert len(headers) == 2


def test_request_header_values_are_latin1_text() -> None:
    assert Headers([(b"x-name", b"caf\xe9")]).get("x-name") == "caf\u00e9"


def test_query_params_first_of_repeated_and_blank_kept() -> None:
    request = Request(
        method="POST",
        path="/x",
        query_string=b"cursor=a&cursor=b&empty=",
        headers=Headers([]),
        body=b"",
        client=None,
    )
    assert request.query_params == {"cursor": "a", "empty": ""}


def test_response_headers_replace_by_name() -> None:
    response = Response("hi", headers={"Link": "<a>"}, media_type="text/plain")
    response.headers["link"] = "<b>"
    assert response.headers["Link"] == "<b>"
    assert response.raw_headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"link", b"<b>"),
    ]
    assert response.body == b"hi"
    assert "content-length" not in response.headers  # added when written
