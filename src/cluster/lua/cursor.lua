-- The inbox replay up to ARGV[1] reached a connection: the delivered cursor moves up to it.
-- KEYS: meta
if tonumber(redis.call('HGET', KEYS[1], 'cursor') or '0') < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'cursor', ARGV[1])
end
return 1
