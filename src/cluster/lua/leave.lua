-- A connection left a list room (or ended). Returns the room's users now.
-- KEYS: pz, pu
-- ARGV: 1 member "USER CONNID", 2 user, 3 dead, 4 channel, 5 publish command, 6 room,
--       7 list (see common.lua)
-- KEYS 3, 4 with the event feed (see common.lua).
feed_from(2)
local past = purge(KEYS[1], KEYS[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  past = drop_entry(KEYS[2], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7]) or past
end
if past then counted(KEYS[2], ARGV[4], ARGV[5]) end
return redis.call('HLEN', KEYS[2])
