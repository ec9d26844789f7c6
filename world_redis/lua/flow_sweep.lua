-- flow_sweep.lua: the periodic check of ONE flow-control limit, by any worker.
--
-- Frees the lapsed holds of steps (their workers died, or a woken waiter never came), hands free
-- slots to the first waiters, and lists the lapsed holds of runs (workflow concurrency: the
-- caller frees those whose run ended, and renews the others). A limit idle for ARGV[1] ms with
-- no holder, waiter or start in its window loses its hash.
--
-- KEYS[1]  holders  zset  wf:{fc:<limit>}:holders   member -> ms when the hold lapses
-- KEYS[2]  waiting  zset  wf:{fc:<limit>}:waiting   member -> -priority * 4e12 + parked ms
-- KEYS[3]  starts   zset  wf:{fc:<limit>}:starts    rate log
-- KEYS[4]  limit    hash  wf:{fc:<limit>}:limit     kind, concurrency, window_ms, reserve_ms, used
-- ARGV[1]  idle ms after which an empty limit is forgotten
--
-- Reply: {state, {woken member...}, {lapsed run member...}}; state "live", or "gone" when the
-- limit was empty and idle and its hash was deleted (the caller drops it from the registry).
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = redis.call('HGET', KEYS[4], 'kind') or 'step'
local conc = tonumber(redis.call('HGET', KEYS[4], 'concurrency') or '0') or 0
local reserve = tonumber(redis.call('HGET', KEYS[4], 'reserve_ms') or '15000') or 15000
local window = tonumber(redis.call('HGET', KEYS[4], 'window_ms') or '0') or 0
local used = tonumber(redis.call('HGET', KEYS[4], 'used') or '0') or 0
local function pop_first()  -- ZRANGE + ZREM: the commands deploy/redis-users.acl allows
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if head[1] then redis.call('ZREM', KEYS[2], head[1]) end
  return head[1]
end
local woken, lapsed = {}, {}
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(gone) do
  if kind == 'step' then
    redis.call('ZREM', KEYS[1], m)
    woken[#woken + 1] = m
  else
    lapsed[#lapsed + 1] = m
  end
end
if conc > 0 then
  for _ = 1, conc - redis.call('ZCARD', KEYS[1]) do
    local head = pop_first()
    if not head then break end
    redis.call('ZADD', KEYS[1], string.format('%d', now + reserve), head)
    woken[#woken + 1] = head
  end
end
if window > 0 then
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - window)) do
    redis.call('ZREM', KEYS[3], old)
  end
end
local state = 'live'
if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[2]) == 0
    and redis.call('ZCARD', KEYS[3]) == 0 and used < now - tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[4])
  state = 'gone'
end
return { state, woken, lapsed }
