"""Every Redis key the engine uses, built in one place.

All keys start with one prefix (default ``wf``). A run belongs to one partition, derived from its id
and fixed for its life; the partition is the hash tag shared by the run's keys and the partition's
queue, timers and indexes, so every script touches one slot, as Redis Cluster requires (tested on
a local 3-master cluster: tests/e2e/test_cluster.py, ``make test-cluster``). A hook token's
reservation has a slot of its own (a hash of the token), so tokens are unique across all
partitions and nodes. Keys without a tag (``config``, ``start``, ``hooks:resume``, ``health``,
``workers``, ``reply:<id>``) are single keys, each in the slot of its own name.

The tags are ``{p0}``, ``{p1}``...: on a cluster they must spread over every master, and these do
(their CRC16 slots scatter: the 48 partitions a 3-master cluster defaults to fall 12, 16 and 20 on
the masters of ``redis-cli --cluster create``, checked by a test). Tags picked to sit evenly in
the slot space would balance better, but would rename the keys of every existing deployment.

    wf:config                         hash    deployment settings fixed at first use: "partitions"
    wf:start                          stream  start requests from any service (global)
    wf:{p0}:ready                     stream  wake-ups "run R has work", consumer group "workers"
                                              (runs of priority 0)
    wf:{p0}:ready:hi, wf:{p0}:ready:lo   stream  the same for runs of priority > 0 (band "hi")
                                              and < 0 (band "lo"): a read serves hi, then the
                                              stream above, then lo (see "Priority bands")
    wf:{p0}:timers                    zset    "<run id>|<correlation id>" -> due ms (also
                                              "<run id>|flow:<corr>" and "<run id>|lease")
    wf:{p0}:dlq                       stream  dead-lettered wake-ups with the reason (undecodable
                                              ones with each field as <name>:b64, raw bytes)
    wf:{p0}:idx:<status>              zset    run id -> created ms, one per status: a run is in the
                                              index of its status (together: every run)
    wf:{p0}:idx:all                   zset    not written any more (earlier versions listed every
                                              run in it too); the janitor drains it
    wf:{p0}:idx:wf:<workflow>         zset    run id -> created ms
    wf:{p0}:idx:done                  zset    run id -> completed ms (retention janitor, compactor),
                                              until the run is compacted
    wf:{p0}:workflows                 set     workflow names seen in the partition
    wf:hook:{<sha256(token)[:32]>}    string  "<run id>|<hook id>": the token's reservation (global;
                                              stale when that run does not hold that hook)
    wf:hooks:resume                   stream  hook resume requests from any service (global)
    wf:{p0}:run:<run id>              hash    the run entity (status, input, output, error, seq, lease)
    wf:{p0}:run:<run id>:ev           stream  the run's event log, entry ids <seq>-0
    wf:{p0}:run:<run id>:ent          hash    step and wait states, one field per step or wait
    wf:{p0}:run:<run id>:log          string  a finished run compacted: its hash and log in place of
                                              the run hash, :ev and :ent (zstd JSON behind a
                                              version frame: _compact.py)
    wf:{p0}:compact                   hash    the compactor's progress in idx:done: "cursor" ->
                                              completed ms up to which runs were compacted
    wf:{p0}:compacted                 list    ids of compacted runs (no longer in idx:done), in
                                              compaction order: the janitor drops them from the
                                              indexes once their :log has expired
    wf:{p0}:compact:lock              string  the worker compacting the partition now (expires)
    wf:{p0}:replica-fence             string  written to ask the replicas again while a write
                                              waits for them (WORKFLOW_REPLICA_ACKS; expires)
    wf:{p0}:run:<run id>:parents      set     "<parent run id>|<child corr>" of the runs whose
                                              workflow code awaits this run's end (child runs)
    wf:{p0}:run:<run id>:hooks        hash    the run's live hooks: hook id -> token, and
                                              "<hook id>|req|<request id>" -> seq (resumes received),
                                              "<hook id>|lost" -> token (reservation reclaimed)
    wf:{p0}:run:<run id>:stream:<n>   stream  output stream <n> of the run (see _streams.py)
    wf:{p0}:run:<run id>:streams      set     names of the run's output streams
    wf:{p0}:run:<run id>:response:<r> list    a manual webhook response on its way to the HTTP app
    wf:reply:<id>                     list    a worker's answer to a health check
    wf:health                         stream  health checks, read by every worker ahead of wake-ups
    wf:workers                        hash    worker name -> its last status report (JSON)
    wf:start:rejected, wf:hooks:resume:rejected   stream  requests refused, with the reason (fields
                                              cut to 1 KB; undecodable ones as <name>:b64)
    wf:{p0}:q:<queue>                 stream  pool tasks "run R's step S is due" of a queue other
                                              than default, and wake-ups of runs of workflows of
                                              the queue, consumer group "workers" (_pools.py)
    wf:{p0}:queues                    set     names of the queues the partition's runs used
    wf:{p0}:q:<queue>@<deployment>    stream  a lane: wake-ups and pool tasks of runs pinned to
                                              the deployment, for its workers of the queue
                                              ("default@<id>": replays), group "workers"
    wf:{p0}:q:<queue>:hi, ...:lo      stream  the bands of a queue stream or lane (also
                                              ``q:<queue>@<deployment>:hi``): its entries for runs
                                              of priority > 0 and < 0
    wf:deployments                    hash    deployment id -> JSON {workflows, first_seen_ms,
                                              last_seen_ms, workers}, renewed by its workers
                                              and left when they stop (global)
    wf:{fc}:limits                    zset    flow-control limit id -> ms of its last use (the
                                              sweeper's list; see _flow.py)
    wf:{fc}:sweeping                  string  the worker whose turn it is to sweep (PX)
    wf:{fc:<limit>}:holders           zset    "<run id>|<step id>" (or "<run id>") -> ms when its
                                              hold of a slot lapses
    wf:{fc:<limit>}:waiting           zset    parked callers, ordered by priority then arrival
    wf:{fc:<limit>}:starts            zset    rate log: "<member>|<attempt>" -> start ms
    wf:{fc:<limit>}:limit             hash    kind, concurrency, rate, window_ms, reserve_ms, used
    wf:{sched}:schedules              zset    schedule id -> created ms (the listing)
    wf:{sched}:due                    zset    schedule id -> next due ms (paused ones absent)
    wf:{sched}:schedule:<id>          hash    a schedule: spec (JSON), paused, next_due,
                                              last_run, last_tick, created_at, history (JSON,
                                              its latest decisions; see _schedules.py)

Priority bands. A run's priority (an int from -1000 to 1000, fixed at creation, stored as field
``priority`` of the run hash when not 0) picks the band of every entry enqueued for it: its
wake-ups and its steps' pool tasks go to the stream's ``:hi`` band when it is above 0, to the
``:lo`` band below 0, to the stream itself at 0 (so runs without a priority use the keys they
always did). A band is a stream of its own in the same slot (suffix after the hash tag), read with
the same consumer group; readers take hi entries before the stream's before lo's (one stream per
priority, as streaQ does; Celery's priority steps likewise). Within a band the order is arrival;
the exact integer order is kept where work waits behind a flow-control limit (``waiting``
below). Queue names and deployment ids have no ``:``, so a band never names another queue.

The schedules share the tag ``{sched}``: one script updates a schedule and the due index
atomically, on one server or a cluster alike.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from worker.world import RUN_STATUSES

STATUSES = RUN_STATUSES  # one status index per run status
GROUP = "workers"
BANDS = ("hi", "", "lo")  # priority bands in the order readers serve them ("": priority 0)


def band_of(priority: int | str | None) -> str:
    """The band of a run of ``priority`` (a run hash's field: absent or "" is 0)."""
    try:
        level = int(priority or 0)
    except ValueError:
        return ""
    return "hi" if level > 0 else "lo" if level < 0 else ""


def banded(stream: str, band: str) -> str:
    """The stream of ``band`` next to ``stream`` (a ready stream, queue stream or lane)."""
    return f"{stream}:{band}" if band else stream


def partition_of(run_id: str, partitions: int) -> int:
    """The partition of a run: stable for the run's life, the same in every process."""
    if partitions <= 1:
        return 0
    return zlib.crc32(run_id.encode()) % partitions


@dataclass(slots=True)
class Keys:
    """Key builder for one prefix and partition count.

    ``partitions`` is 0 while not known: a World configured with no count learns it from
    ``<prefix>:config`` at first use and sets it here, once (so a Keys held before sees it too).
    """

    prefix: str = "wf"
    partitions: int = 1

    def config(self) -> str:
        """Settings every process of the deployment must share, stored by the first one."""
        return f"{self.prefix}:config"

    def start_stream(self) -> str:
        return f"{self.prefix}:start"

    def tag(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    def ready(self, partition: int, band: str = "") -> str:
        return banded(f"{self.tag(partition)}:ready", band)

    def ready_bands(self, partition: int) -> list[str]:
        """The partition's ready streams in the order readers serve them (see BANDS)."""
        return [self.ready(partition, b) for b in BANDS]

    def timers(self, partition: int) -> str:
        return f"{self.tag(partition)}:timers"

    def dlq(self, partition: int) -> str:
        return f"{self.tag(partition)}:dlq"

    def idx_all(self, partition: int) -> str:
        """An index of every run, written by earlier versions only (the status indexes together
        list every run): the janitor still drains it."""
        return f"{self.tag(partition)}:idx:all"

    def idx_done(self, partition: int) -> str:
        return f"{self.tag(partition)}:idx:done"

    def idx_status(self, partition: int, status: str) -> str:
        return f"{self.tag(partition)}:idx:{status}"

    def idx_workflow(self, partition: int, workflow: str) -> str:
        return f"{self.tag(partition)}:idx:wf:{workflow}"

    def workflows(self, partition: int) -> str:
        return f"{self.tag(partition)}:workflows"

    def partition(self, run_id: str) -> int:
        if self.partitions < 1:
            raise RuntimeError(
                "the partition count is read at first use; call check_config() first"
            )
        return partition_of(run_id, self.partitions)

    def run(self, run_id: str) -> str:
        return f"{self.run_prefix(self.partition(run_id))}{run_id}"

    def run_prefix(self, partition: int) -> str:
        """What a run's hash key is named with before its id (commit.lua names run keys so)."""
        return f"{self.tag(partition)}:run:"

    def events(self, run_id: str) -> str:
        return f"{self.run(run_id)}:ev"

    def entities(self, run_id: str) -> str:
        return f"{self.run(run_id)}:ent"

    def log(self, run_id: str) -> str:
        """The compacted log of a finished run (its stream and entity hash are gone)."""
        return f"{self.run(run_id)}:log"

    def compact_state(self, partition: int) -> str:
        return f"{self.tag(partition)}:compact"

    def compacted(self, partition: int) -> str:
        return f"{self.tag(partition)}:compacted"

    def compact_lock(self, partition: int) -> str:
        return f"{self.tag(partition)}:compact:lock"

    def replica_fence(self, key: str) -> str:
        """The fence in the slot of ``key`` (any key of the engine: its hash tag, ``{pN}``),
        written to ask the replicas again while a write waits for them (see _core.py)."""
        start = key.find("{")
        end = key.find("}", start + 1)
        tag = key[start : end + 1] if start >= 0 and end > start + 1 else ""
        return f"{self.prefix}:{tag}:replica-fence" if tag else f"{self.prefix}:replica-fence"

    def run_keys(self, run_id: str) -> tuple[str, str, str, str]:
        """The run's keys: run hash, events, entities, live hooks (commit.lua derives the last
        three from the first by these suffixes)."""
        base = self.run(run_id)
        return base, f"{base}:ev", f"{base}:ent", f"{base}:hooks"

    def stream(self, run_id: str, name: str) -> str:
        """The Redis Stream holding the chunks of the run's output stream ``name``."""
        return f"{self.run(run_id)}:stream:{name}"

    def child_watchers(self, run_id: str) -> str:
        """The set of "<parent run id>|<correlation id>" awaiting the run's end (link_child.lua)."""
        return f"{self.run(run_id)}:parents"

    def streams_index(self, run_id: str) -> str:
        """The set of the run's output stream names."""
        return f"{self.run(run_id)}:streams"

    def response(self, run_id: str, reply_id: str) -> str:
        """A list where a step pushes a manual webhook response for the waiting HTTP request."""
        return f"{self.run(run_id)}:response:{reply_id}"

    def reply(self, reply_id: str) -> str:
        """A list where a worker answers a health check."""
        return f"{self.prefix}:reply:{reply_id}"

    @staticmethod
    def rejected(stream: str) -> str:
        """Where requests of a request stream that could not be honoured are copied, with why."""
        return f"{stream}:rejected"

    def hook_token(self, token: str) -> str:
        """The reservation of a hook token: its own hash tag, whatever characters the token has."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{self.prefix}:hook:{{{digest}}}"

    def run_hooks(self, run_id: str) -> str:
        return f"{self.run(run_id)}:hooks"

    def health_stream(self) -> str:
        """Health checks: a stream of its own, so that a backlog of wake-ups never delays one."""
        return f"{self.prefix}:health"

    def workers(self) -> str:
        """Each live worker's last status report (its duties, held runs), by worker name."""
        return f"{self.prefix}:workers"

    def resume_stream(self) -> str:
        return f"{self.prefix}:hooks:resume"

    def partition_keys(self, partition: int) -> list[str]:
        """KEYS[1..11] of commit.lua: ready, timers, idx done, the five status indexes, the clock
        offset, the ready streams of bands hi and lo."""
        return [
            self.ready(partition),
            self.timers(partition),
            self.idx_done(partition),
            *(self.idx_status(partition, s) for s in STATUSES),
            self.clock(partition),
            self.ready(partition, "hi"),
            self.ready(partition, "lo"),
        ]

    def clock(self, partition: int) -> str:
        """Milliseconds added to the server's time for timers and waits (absent: none). Only a
        test environment sets it, to skip time (see worker/testing.py)."""
        return f"{self.tag(partition)}:clock"

    def queue_stream(self, partition: int, queue: str, band: str = "") -> str:
        """The stream of pool tasks of ``queue`` (not ``default``: that is the ready stream)."""
        return banded(f"{self.tag(partition)}:q:{queue}", band)

    def queue_names(self, partition: int) -> str:
        """The set of queue names the partition's runs handed steps to."""
        return f"{self.tag(partition)}:queues"

    def deployments(self) -> str:
        """The deployment registry: deployment id -> JSON (workflows, first/last seen, workers)."""
        return f"{self.prefix}:deployments"

    def schedules(self) -> str:
        """Every schedule: id -> created ms (tag ``{sched}``, shared by all schedule keys)."""
        return f"{self.prefix}:{{sched}}:schedules"

    def schedules_due(self) -> str:
        """Unpaused schedules by their next due time (ms)."""
        return f"{self.prefix}:{{sched}}:due"

    def schedule(self, schedule_id: str) -> str:
        """A schedule's hash: its spec, state and latest decisions."""
        return f"{self.prefix}:{{sched}}:schedule:{schedule_id}"

    def flow_registry(self) -> str:
        """Every flow-control limit in use: limit id -> ms of its last registration."""
        return f"{self.prefix}:{{fc}}:limits"

    def flow_sweep_turn(self) -> str:
        """The worker sweeping the limits now (expires after one sweep interval)."""
        return f"{self.prefix}:{{fc}}:sweeping"

    def flow_keys(self, limit: str) -> tuple[str, str, str, str]:
        """A limit's holders, waiting, starts and limit hash: one slot (tag ``{fc:<limit>}``)."""
        base = f"{self.prefix}:{{fc:{limit}}}"
        return f"{base}:holders", f"{base}:waiting", f"{base}:starts", f"{base}:limit"
