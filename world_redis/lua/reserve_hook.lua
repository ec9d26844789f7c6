-- reserve_hook.lua: reserve a hook token for one hook of one run, before its hook_created commit.
--
-- The reservation key lives in a slot of its own (hash tag: a hash of the token), so a token is
-- unique across every partition and node. It names its holder; the run's slot says whether the
-- holder still holds the hook (see fence_hook.lua), which makes a reservation left by a crash
-- reclaimable.
--
-- KEYS[1]  the token's reservation   wf:hook:{<token hash>}   string "<run id>|<hook id>"
--
-- ARGV[1]  the holder asking: "<run id>|<hook id>"
--
-- Reply: {"ok"} (reserved now, or already reserved by this same hook: a retry) or
--        {"taken", "<run id>|<hook id>"} (another hook's reservation).
-- Events emitted: none.

local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1])
  return { 'ok' }
end
if holder == ARGV[1] then
  return { 'ok' }
end
return { 'taken', holder }
