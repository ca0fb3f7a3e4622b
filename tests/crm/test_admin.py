"""Dead letters sent again all at once (the console's "retry all")."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from service.crm import admin
from tests.support.factories import add_message
from tests.support.queries import messages


async def test_every_dead_letter_goes_back_in_line_in_one_go(engine: AsyncEngine) -> None:
    dead = [
        await add_message(engine, f"INV-{i}", "Paid", "0.00", state="dead", attempts=8)
        for i in range(3)
    ]
    pending = await add_message(engine, "INV-9", "Paid", "0.00", attempts=2)
    delivered = await add_message(engine, "INV-8", "Paid", "0.00", state="delivered", attempts=1)
    async with engine.begin() as conn:
        assert await admin.retry_all_dead_letters(conn) == 3
    rows = await messages(engine)
    assert [(rows[i].state, rows[i].attempts) for i in dead] == [("pending", 0)] * 3
    assert (rows[pending].state, rows[pending].attempts) == ("pending", 2)
    assert (rows[delivered].state, rows[delivered].attempts) == ("delivered", 1)
    async with engine.begin() as conn:
        assert await admin.retry_all_dead_letters(conn) == 0
