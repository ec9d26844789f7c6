-- release_hook.lua: free a hook token's reservation if it still names the given holder.
--
-- KEYS[1]  the token's reservation   wf:hook:{<token hash>}   string "<run id>|<hook id>"
--
-- ARGV[1]  the holder expected: "<run id>|<hook id>"
--
-- Reply: 1 when the reservation was deleted, 0 when it names another holder or is gone (a
-- compare-and-delete: a late release never frees a token another hook has taken since).
-- Events emitted: none.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
