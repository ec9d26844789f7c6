-- read_bands.lua: take new entries of streams of one slot in the order given, at most a count.
--
-- XREADGROUP's COUNT applies per stream; reading the streams one after the other here, each with
-- the room the ones before it left, takes the first streams' entries first and never more than
-- the count in all (see world_redis/_queue.py, read_wakeups).
--
-- KEYS[1..]  the streams in the order they are served: a partition's ready streams by priority
--            band (wf:{pN}:ready:hi, wf:{pN}:ready, wf:{pN}:ready:lo), or its queue streams
--            band by band (see world_redis/_keys.py); each with the consumer group ARGV[1]
-- ARGV[1]    consumer group ("workers")
-- ARGV[2]    consumer name
-- ARGV[3]    the most entries to take
--
-- Reply: a flat array: for each stream that gave entries, its index i in KEYS and its entries
-- (as XREADGROUP gives them: {id, {field, value, ...}} each). A stream without the group fails
-- the call with NOGROUP (the caller creates the group and reads again later).
-- Events emitted: none.

local room = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  if room <= 0 then break end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', room,
    'STREAMS', KEYS[i], '>')
  if got and got[1] and #got[1][2] > 0 then
    out[#out + 1] = i
    out[#out + 1] = got[1][2]
    room = room - #got[1][2]
  end
end
return out
