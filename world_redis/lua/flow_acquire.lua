-- flow_acquire.lua: take a slot of ONE flow-control limit for a step or a run, or park it.
--
-- A limit (a step or workflow name, or one value of its concurrency_key) has a slot of its own
-- (hash tag {fc:<limit>}), whatever the partitions of the runs it limits. Holders are scored by
-- the time their hold lapses: a step's holder renews it while the step runs (flow_renew.lua), so
-- the slot of a dead worker lapses after one lease; a run's hold (workflow concurrency) is checked
-- by the sweeper (flow_sweep.lua) against the run's status instead. A caller that finds no free
-- slot is parked in the waiting zset (higher priority first, then arrival) and holds nothing: the
-- release of a slot hands it to the first waiter (a reservation of ARGV[9] ms) and replies the
-- waiters to wake. A start over the rate is refused with the time the window lets it in.
--
-- KEYS[1]  holders  zset  wf:{fc:<limit>}:holders   member -> ms when the hold lapses
-- KEYS[2]  waiting  zset  wf:{fc:<limit>}:waiting   member -> -priority * 4e12 + parked ms
-- KEYS[3]  starts   zset  wf:{fc:<limit>}:starts    "<member>|<attempt>" -> start ms (rate log)
-- KEYS[4]  limit    hash  wf:{fc:<limit>}:limit     kind, concurrency, rate, window_ms,
--                                                    reserve_ms, used (last acquire ms)
-- ARGV[1]  member: "<run id>|<step id>" (a step) or "<run id>" (a run of a workflow)
-- ARGV[2]  concurrency (0: no concurrency limit)
-- ARGV[3]  hold ms: how long the slot is held without a renewal
-- ARGV[4]  rate: starts allowed per window (0: no rate limit)
-- ARGV[5]  rate window ms
-- ARGV[6]  priority (an integer from -1000 to 1000)
-- ARGV[7]  start tag for the rate log ("<member>|<attempt>": a retried call counts once)
-- ARGV[8]  kind: "step" or "workflow"
-- ARGV[9]  reserve ms: how long a slot handed to a woken waiter is kept for it
-- ARGV[10] ms the workflow clock is ahead of the server's (absent or 0 in production; a test
--          environment that skips time, worker/testing.py): rate windows are counted on the
--          workflow clock, as the timers that defer a start over the rate are
--
-- Reply: {code, retry_at_ms, woken member...}
--   "ok"     the member holds a slot (and its start is in the rate log)
--   "wait"   no free slot: parked in the waiting zset (woken when a slot is handed to it)
--   "later"  over the rate: retry_at_ms is when the window lets it in, on the server's clock (no
--            slot held, not parked)
-- woken: members handed a slot (reserved for them) or whose hold lapsed: the caller wakes
-- their runs.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local conc = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local prio = tonumber(ARGV[6])
local tag = ARGV[7]
local kind = ARGV[8]
local reserve = tonumber(ARGV[9])
local clock = now + (tonumber(ARGV[10] or '0') or 0)  -- the rate log's time
local woken = {}

redis.call('HSET', KEYS[4], 'kind', kind, 'concurrency', conc, 'rate', rate,
  'window_ms', window, 'reserve_ms', reserve, 'used', now)

-- a step's hold that lapsed is a dead worker's (or a reservation nobody claimed): freed, and
-- its run woken (harmless when it has moved on); a run's hold is checked by the sweeper
if kind == 'step' then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, m in ipairs(gone) do
    redis.call('ZREM', KEYS[1], m)
    woken[#woken + 1] = m
  end
end

local function pop_first()  -- ZRANGE + ZREM: the commands deploy/redis-users.acl allows
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if head[1] then redis.call('ZREM', KEYS[2], head[1]) end
  return head[1]
end

local function hand_over(n)
  for _ = 1, n do
    local head = pop_first()
    if not head then return end
    redis.call('ZADD', KEYS[1], string.format('%d', now + reserve), head)
    woken[#woken + 1] = head
  end
end

local function fill()
  if conc > 0 then hand_over(conc - redis.call('ZCARD', KEYS[1])) end
end

local function reply(code, at)
  local out = { code, at }
  for _, m in ipairs(woken) do out[#out + 1] = m end
  return out
end

-- the rate first: a start over the rate takes no slot and keeps no place in line
if rate > 0 then
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', clock - window)) do
    redis.call('ZREM', KEYS[3], old)
  end
  if not redis.call('ZSCORE', KEYS[3], tag) and redis.call('ZCARD', KEYS[3]) >= rate then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    redis.call('ZREM', KEYS[2], member)
    if redis.call('ZREM', KEYS[1], member) == 1 then fill() end
    return reply('later', tonumber(oldest[2]) + window - (clock - now))  -- on the server's clock
  end
end

if conc > 0 and not redis.call('ZSCORE', KEYS[1], member) then
  local free = conc - redis.call('ZCARD', KEYS[1])
  local score = redis.call('ZSCORE', KEYS[2], member)
  local rank = nil
  if score then rank = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. score) end
  local ahead = rank or redis.call('ZCARD', KEYS[2])
  if free <= ahead then
    fill()  -- the free slots (if any) go to the waiters ahead
    if not rank then
      redis.call('ZADD', KEYS[2], string.format('%d', -prio * 4000000000000 + now), member)
    end
    return reply('wait', 0)
  end
  hand_over(ahead)  -- the waiters ahead first, then this one
  if rank then redis.call('ZREM', KEYS[2], member) end
end
if conc > 0 then redis.call('ZADD', KEYS[1], string.format('%d', now + hold), member) end
if rate > 0 then redis.call('ZADD', KEYS[3], string.format('%d', clock), tag) end
return reply('ok', 0)
