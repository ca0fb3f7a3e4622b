"""Slow and oversized clients against a real `ledgerlink serve` (its own uvicorn settings).

Slowloris connections that trickle their headers or their bodies do not hold up anyone else;
a trickled body gets its 408 and its connection closed; a megabyte of headers is refused.
tests/security/test_limits.py covers the same in-process, quickly; this one checks the
server configuration the `ledgerlink serve` command really runs with.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from tests.faults.support import ADMIN, Service, migrated_postgres

pytestmark = pytest.mark.faults

TIMEOUT = 1.0


async def _header_bomb(port: int) -> bytes:
    """A request whose headers go on for a megabyte: what comes back before the hang-up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(128):
            writer.write(f"X-Filler-{i}: ".encode() + b"a" * 8000 + b"\r\n")
            await writer.drain()
        writer.write(b"\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # refused mid-way: the server hung up on us
    with contextlib.suppress(ConnectionError):
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


async def test_slow_and_oversized_clients_do_not_hold_up_the_others() -> None:
    async with migrated_postgres() as pg:
        service = Service(pg.url, request_timeout_seconds=str(TIMEOUT))
        await asyncio.to_thread(service.start)
        connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            answer = await _header_bomb(service.port)
            assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]

            header_tricklers = []
            for _ in range(40):
                reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
                writer.write(b"GET /v1/invoices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                header_tricklers.append((reader, writer))
            body_tricklers = []
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
                writer.write(
                    b"POST /v1/sync/trigger HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: {ADMIN['Authorization']}\r\n".encode()
                    + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
                body_tricklers.append((reader, writer))
            connections = header_tricklers + body_tricklers

            async def keep_trickling() -> None:
                while True:
                    await asyncio.sleep(TIMEOUT / 4)
                    for _, writer in connections:
                        with contextlib.suppress(ConnectionError):
                            writer.write(b" ")

            trickling = asyncio.create_task(keep_trickling())
            try:
                async with httpx.AsyncClient(base_url=service.base_url) as http:
                    answers = await asyncio.gather(
                        *[http.get("/healthz", timeout=10) for _ in range(20)],
                        *[http.get("/v1/invoices", headers=ADMIN, timeout=10) for _ in range(20)],
                    )
                    assert [a.status_code for a in answers] == [200] * 40
                    for reader, _ in body_tricklers:
                        answer = await asyncio.wait_for(reader.read(), timeout=TIMEOUT * 10)
                        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                    # Still serving, with the header tricklers still connected.
                    assert (await http.get("/readyz", timeout=10)).status_code == 200
            finally:
                trickling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trickling
        finally:
            for _, writer in connections:
                writer.close()
            await asyncio.to_thread(service.stop)
        assert service.proc is not None
        assert service.proc.returncode == 0, service.output[-3000:]
