-- Moves a user's read position forward (issue 23), and tells the user's other connections.
-- KEYS: 1 the user's reads hash (field: "r:ROOM" or "i"), 2 the inbox's meta (for its seq)
-- ARGV: 1 field, 2 seq (a room's already clamped by the asking node), 3 whether it is the
--       inbox (clamped here), 4 the user's channel, 5 unused, 6 the connection to exclude,
--       7 room name or "" (the inbox), 8 publish command
-- Publishes "r SEQ EXCL ROOM" (wire.rs) on the user's channel when the position moved.
-- Returns the position now held.
local seq = tonumber(ARGV[2])
if ARGV[3] == '1' then
  local last = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
  if seq > last then seq = last end
end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if seq <= cur then return cur end
redis.call('HSET', KEYS[1], ARGV[1], seq)
redis.call(ARGV[8], ARGV[4], 'r ' .. seq .. ' ' .. ARGV[6] .. ' ' .. ARGV[7] .. '\n')
return seq
