-- fire_schedule.lua: record a schedule's decision on its due tick and move it to its next due
-- time, atomically, if the schedule still waits for that tick (so each tick is decided once).
--
-- The caller creates the tick's run first (create_run.lua: idempotent on the run id, which the
-- schedule id and tick time fix), then calls this script: a caller that dies between the two
-- leaves the tick due, and the next caller's create finds the run there and makes no second.
--
-- KEYS[1]  schedule hash  wf:{sched}:schedule:<id> (field "history": JSON array, newest first)
-- KEYS[2]  due index      wf:{sched}:due
--
-- ARGV[1] schedule id   ARGV[2] the due ms the caller decided on   ARGV[3] next due ms
-- ARGV[4] action: "fired" | "skipped" | "missed"   ARGV[5] tick ms of the decision
-- ARGV[6] run id ("" unless fired)   ARGV[7] earlier ticks passed over
-- ARGV[8] decisions kept in the history
--
-- Reply: {"ok", now_ms}, {"stale"} (another caller decided that tick), {"paused"},
-- {"no_schedule"} (deleted); only "ok" changes anything.
-- Events emitted: none (the run's own run_created comes from create_run.lua).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return { 'no_schedule' }
end
local state = redis.call('HMGET', KEYS[1], 'paused', 'next_due')
if state[1] == '1' then
  return { 'paused' }
end
if state[2] ~= ARGV[2] then
  return { 'stale' }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'next_due', ARGV[3], 'last_tick', ARGV[5])
if ARGV[4] == 'fired' then
  redis.call('HSET', KEYS[1], 'last_run', ARGV[6])
end
-- the history is a field (HGET/HSET), not a list: no command beyond those the engine's ACL grants
local ok, history = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'history') or '[]')
if not ok or type(history) ~= 'table' then history = {} end
table.insert(history, 1, { tick_ms = tonumber(ARGV[5]), action = ARGV[4], run_id = ARGV[6],
  missed = tonumber(ARGV[7]), at_ms = now })
while #history > tonumber(ARGV[8]) do table.remove(history) end
redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return { 'ok', now }
