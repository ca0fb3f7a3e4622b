"""Hostile uploads against a real `ledgerlink serve`: memory stays bounded and comes back.

50 connections each send a body of 10 MiB - 1 to the webhook with well-formed-looking
signature headers, and 50 more the same to `PATCH /v1/invoices/X` without a key. Before the
body budget they took the process from about 240 to 730 MB (and it kept 520 MB after they
closed); the API pod's limit is 512 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil
import pytest

from tests.faults.support import Service, migrated_postgres

pytestmark = pytest.mark.faults

MIB = 1024 * 1024
BODY = 10 * MIB - 1
CONNECTIONS = 50
CHUNK = b"x" * (256 * 1024)


def _request_head(path: str, method: str, extra: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: ledgerlink\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY}\r\n{extra}\r\n"
    ).encode()


WEBHOOK_HEAD = _request_head(
    "/v1/webhooks/sage/postings",
    "POST",
    f"webhook-id: msg_hostile\r\nwebhook-timestamp: {int(time.time())}\r\n"
    "webhook-signature: v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
)
PATCH_HEAD = _request_head("/v1/invoices/X", "PATCH", "")


async def _upload(port: int, head: bytes) -> bytes:
    """Send the head and as much of the body as the server takes; return what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        sent = 0
        while sent < BODY:
            piece = CHUNK[: BODY - sent]
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
        return await asyncio.wait_for(reader.read(4096), 60)
    except (ConnectionError, TimeoutError):
        # Refused early: the server answered and closed while we were still sending.
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(reader.read(4096), 5)
        return b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_fifty_hostile_ten_megabyte_uploads_stay_under_300_mb() -> None:
    async with migrated_postgres() as pg:
        with Service(pg.url, run_worker="false") as service:
            process = psutil.Process(service.proc.pid)  # type: ignore[union-attr]
            baseline = process.memory_info().rss
            peak = baseline
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, process.memory_info().rss)
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            uploads = [_upload(service.port, WEBHOOK_HEAD) for _ in range(CONNECTIONS)]
            uploads += [_upload(service.port, PATCH_HEAD) for _ in range(CONNECTIONS)]
            answers = await asyncio.gather(*uploads)
            done.set()
            await sampler
            await asyncio.sleep(1)
            after = process.memory_info().rss

        statuses = sorted({a.split(b" ", 2)[1].decode() if a else "reset" for a in answers})
        print(
            f"\nRSS {baseline / MIB:.0f} MB before, {peak / MIB:.0f} MB at most during "
            f"{2 * CONNECTIONS} uploads of 10 MiB, {after / MIB:.0f} MB after; answers {statuses}"
        )
        webhook, patch = answers[:CONNECTIONS], answers[CONNECTIONS:]
        # Each webhook upload was read and refused (401: a signature over other bytes) or
        # refused unread for want of room (503 with Retry-After); each PATCH refused unread.
        # An answer given before the body was read can be lost to the client: closing a
        # socket with unread data resets the connection. Those are refusals too.
        for answer in webhook + patch:
            assert answer == b"" or answer.startswith((b"HTTP/1.1 401 ", b"HTTP/1.1 503 ")), answer[
                :200
            ]
            if answer.startswith(b"HTTP/1.1 503 "):
                assert b"retry-after: 2" in answer.lower()
        assert not [a for a in patch if a.startswith(b"HTTP/1.1 503 ")]
        assert sum(a.startswith(b"HTTP/1.1 401 ") for a in webhook) >= 1
        assert peak < 300 * MIB
        assert after < baseline + 40 * MIB
