-- A node's connections of one user under its lease (after the node took a new one): KEYS
-- conns, online (3, 4: the event feed, see common.lua); ARGV 1 lease, 2 the user, 3 how many
-- of the ids that follow are sessions (the rest are attached connections). A session that had
-- been purged (its node was cut off and taken for dead: told `disconnected` then) comes back
-- as `connected`, as a purged presence entry comes back as a join (`refresh.lua`).
feed_from(2)
local n = tonumber(ARGV[3])
for i = 4, #ARGV do
  if i < 4 + n then
    if redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) == 1 then
      feed('t', feed_now(), 'e', 'c', 'u', ARGV[2], 'c', ARGV[i])
    end
  else
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
  end
end
return 1
