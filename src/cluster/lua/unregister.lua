-- A connection of the user ended: KEYS conns, online (3, 4: the event feed, see common.lua);
-- ARGV 1 the connection id, 2 the user. `disconnected` unless its session was already gone
-- (purged as a dead node's, or closed by `kick_old`: told then).
feed_from(2)
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  feed('t', feed_now(), 'e', 'x', 'u', ARGV[2], 'c', ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
