"""Requests from other services and one-shot replies, of a RedisWorld.

Run starts (``<prefix>:start``) and hook resumes (``<prefix>:hooks:resume``) are streams any
service writes with one XADD; workers read them in the consumer group, reject what cannot be
honoured to ``<stream>:rejected`` and acknowledge the rest. Replies (webhook responses, health
check answers) are lists a waiter pops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from worker.world import StartRequest

from ._keys import GROUP
from ._queue import RedisQueue, _s, truncated_copy, undecodable
from ._retry import with_retry


class RedisRequests:
    """Request streams and replies of a RedisWorld (composed: ``RedisWorld.requests``)."""

    def __init__(self, queue: RedisQueue) -> None:
        self.q = queue
        self.core = queue.core
        self._next_request = 0  # the request stream read when only one request fits

    def _request_stream(self, kind: str) -> str:
        return self.core.keys.resume_stream() if kind == "resume" else self.core.keys.start_stream()

    async def _request(
        self, stream: str, message_id: str, fields: dict[str, str], deliveries: int
    ) -> StartRequest | None:
        """The request of one entry; None for an undecodable one, which is rejected."""
        if undecodable(fields):
            target = self.core.keys.rejected(stream)
            await self.q._set_aside(stream, target, message_id, fields, deliveries)
            return None
        kind: Literal["start", "resume"] = (
            "resume" if stream == self.core.keys.resume_stream() else "start"
        )
        return StartRequest(
            message_id=message_id, fields=fields, kind=kind, source=stream, deliveries=deliveries
        )

    async def read_start_requests(
        self, consumer: str, count: int, block_ms: int
    ) -> list[StartRequest]:
        """Requests from any service: run starts (``wf:start``) and hook resumes (``wf:hooks:resume``).

        At most ``count`` requests come back: each stream is read with COUNT count // 2 (one
        read over both on a single server; one each, concurrently, on a cluster, where they live
        in different slots: a blocking read then waits for both, see ``read_wakeups`` on the
        latency this costs an idle worker). With a count of 1, the streams take turns.
        """
        await self.core._ready()
        streams = [self.core.keys.start_stream(), self.core.keys.resume_stream()]
        if count < 2:
            self._next_request = (self._next_request + 1) % 2
            streams = [streams[self._next_request]]
        per_stream = max(1, count // len(streams))
        if self.core.cluster:
            replies = await asyncio.gather(
                *(self.q._read_group(consumer, {s: ">"}, per_stream, block_ms) for s in streams)
            )
        else:
            reading = {s: ">" for s in streams}
            replies = [await self.q._read_group(consumer, reading, per_stream, block_ms)]
        out: list[StartRequest] = []
        for reply in replies:
            for stream, rows in reply:
                for mid, fields in rows:
                    req = await self._request(stream, mid, fields, 1)
                    if req is not None:
                        out.append(req)
        return out

    async def reclaim_start_requests(
        self, consumer: str, min_idle_ms: int, count: int
    ) -> list[StartRequest]:
        """Take over requests pending longer than ``min_idle_ms`` (their worker died or stalled)."""
        await self.q.ensure_groups()
        out: list[StartRequest] = []
        for stream in (self.core.keys.start_stream(), self.core.keys.resume_stream()):
            for mid, fields, deliveries in await self.q._claim(
                stream, consumer, min_idle_ms, count
            ):
                req = await self._request(stream, mid, fields, deliveries)
                if req is not None:
                    out.append(req)
        return out

    async def reject_start_request(self, request: StartRequest, reason: str) -> None:
        """Copy the request to ``<stream>:rejected`` with the reason; big fields are cut to 1 KB."""
        await self.core._ready()
        await with_retry(
            self.core.redis.xadd,
            self.core.keys.rejected(self._request_stream(request.kind)),
            {
                **truncated_copy(request.fields),
                "message_id": request.message_id,
                "reason": reason,
                "deliveries": str(request.deliveries),
            },
            maxlen=10_000,
            approximate=True,
        )

    async def ack_start_requests(self, requests: Sequence[StartRequest]) -> None:
        await self.core._ready()
        if not requests:
            return

        async def run() -> None:
            pipe = self.core.redis.pipeline(transaction=False)
            for r in requests:
                stream = self._request_stream(r.kind)
                pipe.xack(stream, GROUP, r.message_id)
                pipe.xdel(stream, r.message_id)
            await pipe.execute()

        await with_retry(run)

    # -- replies: webhook responses and health checks ------------------------------------------

    def reply_key(self, run_id: str, reply_id: str) -> str:
        """``<prefix>:{pN}:run:<run id>:response:<id>`` beside a run, else ``<prefix>:reply:<id>``."""
        if run_id:
            return self.core.keys.response(run_id, reply_id)
        return self.core.keys.reply(reply_id)

    async def push_reply(self, run_id: str, reply_id: str, data: str, ttl_s: int = 300) -> None:
        """RPUSH a reply for a waiting ``pop_reply`` (the key expires after ``ttl_s``)."""
        await self.core._ready()
        key = self.reply_key(run_id, reply_id)
        if run_id and self.core.codec is not None:  # a webhook response: the run's data
            data = self.core.codec.encrypt(data, run_id=run_id, field="response", context=reply_id)

        async def run() -> None:
            pipe = self.core.redis.pipeline(transaction=True)
            pipe.rpush(key, data)
            pipe.expire(key, ttl_s)
            await pipe.execute()

        await with_retry(run)

    async def pop_reply(self, run_id: str, reply_id: str, timeout_s: float) -> str | None:
        """BLPOP the reply pushed by ``push_reply``; None when none came within ``timeout_s``."""
        await self.core._ready()
        key = self.reply_key(run_id, reply_id)
        got = await with_retry(self.core.redis.blpop, [key], timeout=timeout_s)
        if got is None:
            return None
        if run_id and self.core.codec is not None:
            return self.core.codec.decrypt(
                _s(got[1]), run_id=run_id, field="response", context=reply_id
            )
        return _s(got[1])
