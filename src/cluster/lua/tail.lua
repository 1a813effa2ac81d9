-- What a node missed of a stream while its subscription was down: the stream's epoch (0 if
-- its meta is gone), its seq (below what the node has seen: a rollback, see `failover`) and up
-- to ARGV[2] log entries after seq ARGV[1].
-- KEYS: meta, log
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local entries = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT', ARGV[2])
return {tonumber(m[1] or '0'), tonumber(m[2] or '0'), entries}
