"""Version 1: charge the order, then wait until the parcel ships."""

from __future__ import annotations

from worker import create_hook, step, workflow


@step
def charge(order_id: str) -> str:
    return f"charged {order_id}"


@workflow
async def ship_order(order_id: str) -> dict[str, str]:
    receipt = await charge(order_id)
    shipped: str = await create_hook(token=f"shipped-{order_id}")
    return {"receipt": receipt, "shipped": shipped}
