-- A node's connections of one user under its lease (after the node took a new one): KEYS
-- conns, online; ARGV 1 lease, 2 how many of the ids that follow are sessions (the rest are
-- attached connections).
local n = tonumber(ARGV[2])
for i = 3, #ARGV do
  if i < 3 + n then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
  end
end
return 1
