-- heartbeat.lua: extend the leases a worker holds and report each run's current seq.
--
-- KEYS[i]  run hash of every run the caller holds  wf:{pN}:run:<id>
-- ARGV[1]  lease token of the caller
-- ARGV[2]  lease duration, ms
--
-- Reply: one integer per key: the run's seq when the lease was extended, -1 when the caller no
-- longer holds it (taken over, or the run expired). A seq above the caller's view means new
-- events (cancel, timer, hook payload) for the holder to process.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  local m = redis.call('HMGET', KEYS[i], 'seq', 'lease_owner')
  if m[1] and m[2] == ARGV[1] then
    redis.call('HSET', KEYS[i], 'lease_until', now + tonumber(ARGV[2]))
    out[i] = tonumber(m[1])
  else
    out[i] = -1
  end
end
return out
