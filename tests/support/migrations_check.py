"""`alembic check` plus a downgrade-to-base / upgrade-to-head round trip on a scratch database."""

from __future__ import annotations

import asyncio

from alembic import command

from service.migrate import alembic_config, downgrade_to_base, upgrade_to_head
from tests.support.database import scratch_database


async def _check() -> None:
    async with scratch_database() as url:
        await asyncio.to_thread(upgrade_to_head, url)
        await asyncio.to_thread(command.check, alembic_config(url))
        await asyncio.to_thread(downgrade_to_base, url)
        await asyncio.to_thread(upgrade_to_head, url)
        await asyncio.to_thread(command.check, alembic_config(url))
    print("migrations: head matches the models; downgrade/upgrade round trip ok")


if __name__ == "__main__":
    asyncio.run(_check())
