-- A connection left a room (or ended).
-- KEYS: pz, pu
-- ARGV: 1 member "USER CONNID", 2 user, 3 now, 4 channel, 5 publish command, 6 room,
--       7 '1' for presence events
purge(KEYS[1], KEYS[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    if ARGV[7] == '1' then redis.call(ARGV[5], ARGV[4], event('left', ARGV[6], ARGV[2])) end
  end
end
return 1
