-- delete_schedule.lua: delete a schedule (its history is a field of its hash) and its index
-- entries.
--
-- KEYS[1]  schedule hash       wf:{sched}:schedule:<id>
-- KEYS[2]  index of schedules  wf:{sched}:schedules
-- KEYS[3]  due index           wf:{sched}:due
--
-- ARGV[1] schedule id
--
-- Reply: 1 deleted, 0 no such schedule. Runs it started are not touched.
-- Events emitted: none.

local found = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return found
