-- fence_hook.lua: decide, in the holder run's slot, whether a token's reservation is stale.
--
-- A reservation is taken before hook_created is committed in the run's slot; if the writer dies
-- in between, the run never holds the hook. A run asking for the token calls this script on the
-- holder: when the holder does not hold the hook, the script marks the hook lost
-- ("<hook id>|lost" -> token in the run's hooks hash), so a hook_created of that hook still in
-- flight is recorded by commit.lua as hook_conflict, never as a second holder. The caller may then
-- delete the reservation (release_hook.lua) and reserve the token for itself.
--
-- KEYS[1]  the holder's run hash     wf:{pN}:run:<id>
-- KEYS[2]  the holder's live hooks   wf:{pN}:run:<id>:hooks
--
-- ARGV[1]  the holder's hook id   ARGV[2]  the token
--
-- Reply: "held" (the run holds the hook with this token: the reservation stands),
--        "ended" (the run is gone or ended: it holds no hook and never will),
--        "fenced" (the hook is marked lost: it will never hold the token).
-- Events emitted: none.

local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 'ended'
end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  return 'held'
end
redis.call('HSET', KEYS[2], ARGV[1] .. '|lost', ARGV[2])
return 'fenced'
