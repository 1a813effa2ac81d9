-- A connection is attached: it gets the user's direct messages live from now on.
-- KEYS: online, meta, log
-- ARGV: 1 connection id, 2 this node's lease, 3 epoch if the inbox starts one
-- Returns {inbox seq, delivered cursor, epoch}.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local epoch = epoch_of(KEYS[2], KEYS[3], ARGV[3])
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local cursor = tonumber(redis.call('HGET', KEYS[2], 'cursor') or '0')
return {seq, cursor, epoch}
