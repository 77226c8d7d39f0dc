"""The coalescing transport under uvicorn's protocol: one write per loop turn, order kept."""

from __future__ import annotations

import asyncio
from typing import Any

from acme_ca.wfe.http_protocol import CoalescingTransport


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1234)}.get(name, default)


def _wrap() -> tuple[FakeTransport, CoalescingTransport]:
    inner = FakeTransport()
    return inner, CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_writes_of_one_turn_leave_as_one_write() -> None:
    inner, transport = _wrap()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(memoryview(b"body"))
    assert inner.writes == []
    assert transport.get_write_buffer_size() == 23
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


async def test_close_flushes_before_closing() -> None:
    inner, transport = _wrap()
    transport.write(b"last answer")
    transport.close()
    assert inner.events == ["write", "close"]
    assert inner.writes == [b"last answer"]
    await asyncio.sleep(0)
    assert inner.writes == [b"last answer"]


async def test_abort_drops_what_is_pending() -> None:
    inner, transport = _wrap()
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.events == ["abort"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    inner, transport = _wrap()
    transport.write(b"late")
    inner.closing = True
    await asyncio.sleep(0)
    assert inner.writes == []


async def test_other_calls_reach_the_real_transport() -> None:
    _, transport = _wrap()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert transport.is_closing() is False
