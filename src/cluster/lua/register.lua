-- Admits a connection of a user under the session policy, across the cluster.
-- KEYS: conns (the user's sessions, scored by their node's lease), online, meta (the inbox)
-- ARGV: 1 connection id, 2 this node's lease, 3 dead (see common.lua), 4 policy, 5 max
--       connections, 6 the user's channel, 7 publish command
-- Returns {0, inbox seq} when admitted, {-1} over the maximum, {-2} refused by reject_new.
remove_dead(KEYS[1], ARGV[3])
remove_dead(KEYS[2], ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
if ARGV[4] == 'reject_new' and n > 0 then return {-2} end
if ARGV[4] == 'multi' and n >= tonumber(ARGV[5]) then return {-1} end
if ARGV[4] == 'kick_old' and n > 0 then
  -- Every node holding one of them closes it ("c": close all but this connection).
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  redis.call(ARGV[7], ARGV[6], 'c ' .. ARGV[1])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {0, tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')}
