-- register_deployment.lua: a worker's heartbeat for its deployment in the registry.
--
-- KEYS[1]  the registry  wf:deployments  hash: deployment id -> JSON {"workflows": [names],
--          "first_seen_ms": ms, "last_seen_ms": ms}
-- ARGV[1]  deployment id
-- ARGV[2]  JSON array of the workflow names the worker serves
-- ARGV[3]  the live window, ms: an entry renewed within it is live, and its workflows are kept
--          beside the caller's (workers of one deployment may serve different queues); an entry
--          older than that is replaced (first_seen_ms is kept either way)
--
-- Reply: the server's time, ms.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, live = ARGV[1], tonumber(ARGV[3])
local served = cjson.decode(ARGV[2])
local first = now
local names, seen = {}, {}
local old = redis.call('HGET', KEYS[1], id)
if old then
  local ok, entry = pcall(cjson.decode, old)
  if ok and type(entry) == 'table' then
    first = tonumber(entry['first_seen_ms']) or now
    local last = tonumber(entry['last_seen_ms']) or 0
    if last >= now - live and type(entry['workflows']) == 'table' then
      for _, name in ipairs(entry['workflows']) do
        if type(name) == 'string' and not seen[name] then
          seen[name] = true
          names[#names + 1] = name
        end
      end
    end
  end
end
for _, name in ipairs(served) do
  if not seen[name] then
    seen[name] = true
    names[#names + 1] = name
  end
end
table.sort(names)
local text = cjson.encode({ workflows = names, first_seen_ms = first, last_seen_ms = now })
if #names == 0 then  -- cjson writes an empty table as an object
  text = string.gsub(text, '"workflows":{}', '"workflows":[]')
end
redis.call('HSET', KEYS[1], id, text)
return now
