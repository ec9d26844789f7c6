-- release.lua: give up the lease on a run, unless events arrived that the holder has not seen.
--
-- KEYS[1]  run hash  wf:{pN}:run:<id>
-- ARGV[1]  lease token of the caller
-- ARGV[2]  the last seq the caller has seen
--
-- Reply: {code, seq}
--   "ok"       released
--   "changed"  the log grew past ARGV[2] (a cancel, a timer, a hook...): the caller keeps the
--              lease and processes the new events, so no wake-up is ever lost
--   "lease"    the caller no longer holds the lease (another worker took over)
-- Events emitted: none.

local m = redis.call('HMGET', KEYS[1], 'seq', 'lease_owner')
if not m[1] then
  return { 'ok', 0 }
end
if m[2] ~= ARGV[1] then
  return { 'lease', tonumber(m[1]) }
end
if tonumber(m[1]) ~= tonumber(ARGV[2]) then
  return { 'changed', tonumber(m[1]) }
end
redis.call('HSET', KEYS[1], 'lease_owner', '', 'lease_until', 0)
return { 'ok', tonumber(m[1]) }
