"""Version 2: orders are charged with tax; runs recorded by version 1 keep charging without."""

from __future__ import annotations

from worker import create_hook, patched, step, workflow


@step
def charge(order_id: str) -> str:
    return f"charged {order_id}"


@step
def charge_with_tax(order_id: str) -> str:
    return f"charged {order_id} with tax"


@workflow
async def ship_order(order_id: str) -> dict[str, str]:
    if patched("tax"):
        receipt = await charge_with_tax(order_id)
    else:
        receipt = await charge(order_id)
    shipped: str = await create_hook(token=f"shipped-{order_id}")
    return {"receipt": receipt, "shipped": shipped}
