-- Moves events of feed partitions (a Redis Cluster slot's each, docs/hooks.md) into the feed,
-- for the lease's holder only. The feed's meta hash keeps, per partition, the last partition
-- cursor moved (field "p" .. SLOT), in the same call as the events it moved: an event is
-- moved once, whoever moves it and whenever a mover dies.
-- KEYS: lease, meta, log. ARGV: 1 the holder, then per partition: its field, a position to
-- restart from ('' for none; else the partition went back: Redis lost its last writes), E its
-- event count, and per event: its partition cursor, N its field count, and its N fields and
-- values (as the scripts wrote them).
-- Returns each partition's position after the call, or {-1} when the lease is not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local out = {}
local i = 2
while i <= #ARGV do
  local field, restart, events = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  if restart ~= '' then redis.call('HSET', KEYS[2], field, restart) end
  local done = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  for _ = 1, events do
    local pc, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if pc > done then
      local c = redis.call('HINCRBY', KEYS[2], 'last', 1)
      redis.call('XADD', KEYS[3], c .. '-0', unpack(ARGV, i + 2, i + 1 + n))
      done = pc
    end
    i = i + 2 + n
  end
  redis.call('HSET', KEYS[2], field, done)
  out[#out + 1] = done
end
return out
