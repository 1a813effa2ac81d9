-- A node's count of a count (or off) room's users: set (also its periodic refresh), then the
-- room's total, published as "o TOTAL" to its nodes when it changed. Field 't' keeps the
-- total last published.
-- KEYS: occ
-- ARGV: 1 node, 2 its users in the room, 3 expiry (ms), 4 now, 5 channel, 6 publish command
-- Returns the total.
local mine = tonumber(ARGV[2])
if mine > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local total = others(KEYS[1], ARGV[4], ARGV[1]) + mine
if total == 0 then
  redis.call('DEL', KEYS[1])
  redis.call(ARGV[6], ARGV[5], 'o 0')
elseif tonumber(redis.call('HGET', KEYS[1], 't') or '-1') ~= total then
  redis.call('HSET', KEYS[1], 't', total)
  redis.call(ARGV[6], ARGV[5], 'o ' .. total)
end
return total
