-- create_run.lua: create a run (event run_created) and enqueue its first wake-up, idempotently.
--
-- KEYS[1]  run hash                wf:{pN}:run:<id>
-- KEYS[2]  run event stream        wf:{pN}:run:<id>:ev
-- KEYS[3]  partition ready stream of the run's priority band: wf:{pN}:ready (priority 0),
--          wf:{pN}:ready:hi (> 0) or wf:{pN}:ready:lo (< 0) (see world_redis/_keys.py)
-- KEYS[4]  pending-status index    wf:{pN}:idx:pending
-- KEYS[5]  index by workflow name  wf:{pN}:idx:wf:<name>
-- KEYS[6]  set of workflow names seen in the partition  wf:{pN}:workflows
-- KEYS[7]  the run's compacted log  wf:{pN}:run:<id>:log (a finished run compacted: no run hash)
--
-- ARGV[1] run id   ARGV[2] workflow name   ARGV[3] input (JSON array of arguments)
-- ARGV[4] event id ("": none, the entry id 1-0 is the event's id; older clients send one)
-- ARGV[5] deployment id
-- ARGV[6] the run's secret seed (hex): default hook tokens derive from it, so they are unguessable
-- ARGV[7] the W3C trace context of the code that started the run, as JSON ("" or absent: none)
-- ARGV[8] the parent run: the run whose workflow code started this one ("" or absent: none);
--         stored as field "parent" of run_created and of the run hash
-- ARGV[9] the run's priority (higher first: its band, and its place where flow control parks
--         callers; "0" or absent: none, not stored)
--
-- Wake-up: XADD <ready> * run <id> reason created, followed by the run_created entry's fields
-- (type, ts, workflow, input, ...) when the input and trace take at most 1,024 bytes.
--
-- Reply: {"created", now_ms} or {"exists", status} ("compacted" for a compacted finished run):
-- starting the same run id twice returns the existing run and changes nothing.
-- Events emitted: run_created (stream id 1-0).

local CARRY_MAX = 1024
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  return { 'exists', status }
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  return { 'exists', 'compacted' }
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- as text made with '%d' (Lua would format the number as floating point, which costs more than
-- the commands it goes to)
local now_s = string.format('%d', now)
-- the first write; refused if a stream for this run already exists with entries
local entry = { KEYS[2], '1-0', 'type', 'run_created', 'ts', now_s, 'workflow', ARGV[2],
  'input', ARGV[3], 'deployment', ARGV[5], 'seed', ARGV[6] }
if ARGV[4] ~= '' then entry[#entry + 1] = 'id'; entry[#entry + 1] = ARGV[4] end
if (ARGV[7] or '') ~= '' then entry[#entry + 1] = 'trace'; entry[#entry + 1] = ARGV[7] end
if (ARGV[8] or '') ~= '' then entry[#entry + 1] = 'parent'; entry[#entry + 1] = ARGV[8] end
local priority = ARGV[9] or '0'
if priority ~= '0' and priority ~= '' then
  entry[#entry + 1] = 'priority'; entry[#entry + 1] = priority
end
redis.call('XADD', unpack(entry))
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'workflow', ARGV[2], 'status', 'pending',
  'input', ARGV[3], 'deployment', ARGV[5], 'created_at', now_s, 'updated_at', now_s, 'seq', '1',
  'lease_owner', '', 'lease_until', '0')
if (ARGV[8] or '') ~= '' then redis.call('HSET', KEYS[1], 'parent', ARGV[8]) end
if priority ~= '0' and priority ~= '' then redis.call('HSET', KEYS[1], 'priority', priority) end
redis.call('ZADD', KEYS[4], now_s, ARGV[1])
redis.call('ZADD', KEYS[5], now_s, ARGV[1])
redis.call('SADD', KEYS[6], ARGV[2])
-- the wake-up carries the run_created entry's fields when they are small (CARRY_MAX bytes of
-- input and trace): the worker that takes it starts the run without reading its log, and its
-- first commit takes the lease (see commit.lua, "acquire")
local wake = { KEYS[3], '*', 'run', ARGV[1], 'reason', 'created' }
if #ARGV[3] + #(ARGV[7] or '') <= CARRY_MAX then
  for i = 3, #entry do wake[#wake + 1] = entry[i] end
end
redis.call('XADD', unpack(wake))
return { 'created', now }
