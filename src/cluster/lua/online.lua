-- A connection is attached: it gets the user's direct messages live from now on.
-- KEYS: online, meta
-- ARGV: 1 connection id, 2 expiry (ms)
-- Returns {inbox seq, delivered cursor}.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local cursor = tonumber(redis.call('HGET', KEYS[2], 'cursor') or '0')
return {seq, cursor}
