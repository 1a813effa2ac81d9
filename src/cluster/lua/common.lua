-- Shared by the presence scripts (prepended to each). A `list` room's presence entries are
-- members "USER CONNID" of a sorted set scored by the lease of the node that holds them (a
-- user's sessions too), so a node never refreshes them one by one: a lease lives while its
-- node's heartbeat does. A hash counts each user's entries. A `count` or `off` room has none:
-- each node keeps one count in the room's occupancy hash instead (see `occupancy`).
--
-- `dead` (an argument of the scripts): the scores of dead nodes' entries as ZRANGEBYSCORE
-- bounds, "MIN MAX MIN MAX ..." (built by `Live` in engine/upkeep.rs).
--
-- `list` (an argument of the scripts): "MAX EVENTS", the room's `presence_list_max` and '1'
-- when `joined`/`left` are sent. A list room of more than MAX users sends none; it publishes
-- "o USERS" instead, once per call, which the nodes pass on coalesced as `occupancy` events.

-- The `joined`/`left` event as published: "e EXCL", a newline, the frame's JSON (the same
-- bytes as encode::membership; names are [A-Za-z0-9_.:@-], nothing to escape). EXCL: the
-- connection that joined (it is not told of itself), or empty.
-- INFO: a `joined` user's presence info (a JSON object), spliced in as `encode::joined` does.
local function event(kind, room, user, exclude, info)
  local tail = '"}'
  if info and info ~= '' then tail = '","info":' .. info .. '}' end
  return 'e ' .. (exclude or '') .. '\n{"type":"' .. kind .. '","room":"' .. room ..
    '","user":"' .. user .. tail
end

-- The hash of users' presence info beside a list room's entry counts `pu` (same hash slot:
-- the key starts with pu's tag). Only users whose connect hook gave info have a field.
local function info_key(pu)
  return pu .. ':i'
end

-- A user came or went (`kind`) in a list room of `users` users (counting the user): `joined` or
-- `left` within the room's maximum. Past it, returns true: the caller then publishes the
-- room's count once (`counted`), however many users came or went in the call.
local function announce(kind, users, list, channel, pubcmd, room, user, exclude, info)
  local max, events = string.match(list, '^(%d+) (%d)$')
  if users > tonumber(max) then return true end
  feed('t', feed_now(), 'e', kind == 'joined' and 'j' or 'l', 'n', room, 'u', user)
  if events == '1' then redis.call(pubcmd, channel, event(kind, room, user, exclude, info)) end
  return false
end

-- "o USERS": a list room past its maximum tells its nodes its count.
local function counted(pu, channel, pubcmd)
  redis.call(pubcmd, channel, 'o ' .. redis.call('HLEN', pu))
end

-- One entry of the user fewer; at its last, the user is gone. True when the room was past
-- its maximum (see `announce`).
local function drop_entry(pu, user, channel, pubcmd, room, list)
  if redis.call('HINCRBY', pu, user, -1) > 0 then return false end
  local users = redis.call('HLEN', pu)
  redis.call('HDEL', pu, user)
  redis.call('HDEL', info_key(pu), user)
  local past = announce('left', users, list, channel, pubcmd, room, user)
  if users == 1 then feed('t', feed_now(), 'e', 'v', 'n', room) end
  return past
end

-- A user's first entry in a list room was added: `occupied` if it is the room's first user,
-- then `joined` (see `announce`).
local function add_user(pu, users, list, channel, pubcmd, room, user, exclude, info)
  if redis.call('HLEN', pu) == 1 then feed('t', feed_now(), 'e', 'o', 'n', room) end
  return announce('joined', users, list, channel, pubcmd, room, user, exclude, info)
end

-- Removes the entries of dead nodes; `left` for every user whose last entry went. True as
-- `announce`.
local function purge(pz, pu, dead, channel, pubcmd, room, list)
  local b = bounds(dead)
  local past = false
  for i = 1, #b - 1, 2 do
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', pz, b[i], b[i + 1])) do
      redis.call('ZREM', pz, m)
      past = drop_entry(pu, string.match(m, '^(%S+)'), channel, pubcmd, room, list) or past
    end
  end
  return past
end

-- A count room's members: the sum of each live node's count in the occupancy hash (field: the
-- node id, value "COUNT EXPIRY"), but `skip`'s. A dead node's count expires and is dropped.
local function others(occ, now, skip)
  local all = redis.call('HGETALL', occ)
  local total = 0
  for i = 1, #all, 2 do
    local node = all[i]
    if node ~= 't' and node ~= skip then
      local count, expiry = string.match(all[i + 1], '^(%d+) (%d+)$')
      if not expiry or tonumber(expiry) < tonumber(now) then
        redis.call('HDEL', occ, node)
      else
        total = total + tonumber(count)
      end
    end
  end
  return total
end

-- `disconnected` for connection `c` of `user`.
local function gone(user, c)
  feed('t', feed_now(), 'e', 'x', 'u', user, 'c', c)
end

-- Removes dead nodes' sessions and attached connections of a user, with `disconnected` for
-- each session removed: at the user's next connect (`register.lua`) or in the sweep after a
-- node died (`reap.lua`), whichever runs first; a second finds nothing, so each is told once.
-- Returns how many were told.
local function purge_sessions(conns, online, dead, user)
  local told = 0
  if feed_log then
    local b = bounds(dead)
    for i = 1, #b - 1, 2 do
      for _, c in ipairs(redis.call('ZRANGEBYSCORE', conns, b[i], b[i + 1])) do
        gone(user, c)
        told = told + 1
      end
    end
  end
  remove_dead(conns, dead)
  remove_dead(online, dead)
  return told
end
