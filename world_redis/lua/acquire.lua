-- acquire.lua: take the lease on runs so that one worker at a time advances each run, and only a
-- worker of the run's deployment.
--
-- KEYS[2i-1]  run hash          wf:{pN}:run:<id>      for each run i of the batch (one partition)
-- KEYS[2i]    run event stream  wf:{pN}:run:<id>:ev
-- KEYS[n-1]   partition timers zset (member run|corr, score due ms)  wf:{pN}:timers
-- KEYS[n]     partition clock offset (ms added to the server's time for timers, see commit.lua)
--             (n = #KEYS: these two follow the runs' keys)
-- ARGV[1]     lease token of the caller (worker id + nonce)
-- ARGV[2]     lease duration, ms
-- ARGV[3]     deployment id of the caller ("": no check, no pinning)
-- ARGV[3+i]   for run i: read its log after this seq and return it (-1: do not read)
--
-- Reply: one {code, seq, status, taken_over, events, deployment} per run, where code is
--   "ok"       the caller holds the lease now (fresh, renewed, or taken over from a lapsed holder);
--              a pending or running run not pinned yet is pinned to the caller's deployment here
--   "pinned"   the run is pinned to another deployment (named by `deployment`): the caller does not
--              replay it and forwards its wake-up to that deployment's lane; nothing written
--   "busy"     another live worker holds it; the caller drops its wake-up (the holder sees new
--              events when it renews or releases the lease). A timer "<run id>|lease" is armed for
--              when that lease lapses: should no worker act on it (an acquire that ran on the
--              server after its caller gave up on the reply, say), the run is woken then; a live
--              holder that renews it meets one more wake-up, answered "busy" in turn, or nothing
--              to do once it let the run go
--   "no_run"   the run does not exist (expired or never created)
-- taken_over = 1 when a lapsed holder's lease was taken (its in-flight steps are orphaned and
-- must be restarted); events = XRANGE reply of the log after ARGV[3+i], so a worker loads a run in
-- the same round trip; deployment = the run's deployment after the call ("" while unpinned).
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, lease, mine = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local timers, clock = KEYS[#KEYS - 1], KEYS[#KEYS]
local offset = nil -- the clock offset, read at the first "busy"
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local run_key, ev_key = KEYS[2 * i - 1], KEYS[2 * i]
  local m = redis.call('HMGET', run_key, 'status', 'seq', 'lease_owner', 'lease_until', 'deployment')
  local pinned = m[5] or ''
  if not m[1] then
    out[i] = { 'no_run', 0, '', 0, {}, '' }
  elseif mine ~= '' and pinned ~= '' and pinned ~= mine then
    out[i] = { 'pinned', tonumber(m[2]), m[1], 0, {}, pinned }
  else
    local owner, until_ms = m[3] or '', tonumber(m[4] or '0') or 0
    if owner ~= '' and owner ~= token and until_ms > now then
      out[i] = { 'busy', tonumber(m[2]), m[1], 0, {}, pinned }
      if offset == nil then offset = tonumber(redis.call('GET', clock) or '0') or 0 end
      local run_id = string.match(run_key, ':run:([%w_%-]+)$')
      if run_id then
        redis.call('ZADD', timers, until_ms + 1 + offset, run_id .. '|lease')
      end
    else
      redis.call('HSET', run_key, 'lease_owner', token, 'lease_until', now + lease)
      if mine ~= '' and pinned == '' and (m[1] == 'pending' or m[1] == 'running') then
        redis.call('HSET', run_key, 'deployment', mine)
        pinned = mine
      end
      local prev = 0
      if owner ~= '' and owner ~= token then prev = 1 end
      local events = {}
      local after = tonumber(ARGV[3 + i])
      if after >= 0 then
        events = redis.call('XRANGE', ev_key, '(' .. after .. '-0', '+')
      end
      out[i] = { 'ok', tonumber(m[2]), m[1], prev, events, pinned }
    end
  end
end
return out
