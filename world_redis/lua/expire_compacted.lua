-- expire_compacted.lua: drop compacted runs whose value has expired from the listing indexes.
--
-- A compacted run is no longer in idx:done (the janitor's index of finished runs, see
-- expire_index.lua); the partition's list of compacted runs, in compaction order, takes its place.
-- The caller (world_redis/_compact.py) found the runs ARGV[1..] expired (their :log is gone), in
-- the order they head the list; this script removes them only while the list still starts with
-- them, so two janitors never drop more than that.
--
-- KEYS[1]     the partition's list of compacted runs  wf:{pN}:compacted
-- KEYS[2..]   the partition's listing indexes: the status indexes, every idx:wf:<name> (and idx:all,
--             which earlier versions wrote)
-- ARGV[1..]   run ids expected at the head of KEYS[1], in order
--
-- Reply: how many runs were dropped (the length of the prefix of ARGV the list starts with).
-- Events emitted: none.

local head = redis.call('LRANGE', KEYS[1], 0, #ARGV - 1)
local n = 0
while n < #ARGV and head[n + 1] == ARGV[n + 1] do
  n = n + 1
end
if n == 0 then return 0 end
redis.call('LTRIM', KEYS[1], n, -1)
for i = 1, n do
  for k = 2, #KEYS do
    redis.call('ZREM', KEYS[k], ARGV[i])
  end
end
return n
