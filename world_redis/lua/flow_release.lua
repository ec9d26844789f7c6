-- flow_release.lua: give up the slot (or the place in line) of one member of ONE flow-control
-- limit; hand free slots to the first waiters.
--
-- KEYS[1]  holders  zset  wf:{fc:<limit>}:holders   member -> ms when the hold lapses
-- KEYS[2]  waiting  zset  wf:{fc:<limit>}:waiting   member -> -priority * 4e12 + parked ms
-- KEYS[3]  limit    hash  wf:{fc:<limit>}:limit     concurrency, reserve_ms (see flow_acquire.lua)
-- ARGV[1]  member ("<run id>|<step id>" or "<run id>")
--
-- Reply: {released (1 or 0), woken member...}: members handed a slot (reserved for them for
-- reserve_ms): the caller wakes their runs.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local conc = tonumber(redis.call('HGET', KEYS[3], 'concurrency') or '0') or 0
local reserve = tonumber(redis.call('HGET', KEYS[3], 'reserve_ms') or '15000') or 15000
local function pop_first()  -- ZRANGE + ZREM: the commands deploy/redis-users.acl allows
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if head[1] then redis.call('ZREM', KEYS[2], head[1]) end
  return head[1]
end
local out = { redis.call('ZREM', KEYS[1], ARGV[1]) }
redis.call('ZREM', KEYS[2], ARGV[1])
if conc > 0 then
  for _ = 1, conc - redis.call('ZCARD', KEYS[1]) do
    local head = pop_first()
    if not head then break end
    redis.call('ZADD', KEYS[1], string.format('%d', now + reserve), head)
    out[#out + 1] = head
  end
end
return out
