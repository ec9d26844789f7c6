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
-- ARGV[2]  the batch as JSON (one argument keeps client-side packing cheap):
--          [[run_id, lease token ("" = external writer), expected seq (-1 = no check),
--            wake reason ("" = none), [[type, correlation id, event id, {field: value, ...}], ...],
--            [hook id, ...] (hooks whose token another hook has reserved),
--            done (optional: [stream, group, message id] of the holder's wake-up, or ""),
--            acquire (optional: [lease ms, deployment id], or "")],
--           ...]
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
-- An event's field "ts" (ms), when given, is stored as its time instead of the server's: see
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
local batch = cjson.decode(ARGV[2])
local t = redis.call('TIME')
local server_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)  -- leases: no offset
local now = server_now + (tonumber(redis.call('GET', KEYS[9]) or '0') or 0)

-- Numbers go to Redis as text made here with '%d': Lua would format them as floating point
-- ('%.14g', and redis.call '%.17g'), which costs far more than the command they are part of.
local function int(n) return string.format('%d', n) end
local now_s = int(now)

local STATUS_KEY = { pending = 4, running = 5, completed = 6, failed = 7, cancelled = 8 }
local TERMINAL = { completed = true, failed = true, cancelled = true }

local UNPACK_MAX = 1000  -- values passed to one command at most (even: HSET takes pairs)

local CHILD_END = { child_completed = true, child_failed = true, child_cancelled = true }

local STEP_EVENT = { step_created = true, step_started = true, step_completed = true,
  step_failed = true, step_retrying = true }

-- The entity fields of a run that this commit reads are read once (one HMGET for a step and
-- its claim) and kept in `seen` (false: absent); the fields it changes are written together, in
-- one HSET and one HDEL after the run's events: every call from a script costs far more than
-- the command itself, and a step's commit touches the same few fields several times.
local function ent_load(ent_key, seen, a, b)
  if seen[a] == nil then
    if b and seen[b] == nil then
      local v = redis.call('HMGET', ent_key, a, b)
      seen[a], seen[b] = v[1] or false, v[2] or false
    else
      seen[a] = redis.call('HGET', ent_key, a) or false
    end
  elseif b and seen[b] == nil then
    seen[b] = redis.call('HGET', ent_key, b) or false
  end
end

