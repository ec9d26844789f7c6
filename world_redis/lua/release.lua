-- release.lua: give up the lease on runs, unless events arrived that the holder has not seen.
--
-- KEYS[1]     the wake-ups' stream: the partition ready stream wf:{pN}:ready, or the stream of
--             the queue they were forwarded to wf:{pN}:q:<queue> (see world_redis/_pools.py)
-- KEYS[1+i]   run hash of run i of the batch  wf:{pN}:run:<id>
-- ARGV[1]     lease token of the caller
-- ARGV[2]     consumer group of the ready stream
-- ARGV[1+2i]  for run i: the last seq the caller has seen (-1: release whatever the log holds)
-- ARGV[2+2i]  for run i: id of the wake-up message to acknowledge and delete ("" = none)
--
-- Reply: one {code, seq} per run
--   "ok"       released, and the wake-up message acknowledged (XACK + XDEL)
--   "changed"  the log grew past the caller's seq (a cancel, a timer, a hook...): the caller keeps
--              the lease and processes the new events, so no wake-up is ever lost
--   "lease"    the caller no longer holds the lease (another worker took over)
-- Events emitted: none.

local token, group = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS - 1 do
  local run_key = KEYS[1 + i]
  local seen, mid = tonumber(ARGV[1 + 2 * i]), ARGV[2 + 2 * i]
  local m = redis.call('HMGET', run_key, 'seq', 'lease_owner')
  local code = 'ok'
  if m[1] and m[2] ~= token then
    code = 'lease'
  elseif m[1] and seen >= 0 and tonumber(m[1]) ~= seen then
    code = 'changed'
  elseif m[1] then
    redis.call('HSET', run_key, 'lease_owner', '', 'lease_until', 0)
  end
  if code == 'ok' and mid ~= '' then
    redis.call('XACK', KEYS[1], group, mid)
    redis.call('XDEL', KEYS[1], mid)
  end
  out[i] = { code, tonumber(m[1] or '0') }
end
return out
