"""An order workflow: reserve stock, charge the card (retried once), wait briefly, ship.

Run it end to end with ``make run`` (or ``wf demo examples.order``).
"""

from __future__ import annotations

import asyncio

from worker import RetryableError, get_step_metadata, sleep, step, workflow


@step
async def reserve(item: str, quantity: int) -> str:
    return f"res-{item}-{quantity}"


@step(max_retries=2)
async def charge(amount_cents: int) -> str:
    if get_step_metadata().attempt == 1:
        raise RetryableError("payment gateway timed out", retry_after=0.2)
    return f"ch-{amount_cents}"


@step
def ship(reservation: str, charge_id: str) -> dict[str, str]:
    return {"reservation": reservation, "charge": charge_id, "status": "shipped"}


@workflow(name="place_order")
async def place_order(item: str, quantity: int, price_cents: int) -> dict[str, str]:
    reservation, charge_id = await asyncio.gather(
        reserve(item, quantity), charge(quantity * price_cents)
    )
    await sleep("0.5s")
    return await ship(reservation, charge_id)


DEMO_WORKFLOW = "place_order"
DEMO_ARGS = ["book", 2, 1250]