-- every entity field the run's events will read, in one HMGET before the first of them
local function ent_prefetch(ent_key, seen, evs)
  local want = {}
  for n = 1, #evs do
    local etype, corr = evs[n][1], evs[n][2]
    if corr ~= '' then
      if STEP_EVENT[etype] then
        want[#want + 1] = corr; want[#want + 1] = corr .. '|claim'
      elseif etype == 'wait_created' or etype == 'wait_completed' then
        want[#want + 1] = corr
      elseif etype == 'patch_recorded' then
        want[#want + 1] = 'patch|' .. corr
      end
    end
  end
  -- in slices: Lua unpacks at most a few thousand values at once (a gather of 10,000 steps)
  for from = 1, #want, UNPACK_MAX do
    local to = math.min(from + UNPACK_MAX - 1, #want)
    local got = redis.call('HMGET', ent_key, unpack(want, from, to))
    for j = from, to do seen[want[j]] = got[j - from + 1] or false end
  end
end

-- redis.call(command, key, values...) for a long list of values, in slices
local function call_sliced(command, key, values)
  for from = 1, #values, UNPACK_MAX do
    redis.call(command, key, unpack(values, from, math.min(from + UNPACK_MAX - 1, #values)))
  end
end

local function ent_flush(ent_key, seen, dirty)
  local set, del = {}, {}
  for k in pairs(dirty) do
    local v = seen[k]
    if v then
      set[#set + 1] = k; set[#set + 1] = v
    else
      del[#del + 1] = k
    end
  end
  call_sliced('HSET', ent_key, set)  -- field-value pairs: UNPACK_MAX is even
  call_sliced('HDEL', ent_key, del)
end

-- the ready stream of a run's band, from its run hash's "priority" (false: absent, priority 0)
local function ready_of(priority)
  if not priority then return KEYS[1] end
  local level = tonumber(priority) or 0
  if level > 0 then return KEYS[10] elseif level < 0 then return KEYS[11] end
  return KEYS[1]
end

local replies = {}
for i = 0, #batch - 1 do
  local run_key = ARGV[3] .. batch[i + 1][1]
  local ev_key, ent_key, hooks_key = run_key .. ':ev', run_key .. ':ent', run_key .. ':hooks'
  local c = batch[i + 1]
  local run_id, token, expected, wake, evs, done = c[1], c[2], tonumber(c[3]), c[4], c[5], c[7]
  local acquire = c[8]
  local taken = {}
  for _, hook_id in ipairs(c[6] or {}) do taken[hook_id] = true end
  local freed = {}
  local seen, dirty = {}, {}  -- entity fields read (false: absent) and changed by this commit
  local ended = false

  local meta = redis.call('HMGET', run_key, 'status', 'seq', 'lease_owner', 'priority')
  local status, seq, owner = meta[1], tonumber(meta[2]), meta[3]
  local results = {}
  local code = 'ok'
  local run_set = {}  -- run hash fields, written once after the events of this run
  if status and token ~= '' and type(acquire) == 'table' then
    local more = redis.call('HMGET', run_key, 'lease_until', 'deployment')
    local live = owner ~= '' and owner ~= token and (tonumber(more[1] or '0') or 0) > server_now
    local pinned, mine = more[2] or '', acquire[2]
    if not live and not (mine ~= '' and pinned ~= '' and pinned ~= mine) then
      run_set.lease_owner = token
      run_set.lease_until = int(server_now + tonumber(acquire[1]))
      if mine ~= '' and pinned == '' and (status == 'pending' or status == 'running') then
        run_set.deployment = mine
      end
      owner = token
    end
  end
  if not status then
    code = 'no_run'
  elseif token ~= '' and owner ~= token then
    code = 'lease'
  elseif expected >= 0 and seq ~= expected then
    code = 'conflict'
  else
    local appended = false
    ent_prefetch(ent_key, seen, evs)
    for n = 1, #evs do
      local etype, corr, evid, f = evs[n][1], evs[n][2], evs[n][3], evs[n][4]
      local written = f  -- the fields the entry gets (besides type, ts and corr)

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
      -- the entity's state, one field per step or wait: "status|attempt|retry_after|started_at|resume_at"
      -- (e1..e5; e4 is false while the step never started). Entity texts are built from text
      -- only: a number in a concatenation would be formatted as floating point (see int)
      local e1, e2, e3, e4, e5 = false, '0', '0', false, '0'
      if corr ~= '' and (STEP_EVENT[etype] or etype == 'wait_created' or etype == 'wait_completed') then
        ent_load(ent_key, seen, corr, STEP_EVENT[etype] and (corr .. '|claim'))
        local v = seen[corr]
        if v then
          e1, e2, e3, e4, e5 = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
          if e4 == '0' then e4 = false end
        end
      end
      local step_status = e1
      if etype == 'patch_recorded' and corr ~= '' then ent_load(ent_key, seen, 'patch|' .. corr) end

      if etype == 'run_started' then
        if status == 'pending' then
          new_status = 'running'
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
          run_set.completed_at = now_s
          run_set.output = f.output
          run_set.error = f.error
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
          local resume_at = tonumber(f.until_ms or '') or (now + (tonumber(f.delay_ms or '0') or 0))
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
      elseif etype == 'step_started' or etype == 'step_completed'
          or etype == 'step_failed' or etype == 'step_retrying' then
        local attempt = tonumber(e2 or '0')
        -- a pool worker's claim on the step: "<claim token>|<task entry id>" (see the header)
        local held_claim, held_task = nil, nil
        local record = seen[corr .. '|claim']
        if record then held_claim, held_task = string.match(record, '^([^|]*)|(.*)$') end
        local claim = f.claim
        if claim == '' then claim = nil end
        if claim and etype == 'step_started' then
          claim_write = claim .. '|' .. (f.task or '')
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
            and held_task and held_task ~= (f.task or '') then
          res = 'exists'  -- another pool worker holds the step, for another task entry
        elseif etype == 'step_started' then
          local ra = tonumber(e3 or '0')
          if ra > now then
            res, extra = 'too_early', ra
          else
            attempt = attempt + 1
            extra = attempt
            extra_name, extra_value = 'attempt', int(attempt)
            entity = 'running|' .. extra_value .. '|0|' .. (e4 or now_s) .. '|0'
          end
        elseif step_status ~= 'running' or (f.attempt and tonumber(f.attempt) ~= attempt)
            or (claim and claim ~= held_claim) then
          res = 'stale'
        elseif etype == 'step_completed' then
          entity = 'completed|' .. int(attempt) .. '|0|' .. (e4 or '0') .. '|0'
        elseif etype == 'step_failed' then
          entity = 'failed|' .. int(attempt) .. '|0|' .. (e4 or '0') .. '|0'
        else
          local ra = tonumber(f.retry_after or '0') or 0
          if ra < now then ra = now end
          extra = ra
          entity = 'pending|' .. int(attempt) .. '|' .. int(ra) .. '|' .. (e4 or '0') .. '|0'
          timer_at = ra
        end
      elseif etype == 'hook_created' then
        if TERMINAL[status] then
          res = 'terminal'
        elseif corr == '' then
          res = 'invalid'
        elseif redis.call('HEXISTS', hooks_key, corr) == 1 then
          res = 'exists'
        elseif (f.token or '') == '' then
          res = 'invalid'
        elseif taken[corr] or redis.call('HEXISTS', hooks_key, corr .. '|lost') == 1 then
          -- the token is reserved by another hook: record the conflict instead
          etype, extra = 'hook_conflict', -1
          written = { token = f.token }
        else
          hook_token = f.token
        end
      elseif etype == 'hook_received' or etype == 'hook_disposed' then
        local token = redis.call('HGET', hooks_key, corr)
        local request_id = f.request_id or ''
        if not token then
          res = 'not_found'
        elseif etype == 'hook_disposed' then
          hook_dispose = token
        elseif request_id ~= '' then
          hook_request = corr .. '|req|' .. request_id
          if redis.call('HEXISTS', hooks_key, hook_request) == 1 then
            res = 'exists'
          end
        end
      elseif etype == 'patch_recorded' then
        -- workflow code runs only while its run is running; one marker per change and run
        local deprecated = f.deprecated or 'false'
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
        elseif corr == '' or (f.run_id or '') == '' then
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
        if f.ts and string.match(f.ts, '^%d+$') then ets = f.ts end
        local args = { ev_key, string.format('%d-0', seq + 1), 'type', etype, 'ts', ets }
        if evid ~= '' then args[#args + 1] = 'id'; args[#args + 1] = evid end
        if corr ~= '' then args[#args + 1] = 'corr'; args[#args + 1] = corr end
        for k, v in pairs(written) do
          if k ~= 'ts' then
            args[#args + 1] = k; args[#args + 1] = v
          end
        end
        if extra_name then args[#args + 1] = extra_name; args[#args + 1] = extra_value end
        -- the first write of this event: Redis refuses it if the stream already holds this
        -- position (the run hash and the stream disagree); then nothing of the event is written
        local added = redis.pcall('XADD', unpack(args))
        if type(added) == 'table' and added.err then
          res = 'corrupt'
        else
          seq = seq + 1
          appended = true
          if entity then
            seen[corr] = entity; dirty[corr] = true
          end
          if claim_write ~= nil then
            -- step_started with a claim records it; any other step event ends the claim
            seen[corr .. '|claim'] = claim_write; dirty[corr .. '|claim'] = true
          end
          if timer_at then redis.call('ZADD', KEYS[2], int(timer_at), run_id .. '|' .. corr) end
          if hook_token then
            redis.call('HSET', hooks_key, corr, hook_token, corr .. '|meta', f.metadata or 'null')
          end
          if hook_request then redis.call('HSET', hooks_key, hook_request, int(seq)) end
          if patch_field then seen[patch_field] = int(seq); dirty[patch_field] = true end
          if child_write then
            redis.call('HSET', ent_key, corr .. '|child', child_write)
            if child_write == 'started' then run_set.children = '1' end
          end
          if hook_dispose then
            freed[#freed + 1] = corr
            freed[#freed + 1] = hook_dispose
            redis.call('HDEL', hooks_key, corr, corr .. '|meta')
          end
          if new_status then
            run_set.status = new_status
            local created = redis.call('ZSCORE', KEYS[STATUS_KEY[status]], run_id) or now_s
            redis.call('ZREM', KEYS[STATUS_KEY[status]], run_id)
            redis.call('ZADD', KEYS[STATUS_KEY[new_status]], created, run_id)
            if TERMINAL[new_status] then
              -- the run's hooks end with it: the caller frees their tokens
              local live = redis.call('HGETALL', hooks_key)
              for j = 1, #live, 2 do
                if not string.find(live[j], '|', 1, true) then
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
      results[#results + 1] = res
      results[#results + 1] = extra
      if res ~= 'ok' and res ~= 'exists' then
        code = 'rejected'
        break
      end
    end
    if appended then
      ent_flush(ent_key, seen, dirty)
      local rs = { 'seq', int(seq), 'updated_at', now_s }
      for k, v in pairs(run_set) do rs[#rs + 1] = k; rs[#rs + 1] = v end
      local release = ended and token ~= '' and type(done) == 'table'
      if release then
        rs[#rs + 1] = 'lease_owner'; rs[#rs + 1] = ''
        rs[#rs + 1] = 'lease_until'; rs[#rs + 1] = '0'
      end
      redis.call('HSET', run_key, unpack(rs))
      if release then
        redis.call('XACK', done[1], done[2], done[3])
        redis.call('XDEL', done[1], done[3])
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
  local r = #replies
  replies[r + 1] = code; replies[r + 2] = seq or 0; replies[r + 3] = now
  replies[r + 4] = #results / 2
  r = r + 4
  for j = 1, #results do replies[r + j] = results[j] end
  r = r + #results
  replies[r + 1] = #freed
  for j = 1, #freed do replies[r + 1 + j] = freed[j] end
end
return replies
