"""Version 3: no run of version 1 is left, so the old branch is gone."""

from __future__ import annotations

from worker import create_hook, deprecate_patch, step, workflow


@step
def charge_with_tax(order_id: str) -> str:
    return f"charged {order_id} with tax"


@workflow
async def ship_order(order_id: str) -> dict[str, str]:
    deprecate_patch("tax")
    receipt = await charge_with_tax(order_id)
    shipped: str = await create_hook(token=f"shipped-{order_id}")
    return {"receipt": receipt, "shipped": shipped}
