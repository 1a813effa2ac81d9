-- Moves events of one feed partition (a Redis Cluster slot's, docs/hooks.md) into the feed,
-- for the lease's holder only. The feed's meta hash keeps, per partition, the last partition
-- cursor moved (field "p" .. SLOT), in the same call as the events it moved: an event is
-- moved once, whoever moves it and whenever a mover dies.
-- KEYS: lease, meta, log. ARGV: 1 the holder, 2 the partition's field, 3 a position to restart
-- from ('' for none: the partition went back, Redis lost its last writes), then per event: its
-- partition cursor, N its field count, and its N fields and values (as the scripts wrote them).
-- Returns the partition's position after the call, or -1 when the lease is not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
local done = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local i = 4
while i <= #ARGV do
  local pc, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if pc > done then
    local c = redis.call('HINCRBY', KEYS[2], 'last', 1)
    redis.call('XADD', KEYS[3], c .. '-0', unpack(ARGV, i + 2, i + 1 + n))
    done = pc
  end
  i = i + 2 + n
end
redis.call('HSET', KEYS[2], ARGV[2], done)
return done
