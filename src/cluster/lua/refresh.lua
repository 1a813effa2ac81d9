-- A node's members of one room under its lease (after the node took a new one), then the
-- purge of dead nodes' entries; with no members, the purge alone (a node died). An entry
-- that had been purged (the node was cut off and declared dead) comes back as a join.
-- KEYS: pz, pu
-- ARGV: 1 lease, 2 dead, 3 channel, 4 publish command, 5 room, 6 list (see common.lua),
--       7.. members "USER CONNID", followed by a tab and the user's presence info if any
-- KEYS 3, 4 with the event feed (see common.lua).
feed_from(2)
local past = false
for i = 7, #ARGV do
  local m, info = string.match(ARGV[i], '^([^\t]*)\t?(.*)$')
  if redis.call('ZADD', KEYS[1], ARGV[1], m) == 1 then
    local user = string.match(m, '^(%S+)')
    if redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
      if info ~= '' then redis.call('HSET', info_key(KEYS[2]), user, info) end
      past = add_user(KEYS[2], redis.call('HLEN', KEYS[2]), ARGV[6], ARGV[3], ARGV[4], ARGV[5],
        user, nil, info ~= '' and info or nil) or past
    end
  end
end
past = purge(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]) or past
if past then counted(KEYS[2], ARGV[3], ARGV[4]) end
return 1
