-- A node's count of a count (or off) room's users: set (also its periodic refresh), then the
-- room's total, published as "o TOTAL" to its nodes when it changed. Field 't' keeps the
-- total last published.
-- KEYS: occ
-- ARGV: 1 node, 2 its users in the room, 3 expiry (ms), 4 now, 5 channel, 6 publish command,
--       7 room
-- KEYS 2, 3 with the event feed (see common.lua): `occupied` when the total leaves 0,
-- `vacated` when it comes back to 0.
-- Returns the total.
feed_from(1)
local told = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local mine = tonumber(ARGV[2])
if mine > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local total = others(KEYS[1], ARGV[4], ARGV[1]) + mine
if total == 0 then
  redis.call('DEL', KEYS[1])
  if told > 0 then feed('t', ARGV[4], 'e', 'v', 'n', ARGV[7]) end
  redis.call(ARGV[6], ARGV[5], 'o 0')
elseif tonumber(redis.call('HGET', KEYS[1], 't') or '-1') ~= total then
  redis.call('HSET', KEYS[1], 't', total)
  if told <= 0 then feed('t', ARGV[4], 'e', 'o', 'n', ARGV[7]) end
  redis.call(ARGV[6], ARGV[5], 'o ' .. total)
end
return total
