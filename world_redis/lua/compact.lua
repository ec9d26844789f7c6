-- compact.lua: swap the event stream of finished runs of ONE partition for one compressed value.
--
-- The caller (world_redis/_compact.py) read each run's stream and hash and encoded them; this
-- script writes that value only while the run is terminal and its stream still ends at the entry
-- the caller read (a fence: a late step result appended to a cancelled run meanwhile makes the
-- caller read again), so the value always holds the whole log, and the run hash as it was: the
-- value is all that is left of the run, and readers (get_run, read_events) find everything in it.
-- Scripts that find no run hash answer as for a run that does not exist, and write nothing;
-- create_run.lua checks the value too, so a compacted run's id starts no second run.
--
-- A compacted run leaves idx:done (the retention janitor's index of finished runs: the listing
-- indexes keep it) for the partition's list of compacted runs, from which the janitor drops it
-- from the listing indexes once its value has expired (expire_compacted.lua).
--
-- KEYS[1]       index of finished runs            wf:{pN}:idx:done   (the run removed)
-- KEYS[2]       list of compacted runs            wf:{pN}:compacted  (the run appended)
-- KEYS[4i-1]    run hash          wf:{pN}:run:<id>       for each run i of the batch (deleted)
-- KEYS[4i]      run event stream  wf:{pN}:run:<id>:ev    (deleted)
-- KEYS[4i+1]    run entity hash   wf:{pN}:run:<id>:ent   (deleted)
-- KEYS[4i+2]    compacted log     wf:{pN}:run:<id>:log   (string, written)
-- ARGV[3i-2]    for run i: its id
-- ARGV[3i-1]    for run i: the id of the last stream entry the caller read ("<seq>-0")
-- ARGV[3i]      for run i: the compacted value (see _compact.py: format "wfl1")
--
-- Reply: one code per run:
--   "compacted"     the value written with the run hash's remaining retention (the stream's when
--                   the hash has none); the run hash, stream and entity hash deleted
--   "already"       the run was compacted before: nothing written
--   "no_run"        neither run hash nor value (expired, or never created): nothing written
--   "not_terminal"  the run is pending or running: nothing written
--   "leased"        a worker holds the run's lease (it may still write the run hash: its release,
--                   a wake-up it forwards): nothing written; compacted after the release
--   "moved"         the stream does not end at ARGV[3i-1] (it grew, or is gone): nothing written
-- Events emitted: none.

local TERMINAL = { completed = true, failed = true, cancelled = true }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function compact(run_key, ev_key, ent_key, log_key, run_id, expected, value)
  if redis.call('EXISTS', log_key) == 1 then return 'already' end
  local m = redis.call('HMGET', run_key, 'status', 'lease_owner', 'lease_until')
  if not m[1] then return 'no_run' end
  if not TERMINAL[m[1]] then return 'not_terminal' end
  if (m[2] or '') ~= '' and (tonumber(m[3] or '0') or 0) > now then return 'leased' end
  -- the stream ends at `expected` when that entry is the only one from it on
  local tail = redis.call('XRANGE', ev_key, expected, '+', 'COUNT', 2)
  if #tail ~= 1 or tail[1][1] ~= expected then return 'moved' end
  local ttl = redis.call('PTTL', run_key)
  if ttl <= 0 then ttl = redis.call('PTTL', ev_key) end
  redis.call('SET', log_key, value)
  if ttl > 0 then redis.call('PEXPIRE', log_key, ttl) end
  redis.call('DEL', run_key, ev_key, ent_key)
  redis.call('ZREM', KEYS[1], run_id)
  redis.call('RPUSH', KEYS[2], run_id)
  return 'compacted'
end

local out = {}
for i = 1, (#KEYS - 2) / 4 do
  out[i] = compact(KEYS[4 * i - 1], KEYS[4 * i], KEYS[4 * i + 1], KEYS[4 * i + 2],
    ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i])
end
return out
