"""commit.lua and the Python model of its rules (``tests/unit/replay_support.CommitRules``, which
the replay simulator appends through) give the same verdicts on the same random commits.

A Hypothesis state machine drives two runs of one partition (plus a run that does not exist)
with random batches of events: valid and unknown correlation ids, duplicates, events after the
run ended, patch markers (once per change, only on a running run), ``step_started`` before a retry
is due, pool claims on steps (claimed starts from the same or another task entry, results under
a stale claim), hook tokens contended by both runs, lease tokens and ``expected_seq`` fences,
leases taken and released, and now and then a foreign entry in a run's stream. Each batch goes through the real ``RedisWorld.commit`` and through the model
(at the server time the script reports), and after every step the two agree on each reply (code,
seq, per-event status and extra, the events appended) and on everything the script writes: run
status and seq, the log (type and correlation id of each entry), the entity hash, the live hooks,
the hook tokens, the timers, the status indexes and the wake-ups.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.props import bounded
from tests.support import RedisServer
from tests.unit.replay_support import TERMINAL_RUN, CommitRules, ModelCommit
from worker._events import NewEvent
from worker._ids import new_run_id
from worker._world import Commit
from world_redis import RedisWorld
from world_redis._keys import STATUSES

FAR_PAST = "1"
FAR_FUTURE = "4000000000000"  # 2096: a retry or a wait that is never due during the test
CORRS = ("step_1", "step_2", "wait_1", "wait_2", "hook_1", "hook_2", "", "step_unknown")
TOKENS = ("tok_1", "tok_2", "")
LEASES = ("lease_1", "lease_2")
# pool claims on steps (see commit.lua's header): claim tokens and the task entries they came from
CLAIMS = st.sampled_from(["claim_1", "claim_2", ""])
TASKS = ("1-0", "2-0", "")

TERMINAL_EVENTS = ("run_completed", "run_failed", "run_cancelled")
INVALID_TYPES = ("hook_conflict", "run_created", "bogus")

EventSpec = tuple[str, str, dict[str, str]]


def _event(
    etype: str, corrs: st.SearchStrategy[str], required: dict[str, str] | None = None, **fields: Any
) -> st.SearchStrategy[EventSpec]:
    """Events of one type with a correlation id of ``corrs``, the ``required`` fields and each of
    ``fields`` (strategies) maybe present."""
    must = {k: st.just(v) for k, v in (required or {}).items()}
    return st.tuples(st.just(etype), corrs, st.fixed_dictionaries(must, optional=fields))


def _run_event(etype: str, **fields: Any) -> st.SearchStrategy[EventSpec]:
    return st.tuples(st.just(etype), st.just(""), st.fixed_dictionaries({}, optional=fields))


def events(corrs: tuple[str, ...] = ()) -> st.SearchStrategy[EventSpec]:
    """Any event; its correlation id mostly one of ``corrs`` (or of its kind), else of the pool."""
    by_type = event_types(corrs)
    # sampled_from picks a type uniformly (one_of would favour its first branches); events that
    # end the run or are never valid are rarer, so that runs live long enough to go deep
    common = [t for t in by_type if t not in TERMINAL_EVENTS and t not in INVALID_TYPES]
    kinds = common * 4 + [*TERMINAL_EVENTS, *INVALID_TYPES]
    return st.sampled_from(kinds).flatmap(by_type.__getitem__)


def event_types(
    corrs: tuple[str, ...] = (), exact: str | None = None
) -> dict[str, st.SearchStrategy[EventSpec]]:
    """A strategy per event type; correlation ids as for :func:`events`, or ``exact``."""
    steps, waits, hooks = (corrs or CORRS[0:2]), (corrs or CORRS[2:4]), (corrs or CORRS[4:6])

    def pick(own: tuple[str, ...]) -> st.SearchStrategy[str]:
        return st.just(exact) if exact is not None else st.sampled_from(own * 4 + CORRS)

    # What ``make_event`` builds the appended event from is well formed, as the engine writes
    # it: a step_created has its name, and numeric payload fields (attempt of step_started,
    # retry_after) are integer text. commit.lua checks neither.
    step_events = [
        _event("step_created", pick(steps), {"name": "add"}, input=st.just("[1]")),
        _event(
            "step_started",
            pick(steps),
            attempt=st.sampled_from(["1", "2"]),
            claim=CLAIMS,
            task=st.sampled_from(TASKS),
        ),
        _event(
            "step_completed",
            pick(steps),
            result=st.just("3"),
            attempt=st.sampled_from(["1", "2", "x", ""]),
            claim=CLAIMS,
        ),
        _event(
            "step_failed",
            pick(steps),
            error=st.just('"no"'),
            attempt=st.sampled_from("1x"),
            claim=CLAIMS,
        ),
        st.tuples(
            st.just("step_retrying"),
            pick(steps),
            st.fixed_dictionaries(
                {"retry_after": st.sampled_from([FAR_PAST, FAR_FUTURE, FAR_FUTURE, "0"])},
                optional={"claim": CLAIMS},
            ),
        ),
    ]
    wait_events = [
        _event(
            "wait_created",
            pick(waits),
            until_ms=st.sampled_from([FAR_PAST, FAR_FUTURE, "x"]),
            delay_ms=st.sampled_from(["0", "3600000", "x"]),
        ),
        _event("wait_completed", pick(waits)),
    ]
    hook_events = [
        st.tuples(
            st.just("hook_created"),
            pick(hooks),
            st.fixed_dictionaries(
                {"token": st.sampled_from(TOKENS)}, optional={"metadata": st.just('{"k": 1}')}
            ),
        ),
        _event(
            "hook_received",
            pick(hooks),
            payload=st.just("7"),
            request_id=st.sampled_from(["r1", "r2"]),
        ),
        _event("hook_disposed", pick(hooks)),
    ]
    by_type = {
        etype: strategy
        for etype, strategy in zip(
            ["step_created", "step_started", "step_completed", "step_failed", "step_retrying"],
            step_events,
            strict=True,
        )
    }
    by_type.update(zip(["wait_created", "wait_completed"], wait_events, strict=True))
    by_type.update(
        zip(["hook_created", "hook_received", "hook_disposed"], hook_events, strict=True)
    )
    by_type["patch_recorded"] = _event(
        "patch_recorded",
        pick(("patch_a", "patch_b")),
        deprecated=st.sampled_from(["true", "false", "x"]),
    )
    children = corrs or ("chld_a", "chld_b")
    by_type["child_started"] = _event(
        "child_started",
        pick(children),
        {"workflow": "kid", "input": "[1]", "parent_close": "cancel"},
        run_id=st.just("wrun_kid"),
    )
    by_type["child_completed"] = _event("child_completed", pick(children), output=st.just("1"))
    by_type["child_failed"] = _event("child_failed", pick(children), error=st.just('"no"'))
    by_type["child_cancelled"] = _event("child_cancelled", pick(children))
    by_type["run_started"] = _run_event("run_started")
    for etype in ("run_completed", "run_failed", "run_cancelled"):
        by_type[etype] = _run_event(etype, output=st.just("42"), error=st.just('"boom"'))
    for etype in ("hook_conflict", "run_created", "bogus"):
        by_type[etype] = _event(etype, pick(()))
    return by_type


BATCHES = st.lists(events(), min_size=1, max_size=3)
TARGETS = st.sampled_from([0, 0, 0, 1, 1, 1, 2])  # run a, run b, a run that does not exist
TOKEN_KINDS = st.sampled_from(["none", "none", "none", "owner", "other"])
FENCES = st.sampled_from(["none", "none", "none", "current", "stale", "ahead"])


class CommitMachine(RuleBasedStateMachine):
    """Two runs under commit.lua and under the model; every reply and every written key agree."""

    runner: ClassVar[asyncio.Runner]
    url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.world = RedisWorld.from_url(self.url, prefix=f"tp{uuid.uuid4().hex[:10]}")
        self.model = CommitRules()
        self.run_ids = [new_run_id(), new_run_id(), new_run_id()]  # the third is never created
        self.base_wakeups = 0
        self.strays = 0

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    @initialize()
    def create_runs(self) -> None:
        for run_id in self.run_ids[:2]:
            assert self.run(self.world.create_run(run_id, "wf_prop", "[]"))
            self.model.create(run_id)
        self.base_wakeups = self.run(self.world.redis.xlen(self.world.keys.ready(0)))

    def teardown(self) -> None:
        async def clean() -> None:
            r = self.world.redis
            keys = [k async for k in r.scan_iter(match=f"{self.world.keys.prefix}:*")]
            if keys:
                await r.delete(*keys)
            await self.world.close()

        self.run(clean())

    # -- building a commit ---------------------------------------------------------------------

    def _token(self, run_id: str, kind: str) -> str:
        run = self.model.runs.get(run_id)
        if kind == "owner":
            return run.lease_owner if run else LEASES[0]
        return "lease_other" if kind == "other" else ""

    def _fence(self, run_id: str, kind: str) -> int:
        run = self.model.runs.get(run_id)
        seq = run.seq if run else 0
        return {"none": -1, "current": seq, "stale": max(seq - 1, 0), "ahead": seq + 1}[kind]

    def _commit(self, parts: list[tuple[int, list[EventSpec], str, str, bool]]) -> None:
        model_commits, commits = [], []
        for which, events, token_kind, fence, wake in parts:
            run_id = self.run_ids[which]
            mc = ModelCommit(
                run_id,
                events,
                self._token(run_id, token_kind),
                self._fence(run_id, fence),
                "prop" if wake else "",
            )
            model_commits.append(mc)
            commits.append(
                Commit(
                    run_id=run_id,
                    events=[NewEvent(t, c, dict(f)) for t, c, f in events],
                    token=mc.token,
                    expected_seq=mc.expected_seq,
                    wake=mc.wake,
                )
            )
        got = self.run(self.world.commit(commits))
        want = self.model.commit(model_commits, got[0].now_ms)
        for mc, g, w in zip(model_commits, got, want, strict=True):
            results = [(r.status, r.extra) for r in g.results]
            assert (g.code, g.seq, results) == (w.code, w.seq, w.results), (mc, g)
            appended = [str(e.__struct_config__.tag) for e in g.appended]
            assert appended == w.appended, (mc, g)

    # -- rules ---------------------------------------------------------------------------------

    @rule(which=TARGETS, events=BATCHES, token=TOKEN_KINDS, fence=FENCES, wake=st.booleans())
    def commit_one_run(
        self, which: int, events: list[EventSpec], token: str, fence: str, wake: bool
    ) -> None:
        self._commit([(which, events, token, fence, wake)])

    @rule(which=st.sampled_from([0, 1]), data=st.data())
    def commit_known_entities(self, which: int, data: st.DataObject) -> None:
        """Events about the steps, waits and hooks the run has (so transitions go deep)."""
        run = self.model.runs[self.run_ids[which]]
        known = tuple(sorted(c for c in [*run.entities, *run.hooks] if c and "|" not in c))
        batch = data.draw(st.lists(events(known), min_size=1, max_size=2))
        self._commit([(which, batch, "none", "none", False)])

    @rule(
        which=st.sampled_from([0, 1]),
        kind=st.sampled_from(["step", "wait", "hook"]),
        data=st.data(),
    )
    def entity_story(self, which: int, kind: str, data: st.DataObject) -> None:
        """One step, wait or hook through a random walk of its own events, one commit each."""
        corr = data.draw(st.sampled_from(CORRS[{"step": 0, "wait": 2, "hook": 4}[kind] :][:2]))
        by_type = event_types(exact=corr)
        kinds = [t for t in by_type if t.startswith(kind)]
        kinds += ["step_started", "step_started", "step_retrying"] if kind == "step" else []
        walk = data.draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=8))
        for etype in [f"{kind}_created", *walk]:
            self._commit([(which, [data.draw(by_type[etype])], "none", "none", False)])
            if etype == "step_retrying":  # a worker restarts the step at once: due or too early?
                self._commit([(which, [("step_started", corr, {})], "none", "none", False)])

    @rule(token=st.sampled_from(TOKENS[:2]), hooks=st.sampled_from(["same", "other"]))
    def contend_for_token(self, token: str, hooks: str) -> None:
        """Both runs ask for the same hook token in one batch: the later one records a conflict."""
        second = CORRS[4] if hooks == "same" else CORRS[5]
        self._commit(
            [
                (0, [("hook_created", CORRS[4], {"token": token})], "none", "none", False),
                (1, [("hook_created", second, {"token": token})], "none", "none", False),
            ]
        )

    @rule(
        first=BATCHES,
        second=BATCHES,
        pair=st.sampled_from([(0, 1), (1, 0), (0, 0), (1, 2)]),
        fence=FENCES,
        wake=st.booleans(),
    )
    def commit_two_runs(
        self,
        first: list[EventSpec],
        second: list[EventSpec],
        pair: tuple[int, int],
        fence: str,
        wake: bool,
    ) -> None:
        """Two runs in one script call (or one run twice: the second part sees the first)."""
        self._commit(
            [(pair[0], first, "none", fence, wake), (pair[1], second, "none", fence, wake)]
        )

    @rule(which=st.sampled_from([0, 1]), lease=st.sampled_from(LEASES))
    def take_lease(self, which: int, lease: str) -> None:
        run_id = self.run_ids[which]
        got = self.run(self.world.acquire(run_id, lease, 600_000))
        owner = self.run(self.world.redis.hget(self.world.keys.run(run_id), "lease_owner"))
        self.model.runs[run_id].lease_owner = owner or ""
        if got.code == "busy":  # a timer wakes the run when the holder's lease lapses
            until = self.run(self.world.redis.hget(self.world.keys.run(run_id), "lease_until"))
            self.model.timers[f"{run_id}|lease"] = int(until) + 1

    @rule(which=st.sampled_from([0, 1]), lease=st.sampled_from(LEASES))
    def release_lease(self, which: int, lease: str) -> None:
        run_id = self.run_ids[which]
        self.run(self.world.release(run_id, lease, -1))
        owner = self.run(self.world.redis.hget(self.world.keys.run(run_id), "lease_owner"))
        self.model.runs[run_id].lease_owner = owner or ""

    @precondition(lambda self: self.strays == 0)
    @rule(which=st.sampled_from([0, 1]))
    def foreign_entry(self, which: int) -> None:
        """Another writer appends to a run's stream: the script must refuse to write over it."""
        run_id = self.run_ids[which]
        run = self.model.runs[run_id]
        entry = f"{run.stream_last + 1}-0"
        self.run(self.world.redis.xadd(self.world.keys.events(run_id), {"type": "x"}, id=entry))
        run.stream_last += 1
        run.log.append(("x", ""))
        self.strays += 1

    @precondition(
        lambda self: any(
            r.status in TERMINAL_RUN or r.stream_last > r.seq for r in self.model.runs.values()
        )
    )
    @rule(which=st.sampled_from([0, 1]))
    def replace_run(self, which: int) -> None:
        """A run that ended (or whose stream another writer took) makes room for a new one."""
        run = self.model.runs[self.run_ids[which]]
        if run.status in TERMINAL_RUN or run.stream_last > run.seq:
            run_id = self.run_ids[which] = new_run_id()
            assert self.run(self.world.create_run(run_id, "wf_prop", "[]"))
            self.model.create(run_id)
            self.base_wakeups += 1

    # -- what the script wrote -----------------------------------------------------------------

    @invariant()
    def storage_matches_model(self) -> None:
        k, model = self.world.keys, self.model

        async def read() -> list[Any]:
            pipe = self.world.redis.pipeline(transaction=False)
            for run_id in self.run_ids[:2]:
                pipe.hmget(k.run(run_id), "status", "seq")
                pipe.hgetall(k.entities(run_id))
                pipe.hgetall(k.run_hooks(run_id))
                pipe.xrange(k.events(run_id))
                for status in STATUSES:
                    pipe.zscore(k.idx_status(0, status), run_id)
            for token in TOKENS:
                pipe.get(k.hook_token(token))
            pipe.zrange(k.timers(0), 0, -1, withscores=True)
            pipe.xlen(k.ready(0))
            return list(await pipe.execute())

        replies = iter(self.run(read()))
        for run_id in self.run_ids[:2]:
            run = model.runs[run_id]
            status, seq = next(replies)
            assert (status, int(seq)) == (run.status, run.seq), run_id
            assert next(replies) == run.entities, run_id
            assert next(replies) == run.hooks, run_id
            logged = [(f["type"], f.get("corr", "")) for _, f in next(replies)]
            assert logged == run.log, run_id
            indexed = [s for s in STATUSES if next(replies) is not None]
            assert indexed == [run.status], run_id
            if run.status in TERMINAL_RUN:
                assert not run.hooks
        reservations = {t: next(replies) for t in TOKENS}
        assert {t: h for t, h in reservations.items() if h is not None} == model.tokens
        assert {m: int(s) for m, s in next(replies)} == model.timers
        assert next(replies) == self.base_wakeups + model.wakeups


def test_commit_lua_and_model_agree(redis_server: RedisServer) -> None:
    """On random event batches commit.lua and the model of its rules give the same verdicts and state."""
    with asyncio.Runner() as runner:

        class Machine(CommitMachine):
            pass

        Machine.runner = runner
        Machine.url = redis_server.url
        run_state_machine_as_test(
            Machine, settings=bounded(max_examples=80, stateful_step_count=40)
        )
