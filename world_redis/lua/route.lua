-- route.lua: hand due steps of ONE run to their queues' streams (worker pools).
--
-- The run's holder calls this for each step declared with a queue other than "default" that is
-- pending and due (just created, or its retry delay passed). A step is handed over at most once
-- per attempt count: the hand-over is remembered in the run's entity hash, so a holder that
-- replays the run again (or a new holder after a crash) does not enqueue a second task.
--
-- KEYS[1]     run hash                      wf:{pN}:run:<id>
-- KEYS[2]     run entity hash               wf:{pN}:run:<id>:ent
-- KEYS[3]     partition set of queue names  wf:{pN}:queues
-- KEYS[4]     partition clock offset (ms added to the server's time; see commit.lua)
-- KEYS[4+i]   queue stream of step i        wf:{pN}:q:<queue>
-- ARGV[1]     run id
-- ARGV[2+3(i-1)], ARGV[3+3(i-1)], ARGV[4+3(i-1)]  step i: correlation id, step name, queue name
--
-- Per step, when handed over: XADD <queue stream> * run <id> step <corr> name <name> queue <q>;
-- HSET <entity hash> "<corr>|queued" "<attempts so far>|<queue>|<entry id>"; SADD queue name.
--
-- Reply: one code per step:
--   "queued"     a task entry was added
--   "exists"     already handed over to this queue for this attempt count (the task is in the
--                stream)
--   "running"    the step is running (a pool worker holds it): nothing to do
--   "done"       the step is completed or failed
--   "too_early"  its retry delay has not passed (a timer wakes the run when it has)
--   "not_found"  the run has no such step
--   "terminal"   the run has ended: no new attempts
-- Events emitted: none (the pool worker commits step_started under its claim).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  + (tonumber(redis.call('GET', KEYS[4]) or '0') or 0)
local run_id = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
local out = {}
for i = 1, #KEYS - 4 do
  local corr, name, queue = ARGV[2 + 3 * (i - 1)], ARGV[3 + 3 * (i - 1)], ARGV[4 + 3 * (i - 1)]
  local code = 'queued'
  local v = redis.call('HGET', KEYS[2], corr)
  local st, attempt, retry_after
  if v then st, attempt, retry_after = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|') end
  if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
    code = 'terminal'
  elseif not st then
    code = 'not_found'
  elseif st == 'running' then
    code = 'running'
  elseif st ~= 'pending' then
    code = 'done'
  elseif (tonumber(retry_after) or 0) > now then
    code = 'too_early'
  else
    local queued = redis.call('HGET', KEYS[2], corr .. '|queued')
    local q_attempt, q_queue
    if queued then q_attempt, q_queue = string.match(queued, '^([^|]*)|([^|]*)|') end
    -- a hand-over to another queue name (the lane of another deployment, after the run was
    -- migrated) does not count: the task goes to the lane of the run's deployment now
    if queued and q_attempt == attempt and q_queue == queue then
      code = 'exists'
    else
      local id = redis.call('XADD', KEYS[4 + i], '*', 'run', run_id, 'step', corr, 'name', name,
        'queue', queue)
      redis.call('HSET', KEYS[2], corr .. '|queued', attempt .. '|' .. queue .. '|' .. id)
      redis.call('SADD', KEYS[3], queue)
    end
  end
  out[i] = code
end
return out
