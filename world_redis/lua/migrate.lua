-- migrate.lua: pin a run to another deployment on purpose and wake it (wf runs migrate).
--
-- KEYS[1]  run hash                   wf:{pN}:run:<id>
-- KEYS[2]  partition ready stream of the run's priority band  wf:{pN}:ready (or :ready:hi,
--          :ready:lo; see world_redis/_keys.py)
-- KEYS[3]  the lane stream holding the run's waiting wake-ups, if any  wf:{pN}:q:<queue>@<old id>
--          (its band's: wf:{pN}:q:<queue>@<old id>:hi for a run of priority > 0...)
--          (optional: absent when the run waits in no lane)
-- ARGV[1]  run id
-- ARGV[2]  the deployment id to pin the run to (known: checked by the caller in the registry)
-- ARGV[3]  consumer group of the streams ("workers")
-- ARGV[4..] entry ids of the run's wake-ups in KEYS[3], removed (XACK + XDEL) as the run moves
--
-- Reply: {"ok", previous deployment id ("" when unpinned)}, {"no_run", ""}, or
--        {"terminal", status} (a finished run is not moved; nothing written).
-- A fresh wake-up (reason "migrated") goes to the ready stream; the worker that takes it forwards
-- it to the new deployment's lane unless it is of that deployment. The run's "queue" field (the
-- lane its wake-ups were forwarded to) is cleared.
-- Events emitted: none.

local m = redis.call('HMGET', KEYS[1], 'status', 'deployment')
if not m[1] then
  return { 'no_run', '' }
end
if m[1] ~= 'pending' and m[1] ~= 'running' then
  return { 'terminal', m[1] }
end
redis.call('HSET', KEYS[1], 'deployment', ARGV[2])
redis.call('HDEL', KEYS[1], 'queue')
if #KEYS >= 3 and #ARGV >= 4 then
  for i = 4, #ARGV do
    redis.call('XACK', KEYS[3], ARGV[3], ARGV[i])
    redis.call('XDEL', KEYS[3], ARGV[i])
  end
end
redis.call('XADD', KEYS[2], '*', 'run', ARGV[1], 'reason', 'migrated')
return { 'ok', m[2] or '' }
