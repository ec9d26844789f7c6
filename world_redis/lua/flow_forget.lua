-- flow_forget.lua: drop a limit from the registry of flow-control limits, unless it was used
-- again since the sweeper found it empty.
--
-- KEYS[1]  registry  zset  wf:{fc}:limits   limit id -> ms of its last registration
-- ARGV[1]  limit id
-- ARGV[2]  its score when the sweeper read the registry
--
-- Reply: 1 when dropped, 0 when kept (registered again meanwhile).
-- Events emitted: none.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
