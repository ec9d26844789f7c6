-- register_deployment.lua: a worker's heartbeat for its deployment in the registry, or its leave.
--
-- KEYS[1]  the registry  wf:deployments  hash: deployment id -> JSON {"workflows": [names],
--          "first_seen_ms": ms, "last_seen_ms": ms, "workers": {worker name: last seen ms}}
-- ARGV[1]  deployment id
-- ARGV[2]  JSON array of the workflow names the worker serves
-- ARGV[3]  the live window, ms: a worker renewed within it is live; the others are dropped from
--          "workers". The workflows of an entry with another live worker are kept beside the
--          caller's (workers of one deployment may serve different queues); otherwise a renewal
--          replaces them and a leave keeps them
-- ARGV[4]  the worker's name
-- ARGV[5]  "register" (renew the worker) or "leave" (the worker stops: removed from "workers",
--          so a deployment whose last worker stopped is not live any more)
--
-- first_seen_ms is kept across renewals and leaves; last_seen_ms is the newest renewal.
-- Reply: the server's time, ms.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, live, me, mode = ARGV[1], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local first, last = now, 0
local names, seen, workers = {}, {}, {}
local any_live = false
local old = redis.call('HGET', KEYS[1], id)
if old then
  local ok, entry = pcall(cjson.decode, old)
  if ok and type(entry) == 'table' then
    first = tonumber(entry['first_seen_ms']) or now
    last = tonumber(entry['last_seen_ms']) or 0
    if type(entry['workers']) == 'table' then
      for name, at in pairs(entry['workers']) do
        at = tonumber(at)
        if type(name) == 'string' and at and at >= now - live and name ~= me then
          workers[name] = at
          any_live = true
        end
      end
    end
    -- a leave keeps the list (shown while the deployment is gone); a renewal keeps it only
    -- beside other live workers, so a deployment id reused for other code lists that code's
    if (any_live or mode == 'leave') and type(entry['workflows']) == 'table' then
      for _, name in ipairs(entry['workflows']) do
        if type(name) == 'string' and not seen[name] then
          seen[name] = true
          names[#names + 1] = name
        end
      end
    end
  end
end
if mode == 'register' then
  workers[me] = now
  last = now
  for _, name in ipairs(cjson.decode(ARGV[2])) do
    if not seen[name] then
      seen[name] = true
      names[#names + 1] = name
    end
  end
elseif not old then
  return now  -- a leave of a deployment never registered: nothing to record
end
table.sort(names)
local text = cjson.encode({ workflows = names, first_seen_ms = first, last_seen_ms = last,
  workers = workers })
-- cjson writes an empty table as an object: the workflow list stays a list
text = string.gsub(text, '"workflows":{}', '"workflows":[]')
redis.call('HSET', KEYS[1], id, text)
return now
