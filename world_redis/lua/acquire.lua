-- acquire.lua: take the lease on runs so that one worker at a time advances each run.
--
-- KEYS[2i-1]  run hash          wf:{pN}:run:<id>      for each run i of the batch (one partition)
-- KEYS[2i]    run event stream  wf:{pN}:run:<id>:ev
-- ARGV[1]     lease token of the caller (worker id + nonce)
-- ARGV[2]     lease duration, ms
-- ARGV[2+i]   for run i: read its log after this seq and return it (-1: do not read)
--
-- Reply: one {code, seq, status, taken_over, events} per run, where code is
--   "ok"       the caller holds the lease now (fresh, renewed, or taken over from a lapsed holder)
--   "busy"     another live worker holds it; the caller drops its wake-up (the holder sees new
--              events when it renews or releases the lease)
--   "no_run"   the run does not exist (expired or never created)
-- taken_over = 1 when a lapsed holder's lease was taken (its in-flight steps are orphaned and
-- must be restarted); events = XRANGE reply of the log after ARGV[2+i], so a worker loads a run in
-- the same round trip.
-- Events emitted: none.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token, lease = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 2 do
  local run_key, ev_key = KEYS[2 * i - 1], KEYS[2 * i]
  local m = redis.call('HMGET', run_key, 'status', 'seq', 'lease_owner', 'lease_until')
  if not m[1] then
    out[i] = { 'no_run', 0, '', 0, {} }
  else
    local owner, until_ms = m[3] or '', tonumber(m[4] or '0') or 0
    if owner ~= '' and owner ~= token and until_ms > now then
      out[i] = { 'busy', tonumber(m[2]), m[1], 0, {} }
    else
      redis.call('HSET', run_key, 'lease_owner', token, 'lease_until', now + lease)
      local prev = 0
      if owner ~= '' and owner ~= token then prev = 1 end
      local events = {}
      local after = tonumber(ARGV[2 + i])
      if after >= 0 then
        events = redis.call('XRANGE', ev_key, '(' .. after .. '-0', '+')
      end
      out[i] = { 'ok', tonumber(m[2]), m[1], prev, events }
    end
  end
end
return out
