-- release.lua: give up the lease on a run, unless events arrived that the holder has not seen.
--
-- KEYS[1]  run hash  wf:{pN}:run:<id>
-- KEYS[2]  partition ready stream  wf:{pN}:ready
-- ARGV[1]  lease token of the caller
-- ARGV[2]  the last seq the caller has seen (-1: release whatever the log holds)
-- ARGV[3]  consumer group of the ready stream
-- ARGV[4]  id of the wake-up message to acknowledge and delete on release ("" = none)
--
-- Reply: {code, seq}
--   "ok"       released, and the wake-up message acknowledged (XACK + XDEL)
--   "changed"  the log grew past ARGV[2] (a cancel, a timer, a hook...): the caller keeps the
--              lease and processes the new events, so no wake-up is ever lost
--   "lease"    the caller no longer holds the lease (another worker took over)
-- Events emitted: none.

local function ack()
  if ARGV[4] ~= '' then
    redis.call('XACK', KEYS[2], ARGV[3], ARGV[4])
    redis.call('XDEL', KEYS[2], ARGV[4])
  end
end
local m = redis.call('HMGET', KEYS[1], 'seq', 'lease_owner')
if not m[1] then
  ack()
  return { 'ok', 0 }
end
if m[2] ~= ARGV[1] then
  return { 'lease', tonumber(m[1]) }
end
if tonumber(ARGV[2]) >= 0 and tonumber(m[1]) ~= tonumber(ARGV[2]) then
  return { 'changed', tonumber(m[1]) }
end
redis.call('HSET', KEYS[1], 'lease_owner', '', 'lease_until', 0)
ack()
return { 'ok', tonumber(m[1]) }
