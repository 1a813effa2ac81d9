-- A connection joins a room: its presence entry, the room's seq and epoch.
-- KEYS: meta, pz, pu, log
-- ARGV: 1 member "USER CONNID", 2 user, 3 expiry (ms), 4 now, 5 channel, 6 publish command,
--       7 room, 8 '1' for presence events, 9 epoch if the room starts one, 10 the connection
-- Returns {seq, epoch}.
purge(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
local epoch = epoch_of(KEYS[1], KEYS[4], ARGV[9])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 and ARGV[8] == '1' then
    redis.call(ARGV[6], ARGV[5], event('joined', ARGV[7], ARGV[2], ARGV[10]))
  end
end
return {seq, epoch}
