-- expire_index.lua: drop index entries of finished runs whose retention has passed.
--
-- The run's own keys expire by themselves (EXPIRE set by commit.lua); this script removes the
-- run ids from the partition's listing indexes so nothing grows without bound.
--
-- KEYS[1]  index of finished runs (score = completed ms)  wf:{pN}:idx:done
-- KEYS[2]  index of all runs (earlier versions wrote it; drained)
-- KEYS[3..7]  status indexes pending, running, completed, failed, cancelled
-- KEYS[8..]   indexes by workflow name (every wf:{pN}:idx:wf:<name> key)
-- ARGV[1]  retention, ms
-- ARGV[2]  maximum number of runs to drop in this call
--
-- Reply: number of runs dropped from the indexes.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
for _, run_id in ipairs(old) do
  for i = 1, #KEYS do
    redis.call('ZREM', KEYS[i], run_id)
  end
end
return #old
