-- pause_schedule.lua: pause a schedule (out of the due index) or resume it (back in, due at a
-- tick the caller computed from the server's clock: ticks passed while paused are not fired).
--
-- KEYS[1]  schedule hash  wf:{sched}:schedule:<id>
-- KEYS[2]  due index      wf:{sched}:due
--
-- ARGV[1] schedule id   ARGV[2] "1": pause, "0": resume   ARGV[3] next due ms (resume only)
--
-- Reply: {"ok"}, or {"no_schedule"}. Pausing a paused schedule or resuming a running one
-- changes nothing.
-- Events emitted: none.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return { 'no_schedule' }
end
local paused = redis.call('HGET', KEYS[1], 'paused') == '1'
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'paused', '1')
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif paused then
  redis.call('HSET', KEYS[1], 'paused', '0', 'next_due', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return { 'ok' }
