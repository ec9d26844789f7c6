-- flow_renew.lua: extend the holds of members of ONE flow-control limit (their steps still run).
--
-- KEYS[1]  holders  zset  wf:{fc:<limit>}:holders   member -> ms when the hold lapses
-- ARGV[1]  hold ms from now
-- ARGV[2..] members
--
-- A member no longer holding (its hold lapsed and was handed on) is not added back: the worker
-- learns it from the count and carries on (the limit may be exceeded by that one step; see README).
-- Reply: the number of holds extended.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = string.format('%d', now + tonumber(ARGV[1]))
local n = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
    n = n + 1
  end
end
return n
