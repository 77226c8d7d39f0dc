"""Row codec: timestamps as integer microseconds since the epoch, both ways."""

from __future__ import annotations

import datetime as dt

import pytest

from acme_ca.storage.codec import from_us, to_us

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "micros",
    [0, 1, 999_999, 1_000_000, 1_764_581_234_567_891, 4_102_444_799_999_999, -1, -1_000_001],
)
def test_microseconds_round_trip_exactly(micros: int) -> None:
    value = from_us(micros)
    assert value == _EPOCH + dt.timedelta(microseconds=micros)
    assert value.tzinfo is not None
    assert to_us(value) == micros
