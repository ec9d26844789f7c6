-- promote_timers.lua: move due timers (sleeps, retry delays) into the ready stream.
--
-- KEYS[1]  partition timers zset (member "<run id>|<correlation id>", score = due ms)
-- KEYS[2]  partition ready stream
-- KEYS[3]  partition clock offset (ms added to the server's time; see commit.lua)
-- ARGV[1]  maximum number of timers to move in this call
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
  redis.call('XADD', KEYS[2], '*', 'run', run_id, 'reason', 'timer:' .. string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if nxt[2] then next_due = tonumber(nxt[2]) end
return { #due, next_due }
