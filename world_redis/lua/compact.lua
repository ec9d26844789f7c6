-- compact.lua: swap the event stream of finished runs of ONE partition for one compressed value.
--
-- The caller (world_redis/_compact.py) read each run's stream and hash and encoded them; this
-- script writes that value only while the run is terminal and its stream still ends at the entry
-- the caller read (a fence: a late step result appended to a cancelled run meanwhile makes the
-- caller read again), so the value always holds the whole log. A compacted run keeps its run hash
-- with the small fields status reads and listing need; readers find its events, input, output and
-- error in the value.
--
-- KEYS[4i-3]  run hash          wf:{pN}:run:<id>       for each run i of the batch
-- KEYS[4i-2]  run event stream  wf:{pN}:run:<id>:ev    (deleted)
-- KEYS[4i-1]  run entity hash   wf:{pN}:run:<id>:ent   (deleted)
-- KEYS[4i]    compacted log     wf:{pN}:run:<id>:log   (string, written)
-- ARGV[2i-1]  for run i: the id of the last stream entry the caller read ("<seq>-0")
-- ARGV[2i]    for run i: the compacted value (see _compact.py: format "wfl1")
--
-- Reply: one code per run:
--   "compacted"     the value written with the run's remaining retention, the stream and entity
--                   hash deleted, the run hash's input, output, error and run_id fields removed (an
--                   empty lease too) and its field "compacted" set to the time (ms)
--   "already"       the run was compacted before: nothing written
--   "no_run"        the run hash is gone (expired): nothing written
--   "not_terminal"  the run is pending or running: nothing written
--   "moved"         the stream does not end at ARGV[2i-1] (it grew, or is gone without a value):
--                   nothing written
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local TERMINAL = { completed = true, failed = true, cancelled = true }

local function compact(run_key, ev_key, ent_key, log_key, expected, value)
  local m = redis.call('HMGET', run_key, 'status', 'lease_owner')
  if not m[1] then return 'no_run' end
  if not TERMINAL[m[1]] then return 'not_terminal' end
  local last = redis.call('XREVRANGE', ev_key, '+', '-', 'COUNT', 1)
  if #last == 0 then
    if redis.call('EXISTS', log_key) == 1 then return 'already' end
    return 'moved'
  end
  if last[1][1] ~= expected then return 'moved' end
  local ttl = redis.call('PTTL', run_key)
  if ttl <= 0 then ttl = redis.call('PTTL', ev_key) end
  redis.call('SET', log_key, value)
  if ttl > 0 then redis.call('PEXPIRE', log_key, ttl) end
  redis.call('DEL', ev_key, ent_key)
  redis.call('HDEL', run_key, 'input', 'output', 'error', 'run_id')
  if (m[2] or '') == '' then redis.call('HDEL', run_key, 'lease_owner', 'lease_until') end
  redis.call('HSET', run_key, 'compacted', now)
  return 'compacted'
end

local out = {}
for i = 1, #KEYS / 4 do
  out[i] = compact(KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i],
    ARGV[2 * i - 1], ARGV[2 * i])
end
return out
