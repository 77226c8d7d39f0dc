"""Resource ids (`ra.context.new_id`): unique, unguessable, URL-safe, and sorted by time."""

from __future__ import annotations

import base64
import re
import time

from acme_ca.ra.context import new_id, new_token

_URL_SAFE = re.compile(r"[0-9a-v]{24}")


def test_ids_are_url_safe_and_fixed_length() -> None:
    for _ in range(100):
        assert _URL_SAFE.fullmatch(new_id())


def test_ids_sort_by_creation_time() -> None:
    # Ids made in later milliseconds sort after earlier ones, byte for byte, so that new
    # rows go to the right-hand end of every B-tree on the id.
    earlier = [new_id() for _ in range(20)]
    time.sleep(0.002)
    later = [new_id() for _ in range(20)]
    assert max(earlier) < min(later)


def test_ids_start_with_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    body = base64.b32hexdecode(new_id().upper())
    after = time.time_ns() // 1_000_000
    assert before <= int.from_bytes(body[:6], "big") <= after


def test_ids_carry_72_random_bits() -> None:
    # Within one millisecond, ids differ in their random part.
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    tails = {base64.b32hexdecode(i.upper())[6:] for i in ids}
    assert len(tails) == 2000
    assert all(len(t) == 9 for t in tails)


def test_tokens_have_at_least_128_bits() -> None:
    # RFC 8555 §8.1: a challenge token has at least 128 bits of entropy, base64url.
    token = new_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 16
