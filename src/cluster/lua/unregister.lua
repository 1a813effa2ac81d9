-- A connection of the user ended: KEYS conns, online; ARGV[1] the connection id.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
