-- A connection joins a room: its presence entry (a list room's), the room's seq and epoch,
-- and its member count; `max_members` is checked here, where every node's members are seen.
-- KEYS: meta, pz, pu, log, occ
-- ARGV: 1 member "USER CONNID", 2 user, 3 this node's lease, 4 now (ms), 5 channel, 6 publish
--       command, 7 room, 8 list (see common.lua), 9 epoch if the room starts one, 10 the
--       connection, 11 'list' or 'count' (a count or off room), 12 this node, 13 this node's
--       users in the room counting this one, 14 max_members (0: none), 15 '1' if the user is
--       new on this node, 16 dead (see common.lua), 17 the connection's presence info (a JSON
--       object, or empty: none)
-- KEYS 6, 7 with the event feed (see common.lua).
-- Returns {seq, epoch, members}, or {-1, 0, members} when the room is full.
feed_from(5)
local members
local new_user
local past = false
if ARGV[11] == 'list' then
  past = purge(KEYS[2], KEYS[3], ARGV[16], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
  new_user = redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0
  members = redis.call('HLEN', KEYS[3]) + (new_user and 1 or 0)
else
  new_user = ARGV[15] == '1'
  members = others(KEYS[5], ARGV[4], ARGV[12]) + tonumber(ARGV[13])
end
local max = tonumber(ARGV[14])
if new_user and max > 0 and members > max then
  if past then counted(KEYS[3], ARGV[5], ARGV[6]) end
  return {-1, 0, members - 1}
end
local epoch = epoch_of(KEYS[1], KEYS[4], ARGV[9])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if ARGV[11] == 'list' and redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then
      if ARGV[17] ~= '' then redis.call('HSET', info_key(KEYS[3]), ARGV[2], ARGV[17]) end
      past = add_user(KEYS[3], members, ARGV[8], ARGV[5], ARGV[6], ARGV[7], ARGV[2], ARGV[10],
        ARGV[17]) or past
  end
end
if past then counted(KEYS[3], ARGV[5], ARGV[6]) end
return {seq, epoch, members}
