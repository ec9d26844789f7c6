"""Version 2 without patched(): runs recorded by version 1 cannot replay it."""

from __future__ import annotations

from worker import create_hook, step, workflow


@step
def charge_with_tax(order_id: str) -> str:
    return f"charged {order_id} with tax"


@workflow
async def ship_order(order_id: str) -> dict[str, str]:
    receipt = await charge_with_tax(order_id)
    shipped: str = await create_hook(token=f"shipped-{order_id}")
    return {"receipt": receipt, "shipped": shipped}
