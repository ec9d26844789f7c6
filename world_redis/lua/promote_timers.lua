-- promote_timers.lua: move due timers (sleeps, retry delays) into the ready streams.
--
-- KEYS[1]  partition timers zset (member "<run id>|<correlation id>", score = due ms)
-- KEYS[2]  partition ready stream (runs of priority 0)       wf:{pN}:ready
-- KEYS[3]  partition clock offset (ms added to the server's time; see commit.lua)
-- KEYS[4]  partition ready stream of band hi (priority > 0)  wf:{pN}:ready:hi
-- KEYS[5]  partition ready stream of band lo (priority < 0)  wf:{pN}:ready:lo
-- ARGV[1]  maximum number of timers to move in this call
-- ARGV[2]  the partition's run key prefix, wf:{pN}:run: (a run's hash is ARGV[2] .. run id, in
--          the slot of the keys above, as commit.lua names it): its field "priority" (absent:
--          0) picks the stream of the run's band (see world_redis/_keys.py)
--
-- Reply: {moved, next_due_ms} where next_due_ms is -1 when no timer is left.
-- Events emitted: none (the woken run appends wait_completed / step_started itself).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  + (tonumber(redis.call('GET', KEYS[3]) or '0') or 0)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  local run_id = string.sub(member, 1, sep - 1)
  local ready = KEYS[2]
  local level = tonumber(redis.call('HGET', ARGV[2] .. run_id, 'priority') or '0') or 0
  if level > 0 then ready = KEYS[4] elseif level < 0 then ready = KEYS[5] end
  redis.call('XADD', ready, '*', 'run', run_id, 'reason', 'timer:' .. string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if nxt[2] then next_due = tonumber(nxt[2]) end
return { #due, next_due }
