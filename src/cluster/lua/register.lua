-- Admits a connection of a user under the session policy, across the cluster.
-- KEYS: conns (the user's sessions, scored by their node's lease), online, meta (the inbox)
-- ARGV: 1 connection id, 2 this node's lease, 3 dead (see common.lua), 4 policy, 5 max
--       connections, 6 the user's channel, 7 publish command, 8 the user
-- KEYS 4, 5 with the event feed (see common.lua): `connected`, and `disconnected` for the
-- connections of dead nodes purged here and for those `kick_old` closes.
-- Returns {0, inbox seq} when admitted, {-1} over the maximum, {-2} refused by reject_new.
feed_from(3)
purge_sessions(KEYS[1], KEYS[2], ARGV[3], ARGV[8])
local n = redis.call('ZCARD', KEYS[1])
if ARGV[4] == 'reject_new' and n > 0 then return {-2} end
if ARGV[4] == 'multi' and n >= tonumber(ARGV[5]) then return {-1} end
if ARGV[4] == 'kick_old' and n > 0 then
  -- Every node holding one of them closes it ("c": close all but this connection).
  if feed_log then
    for _, c in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do gone(ARGV[8], c) end
  end
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  redis.call(ARGV[7], ARGV[6], 'c ' .. ARGV[1])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
feed('t', feed_now(), 'e', 'c', 'u', ARGV[8], 'c', ARGV[1])
return {0, tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')}
