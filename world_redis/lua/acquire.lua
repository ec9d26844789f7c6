-- acquire.lua: take the lease on a run so that one worker at a time advances it.
--
-- KEYS[1]  run hash  wf:{pN}:run:<id>
-- KEYS[2]  run event stream  wf:{pN}:run:<id>:ev
-- ARGV[1]  lease token of the caller (worker id + nonce)
-- ARGV[2]  lease duration, ms
-- ARGV[3]  read the log after this seq and return it (-1: do not read)
--
-- Reply: {code, seq, status, taken_over, events} with code (taken_over = 1 when a lapsed holder's
-- lease was taken: its in-flight steps are orphaned and must be restarted; events = XRANGE reply of
-- the log after ARGV[3], so a worker loads a run in the same round trip)
--   "ok"       the caller holds the lease now (fresh, renewed, or taken over from a lapsed holder)
--   "busy"     another live worker holds it; the caller drops its wake-up (the holder sees new
--              events when it renews or releases the lease)
--   "no_run"   the run does not exist (expired or never created)
-- Events emitted: none.

local m = redis.call('HMGET', KEYS[1], 'status', 'seq', 'lease_owner', 'lease_until')
if not m[1] then
  return { 'no_run', 0, '' }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, until_ms = m[3] or '', tonumber(m[4] or '0') or 0
if owner ~= '' and owner ~= ARGV[1] and until_ms > now then
  return { 'busy', tonumber(m[2]), m[1] }
end
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[1], 'lease_until', now + tonumber(ARGV[2]))
local prev = 0
if owner ~= '' and owner ~= ARGV[1] then prev = 1 end
local events = {}
local after = tonumber(ARGV[3])
if after >= 0 then
  events = redis.call('XRANGE', KEYS[2], '(' .. after .. '-0', '+')
end
return { 'ok', tonumber(m[2]), m[1], prev, events }
