-- Moves the event feed's delivery mark forward, for the lease's holder only (a node that lost
-- the lease while its batch was out must not move it for the one delivering now).
-- KEYS: lease, meta; ARGV: 1 the holder, 2 the mark. Returns 0 when the lease is not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'mark') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'mark', ARGV[2])
end
return 1
