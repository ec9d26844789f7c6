-- commit.lua: validate and append events to the logs of one or more runs of ONE partition.
--
-- Every state change of a run goes through this script: it checks each event against the run and
-- step state, appends it to the run's stream with the explicit id <seq>-0 (a stale writer cannot
-- append: Redis refuses ids not above the last one), updates the run and step entities, moves the
-- run between status indexes, arms timers and enqueues wake-ups, all in one atomic call.
--
-- KEYS[1]  partition ready stream (wake-ups)              wf:{pN}:ready
-- KEYS[2]  partition timers zset (member run|corr, score due ms)  wf:{pN}:timers
-- KEYS[3]  partition index of finished runs (zset, score = completed ms)  wf:{pN}:idx:done
-- KEYS[4..8]  status indexes pending, running, completed, failed, cancelled (score = created ms;
--          a run is in one of them, and moves with its status keeping its score)
-- KEYS[9]  partition clock offset (ms added to the server's time; absent in production: only a
--          test environment that skips time sets it, see worker/testing.py)  wf:{pN}:clock
-- KEYS[10] partition ready stream of band hi (runs of priority > 0)  wf:{pN}:ready:hi
-- KEYS[11] partition ready stream of band lo (runs of priority < 0)  wf:{pN}:ready:lo
--          (a run's wake-ups go to its band's stream: the run hash's field "priority", absent
--          for priority 0, picks it; see world_redis/_keys.py)
-- The keys of each run of the batch are named from ARGV[3] and its run id (they carry the
-- partition's hash tag, so they are in the slot of the keys above; naming them here keeps the
-- call's size independent of the batch's): run hash wf:{pN}:run:<id> (ARGV[3] .. run id),
--   event stream <run hash>:ev, entity hash <run hash>:ent
--   (one field per step or wait: "<status>|<attempt>|<retry_after ms>|<started_at ms>|<resume_at ms>";
--   names, inputs, outputs and errors live in the event log only; "patch|<change id>" -> seq of
--   the change's patch_recorded; "<corr>|claim" -> "<claim token>|<task entry id>" while a pool
--   worker holds a routed step, "<corr>|queued" written by route.lua), and the run's live hooks
--   <run hash>:hooks (hook id -> token, "<hook id>|meta" -> metadata (JSON or envelope),
--   "<hook id>|req|<request id>" -> seq of the hook_received that carried that request id,
--   "<hook id>|lost" -> token when fence_hook.lua found the hook's reservation stale)
--
-- ARGV[1]  retention of finished runs, seconds
-- ARGV[2]  the batch as ONE flat MessagePack array of strings and integers (one argument keeps
--          the client's packing cheap; MessagePack, because its strings and numbers are read
--          without scanning or parsing text, unlike JSON's; flat, because every table the decoder
--          builds, and every key it adds to one, costs the server more than the values
--          themselves). Per run, in order:
--            run_id, lease token ("" = external writer), expected seq (-1 = no check),
--            wake reason ("" = none),
--            k, then k options (k = 0: none; else at least 5):
--              done: stream, group, message id of the holder's wake-up ("", "", "" = none),
--              acquire: lease ms (-1 = none), deployment id,
--              the ids of hooks whose token another hook has reserved (k - 5 of them),
--            n, then n events, each: type, correlation id, ts ("" = none: the server's time),
--              v, then v values: the event's other fields as name, value, name, value...
--          acquire: the commit takes the lease as acquire.lua does (a lease that is free, lapsed
--          or the caller's own; the run pinned to the caller's deployment if unpinned) and is
--          answered "lease" when another live worker holds it or the run is pinned to another
--          deployment; nothing of it is written unless the commit appends
--          done: when this commit ends the run (a terminal status reached here), the lease is
--          given up and that wake-up acknowledged and deleted, as release.lua does: the run's end
--          and its release are one write, and the holder makes no release call
-- ARGV[3]  the partition's run key prefix, wf:{pN}:run:
--
-- Hook tokens are reserved by the caller before the commit (reserve_hook.lua, a slot of their own)
-- and freed by it after (release_hook.lua): this script only records hooks in the run's slot.
--
-- Reply: ONE flat array (Redis converts each table of a script's reply with several lookups, which
-- cost more than the commit itself when every run and event had its own): per run, in batch
-- order, code, seq, now_ms, n, then n pairs status, extra (one per event processed), then m and
-- the m values of freed; where code is
--   "ok" | "no_run" | "lease" (lease held by another worker) | "conflict" (seq differs) |
--   "rejected" (an event was refused; later events of that run are skipped)
-- and each event processed has a pair:
--   status "ok" | "exists" (harmless duplicate, skipped; a hook_received whose field
--          request_id the hook already received is one) | "terminal" | "not_found" |
--          "too_early" | "stale" | "invalid" (an unknown type; a step, wait or hook created
--          without correlation id; a hook created without token; a patch_recorded on a run not
--          running, without change id, or with a field deprecated not "true" or "false") |
--          "corrupt" (the stream already
--          holds the position the run hash says is next: the log and the run disagree; nothing of
--          it is written)
--   extra: attempt (step_started), resume_at ms (wait_created), retry_after ms (too_early),
--          -1 for a hook_created recorded as hook_conflict (the batch names the hook as one whose
--          token another hook reserved, or the hook is marked lost: the event appended is
--          hook_conflict with the token), else 0
--   freed: hook id, token, ... of the hooks this commit ended (disposed, or their run ended):
--          the caller releases their reservations
-- Step fencing for worker pools (see world_redis/_pools.py): a step_started with a field "claim"
-- (and "task", the pool task entry id) records the claim in "<corr>|claim"; while the step runs
-- under a claim, a step_started with another claim for ANOTHER task entry answers "exists" (a
-- duplicate task: nothing appended), one for the SAME entry (reclaimed from a dead pool worker)
-- starts a new attempt under the new claim. A step_completed / step_failed / step_retrying with a
-- field "claim" is "stale" unless that claim is the recorded one. Any step event other than a
-- claimed step_started ends the recorded claim.
-- An event's ts (ms, digits), when given, is stored as its time instead of the server's: see
-- the inline fast path in worker/_worker.py. Payload fields (input, result, output, error,
-- payload, metadata) are opaque text here: JSON, or with payload encryption an envelope
-- "$enc:v1:<key id>:<base64>" (see worker/_codec.py); the script copies them, never parses them.
--
-- Child runs (see worker/_children.py): child_started (fields run_id, workflow, input,
-- parent_close) records "<corr>|child" = "started" in the entity hash and marks the run hash
-- "children"; child_completed / child_failed / child_cancelled need that record ("not_found"
-- without it, "exists" once ended) and store the end's type there. A run that ends while marked
-- "children" or "watched" (see link_child.lua) gets a wake-up with reason "ended" and its
-- <run hash>:parents set expires with it.
--
-- Events emitted: run_created is NOT handled here (see create_run.lua). All others of DESIGN.md 4,
-- hook_conflict only in place of a hook_created whose token is taken; patch_recorded (correlation
-- id = the change id, once per run: again is "exists"). A run reaching a terminal status loses its
-- hooks (listed in freed).

local retention = ARGV[1]  -- text: passed on to EXPIRE as is
local b = cmsgpack.unpack(ARGV[2])  -- the batch, flat (see the header)
local t = redis.call('TIME')
local server_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)  -- leases: no offset
local now = server_now + (tonumber(redis.call('GET', KEYS[9]) or '0') or 0)

-- Numbers go to Redis as text made here with '%d': Lua would format them as floating point
-- ('%.14g', and redis.call '%.17g'), which costs far more than the command they are part of.
local function int(n) return string.format('%d', n) end
local now_s = int(now)
-- attempts and other small counts, formatted once per call
local SMALL = {}
local function small_int(n)
  local s = SMALL[n]
  if not s then
    s = int(n)
    if n >= 0 and n < 64 then SMALL[n] = s end
  end
  return s
end

local STATUS_KEY = { pending = 4, running = 5, completed = 6, failed = 7, cancelled = 8 }
local TERMINAL = { completed = true, failed = true, cancelled = true }

local UNPACK_MAX = 1000  -- values passed to one command at most (even: HSET takes pairs)

local CHILD_END = { child_completed = true, child_failed = true, child_cancelled = true }

local STEP_EVENT = { step_created = true, step_started = true, step_completed = true,
  step_failed = true, step_retrying = true }

-- Tables are made only where needed: each one, and each key added to one, costs more than most
-- of what this script does with it (see the batch's format in the header).
local NONE = {}  -- an empty list or set that is only read
-- Lists a run's commit fills from their first position, with a count, are made once per call and
-- used again by each run: only positions up to the count are read, all of them written first.
local WANT, DIRTY, SET = {}, {}, {}

-- the value of field `name` among the v values of an event's fields at b[at + 1 .. at + v]
-- (name, value, name, value...), or nil
local function field(at, v, name)
  for j = at + 1, at + v, 2 do
    if b[j] == name then return b[j + 1] end
  end
  return nil
end

-- the position after the `count` events that start at b[at + 1] (see the header)
local function skip_events(at, count)
  for _ = 1, count do at = at + 4 + b[at + 4] end
  return at
end

-- The entity fields of a run that this commit reads are read once (one HMGET for a step and
-- its claim) and kept in `seen` (false: absent); the fields it changes are written together, in
-- one HSET and one HDEL after the run's events: every call from a script costs far more than
-- the command itself, and a step's commit touches the same few fields several times.
local function ent_load(ent_key, seen, a, b2)
  if seen[a] == nil then
    if b2 and seen[b2] == nil then
      local v = redis.call('HMGET', ent_key, a, b2)
      seen[a], seen[b2] = v[1] or false, v[2] or false
    else
      seen[a] = redis.call('HGET', ent_key, a) or false
    end
  elseif b2 and seen[b2] == nil then
    seen[b2] = redis.call('HGET', ent_key, b2) or false
  end
end

-- every entity field the run's `count` events at b[at + 1] will read, in one HMGET before the
-- first of them (an entity named by consecutive events is asked for once): the table `seen`
-- of the run's entity fields (false: absent)
local function ent_prefetch(ent_key, at, count)
  local want, n, last = WANT, 0, nil
  for _ = 1, count do
    local etype, corr = b[at + 1], b[at + 2]
    if corr ~= '' and corr ~= last then
      if STEP_EVENT[etype] then
        want[n + 1] = corr; want[n + 2] = corr .. '|claim'; n = n + 2
        last = corr
      elseif etype == 'wait_created' or etype == 'wait_completed' then
        n = n + 1; want[n] = corr
        last = corr
      elseif etype == 'patch_recorded' then
        n = n + 1; want[n] = 'patch|' .. corr
      end
    end
    at = at + 4 + b[at + 4]
  end
  if n == 4 then  -- a step's commit (a step ended, the next created and started)
    local got = redis.call('HMGET', ent_key, want[1], want[2], want[3], want[4])
    -- made at its size (when two names are one, both values are that field's)
    return { [want[1]] = got[1] or false, [want[2]] = got[2] or false,
      [want[3]] = got[3] or false, [want[4]] = got[4] or false }
  end
  local seen = {}
  -- in slices: Lua unpacks at most a few thousand values at once (a gather of 10,000 steps)
  for from = 1, n, UNPACK_MAX do
    local to = math.min(from + UNPACK_MAX - 1, n)
    local got = redis.call('HMGET', ent_key, unpack(want, from, to))
    for j = from, to do
      if seen[want[j]] == nil then seen[want[j]] = got[j - from + 1] or false end
    end
  end
  return seen
end

-- redis.call(command, key, values...) for a long list of values, in slices
local function call_sliced(command, key, values, n)
  for from = 1, n, UNPACK_MAX do
    redis.call(command, key, unpack(values, from, math.min(from + UNPACK_MAX - 1, n)))
  end
end

-- dirty: the n fields this commit changed, in order (a field changed by consecutive events is
-- listed once; one listed twice is written twice, with the same value)
local function ent_flush(ent_key, seen, dirty, n)
  if n == 2 then  -- a step's commit: two entities set
    local k1, k2 = dirty[1], dirty[2]
    local v1, v2 = seen[k1], seen[k2]
    if v1 and v2 then
      redis.call('HSET', ent_key, k1, v1, k2, v2)
      return
    end
  end
  local set, ns, del, nd = SET, 0, nil, 0
  for j = 1, n do
    local k = dirty[j]
    local v = seen[k]
    if v then
      set[ns + 1] = k; set[ns + 2] = v; ns = ns + 2
    else
      del = del or {}
      nd = nd + 1; del[nd] = k
    end
  end
  call_sliced('HSET', ent_key, set, ns)  -- field-value pairs: UNPACK_MAX is even
  if del then call_sliced('HDEL', ent_key, del, nd) end
end

-- the ready stream of a run's band, from its run hash's "priority" (false: absent, priority 0)
local function ready_of(priority)
  if not priority then return KEYS[1] end
  local level = tonumber(priority) or 0
  if level > 0 then return KEYS[10] elseif level < 0 then return KEYS[11] end
  return KEYS[1]
end

-- XADD of one event at position `id` of stream `key`: type, ts, corr (when given), then the v
-- values of `src` from `from` + 1 (its other fields), then extra_name = extra_value when given
local function xadd(key, id, etype, ts, corr, src, from, v, extra_name, extra_value)
  if not extra_name then
    if corr ~= '' then
      if v == 0 then return redis.pcall('XADD', key, id, 'type', etype, 'ts', ts, 'corr', corr) end
      return redis.pcall('XADD', key, id, 'type', etype, 'ts', ts, 'corr', corr,
        unpack(src, from + 1, from + v))
    end
    if v == 0 then return redis.pcall('XADD', key, id, 'type', etype, 'ts', ts) end
    return redis.pcall('XADD', key, id, 'type', etype, 'ts', ts, unpack(src, from + 1, from + v))
  end
  if v == 0 and corr ~= '' then  -- a step started: its attempt
    return redis.pcall('XADD', key, id, 'type', etype, 'ts', ts, 'corr', corr,
      extra_name, extra_value)
  end
  local args = { key, id, 'type', etype, 'ts', ts }
  local n = 6
  if corr ~= '' then args[7] = 'corr'; args[8] = corr; n = 8 end
  for j = from + 1, from + v do n = n + 1; args[n] = src[j] end
  args[n + 1] = extra_name; args[n + 2] = extra_value
  return redis.pcall('XADD', unpack(args))
end

local replies, nr = {}, 0
local at = 0  -- the position in b before the run being read
while at < #b do
  local run_id, token, expected, wake = b[at + 1], b[at + 2], tonumber(b[at + 3]), b[at + 4]
  local nopt = b[at + 5]
  local done_stream, done_group, done_id, acquire_ms, acquire_dep = '', '', '', -1, ''
  local taken = NONE
  if nopt > 0 then
    done_stream, done_group, done_id = b[at + 6], b[at + 7], b[at + 8]
    acquire_ms, acquire_dep = tonumber(b[at + 9]), b[at + 10]
    if nopt > 5 then
      taken = {}
      for j = at + 11, at + 5 + nopt do taken[b[j]] = true end
    end
  end
  at = at + 6 + nopt
  local nev = b[at]   -- the run's events start at b[at + 1]
  local run_key = ARGV[3] .. run_id
  local ev_key, ent_key = run_key .. ':ev', run_key .. ':ent'
  local hooks_key = nil  -- named when a hook event needs it
  local freed = NONE  -- a list of its own once this commit frees a hook
  local ended = false

  local meta = redis.call('HMGET', run_key, 'status', 'seq', 'lease_owner', 'priority')
  local status, seq, owner = meta[1], tonumber(meta[2]), meta[3]
  local code = 'ok'
  local run_set = nil  -- run hash fields, written once after the events of this run
  -- the reply's head is filled in once the run is done; the events' pairs follow it
  local head = nr
  replies[head + 1] = 'ok'; replies[head + 2] = 0; replies[head + 3] = now; replies[head + 4] = 0
  nr = head + 4
  if status and token ~= '' and acquire_ms >= 0 then
    local more = redis.call('HMGET', run_key, 'lease_until', 'deployment')
    local live = owner ~= '' and owner ~= token and (tonumber(more[1] or '0') or 0) > server_now
    local pinned, mine = more[2] or '', acquire_dep
    if not live and not (mine ~= '' and pinned ~= '' and pinned ~= mine) then
      run_set = {}
      run_set.lease_owner = token
      run_set.lease_until = int(server_now + acquire_ms)
      if mine ~= '' and pinned == '' and (status == 'pending' or status == 'running') then
        run_set.deployment = mine
      end
      owner = token
    end
  end
  local pos = at  -- the position before the next event of this run not read yet
  local left = nev
  if not status then
    code = 'no_run'
  elseif token ~= '' and owner ~= token then
    code = 'lease'
  elseif expected >= 0 and seq ~= expected then
    code = 'conflict'
  else
    local appended = false
    local last_id = nil  -- the id of the last entry appended: "<seq>-0"
    local seen = ent_prefetch(ent_key, pos, nev)  -- entity fields read (false: absent)
    local dirty, ndirty = DIRTY, 0  -- and changed: see ent_flush
    while left > 0 do
      local etype, corr, ts, v = b[pos + 1], b[pos + 2], b[pos + 3], b[pos + 4]
      local fat = pos + 4  -- the event's fields: b[fat + 1 .. fat + v]
      pos = fat + v
      left = left - 1
      local src, from = b, fat  -- the fields the entry gets (besides type, ts and corr)

      local res, extra = 'ok', 0
      local extra_name, extra_value = nil, nil  -- a field the entry gets besides the given ones
      local entity = nil     -- the entity's new state as its field's text (see the header)
      local timer_at = nil   -- arm a timer for this correlation id (after the append)
      local new_status = nil
      local hook_token = nil    -- reserve this token for hook `corr` (after the append)
      local hook_dispose = nil  -- free this token of hook `corr` (after the append)
      local hook_request = nil  -- remember this request id of hook `corr` (after the append)
      local patch_field = nil   -- record change `corr` in the entity hash (after the append)
      local claim_write = nil   -- a step event: the pool claim to record (false: end it)
      local child_write = nil   -- a child event: the child's state to record (after the append)
      local claim_key = nil     -- the entity field of a step's claim (step_created reads none)
      -- the entity's state, one field per step or wait: "status|attempt|retry_after|started_at|resume_at"
      -- (e1..e5; e4 is false while the step never started). Entity texts are built from text
      -- only: a number in a concatenation would be formatted as floating point (see int)
      local e1, e2, e3, e4, e5 = false, '0', '0', false, '0'
      local is_step = STEP_EVENT[etype]
      if corr ~= '' and (is_step or etype == 'wait_created' or etype == 'wait_completed') then
        if is_step and etype ~= 'step_created' then claim_key = corr .. '|claim' end
        if seen[corr] == nil or (claim_key and seen[claim_key] == nil) then  -- not prefetched
          ent_load(ent_key, seen, corr, claim_key)
        end
        local state = seen[corr]
        if state == 'pending|0|0|0|0' then  -- a step just created (by this commit, often)
          e1 = 'pending'
        elseif state then
          e1, e2, e3, e4, e5 = string.match(state, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
          if e4 == '0' then e4 = false end
        end
      end
      local step_status = e1
      if etype == 'patch_recorded' and corr ~= '' then ent_load(ent_key, seen, 'patch|' .. corr) end

      if etype == 'run_started' then
        if status == 'pending' then
          new_status = 'running'
          run_set = run_set or {}
          run_set.started_at = now_s
        elseif status == 'running' then
          res = 'exists'
        else
          res = 'terminal'
        end
      elseif etype == 'run_completed' or etype == 'run_failed' or etype == 'run_cancelled' then
        if TERMINAL[status] then
          if etype == 'run_cancelled' and status == 'cancelled' then res = 'exists' else res = 'terminal' end
        else
          new_status = (etype == 'run_completed') and 'completed'
            or ((etype == 'run_failed') and 'failed' or 'cancelled')
          run_set = run_set or {}
          run_set.completed_at = now_s
          run_set.output = field(fat, v, 'output')
          run_set.error = field(fat, v, 'error')
        end
      elseif etype == 'step_created' or etype == 'wait_created' then
        if TERMINAL[status] then
          res = 'terminal'
        elseif corr == '' then
          res = 'invalid'  -- an entity without id: never found again, and no duplicate check
        elseif step_status then
          res = 'exists'
        elseif etype == 'step_created' then
          entity = 'pending|0|0|0|0'
        else
          local resume_at = tonumber(field(fat, v, 'until_ms') or '')
            or (now + (tonumber(field(fat, v, 'delay_ms') or '0') or 0))
          extra = resume_at
          extra_name, extra_value = 'resume_at', int(resume_at)
          entity = 'waiting|0|0|0|' .. extra_value
          timer_at = resume_at
        end
      elseif etype == 'wait_completed' then
        if not step_status then
          res = 'not_found'
        elseif step_status ~= 'waiting' then
          res = 'exists'
        elseif tonumber(e5) > now then
          res, extra = 'too_early', tonumber(e5)
        else
          entity = 'completed|0|0|0|' .. e5
        end
      elseif is_step then  -- step_started, step_completed, step_failed, step_retrying
        local attempt = (e2 == '0' or not e2) and 0 or tonumber(e2)  -- (text to number costs)
        -- a pool worker's claim on the step: "<claim token>|<task entry id>" (see the header)
        local held_claim, held_task = nil, nil
        local record = seen[claim_key]
        if record then held_claim, held_task = string.match(record, '^([^|]*)|(.*)$') end
        local claim = v > 0 and field(fat, v, 'claim') or nil
        if claim == '' then claim = nil end
        local task = claim and field(fat, v, 'task')
        if claim and etype == 'step_started' then
          claim_write = claim .. '|' .. (task or '')
        elseif record then
          claim_write = false
        end
        if not step_status then
          res = 'not_found'
        elseif step_status == 'completed' or step_status == 'failed' then
          res = 'terminal'
        elseif TERMINAL[status] and (step_status ~= 'running' or etype == 'step_started'
            or etype == 'step_retrying') then
          -- an ended run keeps the result of a step that was running, but starts no attempt
          res = 'terminal'
        elseif etype == 'step_started' and claim and step_status == 'running'
            and held_task and held_task ~= (task or '') then
          res = 'exists'  -- another pool worker holds the step, for another task entry
        elseif etype == 'step_started' then
          local ra = (e3 == '0' or not e3) and 0 or tonumber(e3)
          if ra > now then
            res, extra = 'too_early', ra
          else
            attempt = attempt + 1
            extra = attempt
            extra_name, extra_value = 'attempt', small_int(attempt)
            entity = 'running|' .. extra_value .. '|0|' .. (e4 or now_s) .. '|0'
          end
        else
          local given = v > 0 and field(fat, v, 'attempt') or nil
          if step_status ~= 'running' or (given and tonumber(given) ~= attempt)
              or (claim and claim ~= held_claim) then
            res = 'stale'
          elseif etype == 'step_completed' then
            entity = 'completed|' .. small_int(attempt) .. '|0|' .. (e4 or '0') .. '|0'
          elseif etype == 'step_failed' then
            entity = 'failed|' .. small_int(attempt) .. '|0|' .. (e4 or '0') .. '|0'
          else
            local ra = tonumber(field(fat, v, 'retry_after') or '0') or 0
            if ra < now then ra = now end
            extra = ra
            entity = 'pending|' .. int(attempt) .. '|' .. int(ra) .. '|' .. (e4 or '0') .. '|0'
            timer_at = ra
          end
        end
      elseif etype == 'hook_created' then
        hooks_key = hooks_key or (run_key .. ':hooks')
        local hook_tok = field(fat, v, 'token')
        if TERMINAL[status] then
          res = 'terminal'
        elseif corr == '' then
          res = 'invalid'
        elseif redis.call('HEXISTS', hooks_key, corr) == 1 then
          res = 'exists'
        elseif (hook_tok or '') == '' then
          res = 'invalid'
        elseif taken[corr] or redis.call('HEXISTS', hooks_key, corr .. '|lost') == 1 then
          -- the token is reserved by another hook: record the conflict instead
          etype, extra = 'hook_conflict', -1
          src, from, v = { 'token', hook_tok }, 0, 2
        else
          hook_token = hook_tok
        end
      elseif etype == 'hook_received' or etype == 'hook_disposed' then
        hooks_key = hooks_key or (run_key .. ':hooks')
        local hook_tok = redis.call('HGET', hooks_key, corr)
        local request_id = field(fat, v, 'request_id') or ''
        if not hook_tok then
          res = 'not_found'
        elseif etype == 'hook_disposed' then
          hook_dispose = hook_tok
        elseif request_id ~= '' then
          hook_request = corr .. '|req|' .. request_id
          if redis.call('HEXISTS', hooks_key, hook_request) == 1 then
            res = 'exists'
          end
        end
      elseif etype == 'patch_recorded' then
        -- workflow code runs only while its run is running; one marker per change and run
        local deprecated = field(fat, v, 'deprecated') or 'false'
        if TERMINAL[status] then
          res = 'terminal'
        elseif status ~= 'running' or corr == '' or (deprecated ~= 'true' and deprecated ~= 'false') then
          res = 'invalid'
        elseif seen['patch|' .. corr] then
          res = 'exists'
        else
          patch_field = 'patch|' .. corr
        end
      elseif etype == 'child_started' then
        if TERMINAL[status] then
          res = 'terminal'
        elseif corr == '' or (field(fat, v, 'run_id') or '') == '' then
          res = 'invalid'
        elseif redis.call('HEXISTS', ent_key, corr .. '|child') == 1 then
          res = 'exists'
        else
          child_write = 'started'
        end
      elseif CHILD_END[etype] then
        local child = redis.call('HGET', ent_key, corr .. '|child')
        if not child then
          res = 'not_found'
        elseif child ~= 'started' then
          res = 'exists'
        elseif TERMINAL[status] then
          res = 'terminal'
        else
          child_write = etype
        end
      else
        res = 'invalid'
      end

      if res == 'ok' then
        -- a worker that advanced the workflow past this event before appending it (the inline
        -- fast path) passes the time it used, so a replay sees the same workflow clock
        local ets = now_s
        if ts ~= '' and string.match(ts, '^%d+$') then ets = ts end
        -- the first write of this event: Redis refuses it if the stream already holds this
        -- position (the run hash and the stream disagree); then nothing of the event is written
        local id = string.format('%d-0', seq + 1)
        local added = xadd(ev_key, id, etype, ets, corr, src, from, v, extra_name, extra_value)
        if type(added) == 'table' and added.err then
          res = 'corrupt'
        else
          seq = seq + 1
          last_id = id
          appended = true
          if entity then
            seen[corr] = entity
            if dirty[ndirty] ~= corr then ndirty = ndirty + 1; dirty[ndirty] = corr end
          end
          if claim_write ~= nil then
            -- step_started with a claim records it; any other step event ends the claim
            seen[claim_key] = claim_write
            if dirty[ndirty] ~= claim_key then ndirty = ndirty + 1; dirty[ndirty] = claim_key end
          end
          if timer_at then redis.call('ZADD', KEYS[2], int(timer_at), run_id .. '|' .. corr) end
          if hook_token then
            redis.call('HSET', hooks_key, corr, hook_token, corr .. '|meta',
              field(fat, v, 'metadata') or 'null')
          end
          if hook_request then redis.call('HSET', hooks_key, hook_request, int(seq)) end
          if patch_field then
            seen[patch_field] = int(seq)
            if dirty[ndirty] ~= patch_field then ndirty = ndirty + 1; dirty[ndirty] = patch_field end
          end
          if child_write then
            redis.call('HSET', ent_key, corr .. '|child', child_write)
            if child_write == 'started' then
              run_set = run_set or {}
              run_set.children = '1'
            end
          end
          if hook_dispose then
            if freed == NONE then freed = {} end
            freed[#freed + 1] = corr
            freed[#freed + 1] = hook_dispose
            redis.call('HDEL', hooks_key, corr, corr .. '|meta')
          end
          if new_status then
            run_set = run_set or {}
            run_set.status = new_status
            local created = redis.call('ZSCORE', KEYS[STATUS_KEY[status]], run_id) or now_s
            redis.call('ZREM', KEYS[STATUS_KEY[status]], run_id)
            redis.call('ZADD', KEYS[STATUS_KEY[new_status]], created, run_id)
            if TERMINAL[new_status] then
              -- the run's hooks end with it: the caller frees their tokens
              hooks_key = hooks_key or (run_key .. ':hooks')
              local live = redis.call('HGETALL', hooks_key)
              for j = 1, #live, 2 do
                if not string.find(live[j], '|', 1, true) then
                  if freed == NONE then freed = {} end
                  freed[#freed + 1] = live[j]
                  freed[#freed + 1] = live[j + 1]
                end
              end
              redis.call('DEL', hooks_key)
              redis.call('ZADD', KEYS[3], now_s, run_id)
              ended = true  -- its keys expire once written (below)
            end
            status = new_status
          end
        end
      end
      replies[nr + 1] = res
      replies[nr + 2] = extra
      nr = nr + 2
      if res ~= 'ok' and res ~= 'exists' then
        code = 'rejected'
        break
      end
    end
    if appended then
      ent_flush(ent_key, seen, dirty, ndirty)
      local release = ended and token ~= '' and done_stream ~= ''
      local seq_s = string.sub(last_id, 1, -3)  -- int(seq), cut from text already made
      if run_set == nil and not release then
        redis.call('HSET', run_key, 'seq', seq_s, 'updated_at', now_s)
      else
        local rs = { 'seq', seq_s, 'updated_at', now_s }
        for k, val in pairs(run_set or NONE) do rs[#rs + 1] = k; rs[#rs + 1] = val end
        if release then
          rs[#rs + 1] = 'lease_owner'; rs[#rs + 1] = ''
          rs[#rs + 1] = 'lease_until'; rs[#rs + 1] = '0'
        end
        redis.call('HSET', run_key, unpack(rs))
      end
      if release then
        redis.call('XACK', done_stream, done_group, done_id)
        redis.call('XDEL', done_stream, done_id)
      end
      if ended then
        redis.call('EXPIRE', ev_key, retention)
        redis.call('EXPIRE', ent_key, retention)
        local related = redis.call('HMGET', run_key, 'children', 'watched')
        if related[1] or related[2] then  -- parents to tell, children to close: see the header
          redis.call('EXPIRE', run_key .. ':parents', retention)
          redis.call('XADD', ready_of(meta[4]), '*', 'run', run_id, 'reason', 'ended')
        end
      end
      if TERMINAL[status] then redis.call('EXPIRE', run_key, retention) end
      if wake ~= '' then
        redis.call('XADD', ready_of(meta[4]), '*', 'run', run_id, 'reason', wake)
      end
    end
  end
  at = skip_events(pos, left)  -- the events after a refused one, or of a refused run
  replies[head + 1] = code; replies[head + 2] = seq or 0
  replies[head + 4] = (nr - head - 4) / 2
  replies[nr + 1] = #freed
  for j = 1, #freed do replies[nr + 1 + j] = freed[j] end
  nr = nr + 1 + #freed
end
return replies
