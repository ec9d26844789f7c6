-- link_child.lua: make a run's end known to a parent run awaiting it (child runs).
--
-- The parent's worker calls it after creating the child run (or finding a run of the id the
-- workflow code chose): while the run lives, the watcher is added to the run's set of parents and
-- the run hash is marked "watched", so that commit.lua wakes the run with reason "ended" when it
-- ends; a worker then delivers the end to every watcher (worker/_children.py). A run already
-- ended is answered as such: the caller delivers its end at once. Idempotent (a set).
--
-- KEYS[1]  run hash                                   wf:{pN}:run:<id>
-- KEYS[2]  the run's watchers (set)                   wf:{pN}:run:<id>:parents
--
-- ARGV[1]  the watcher: "<parent run id>|<correlation id of the child in the parent's log>"
--
-- Reply: {"linked"} | {"ended", status} (completed | failed | cancelled) | {"no_run"} (no run
-- hash: never created, or finished and compacted)
-- Events emitted: none.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return { 'no_run' }
end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return { 'ended', status }
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'watched', '1')
return { 'linked' }
