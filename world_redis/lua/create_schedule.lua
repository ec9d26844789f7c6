-- create_schedule.lua: store a schedule and put it in the due index, unless its id exists.
--
-- KEYS[1]  schedule hash       wf:{sched}:schedule:<id>
-- KEYS[2]  index of schedules  wf:{sched}:schedules
-- KEYS[3]  due index           wf:{sched}:due
--
-- ARGV[1] schedule id   ARGV[2] spec (JSON)   ARGV[3] first due ms
-- ARGV[4] "1": replace a schedule with this id (its history is dropped), "0": refuse
--
-- Reply: {"created", now_ms}, or {"exists"} (nothing changed).
-- Events emitted: none (a schedule is not a run; the runs it starts get run_created).

if redis.call('EXISTS', KEYS[1]) == 1 and ARGV[4] ~= '1' then
  return { 'exists' }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'paused', '0', 'next_due', ARGV[3],
  'last_run', '', 'last_tick', '', 'created_at', now, 'history', '[]')
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return { 'created', now }
