-- What a node missed of a stream while its subscription was down: the stream's epoch (0 if
-- its meta is gone) and up to ARGV[2] log entries after seq ARGV[1].
-- KEYS: meta, log
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
return {epoch, redis.call('XRANGE', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT', ARGV[2])}
