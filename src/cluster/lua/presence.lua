-- Who is in a list room, across the cluster (dead nodes' entries purged first), and the
-- presence info of those that have one: {users, {user, info, ...}}.
-- KEYS: pz, pu
-- ARGV: 1 dead, 2 channel, 3 publish command, 4 room, 5 list (see common.lua)
-- KEYS 3, 4 with the event feed (see common.lua).
feed_from(2)
if purge(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]) then
  counted(KEYS[2], ARGV[2], ARGV[3])
end
return {redis.call('HKEYS', KEYS[2]), redis.call('HGETALL', info_key(KEYS[2]))}
