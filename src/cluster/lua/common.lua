-- Shared by the presence scripts (prepended to each). Presence entries are members
-- "USER CONNID" of a sorted set scored by their expiry (ms); a hash counts each user's entries.

-- The `joined`/`left` event as published: "e EXCL", a newline, the frame's JSON (the same
-- bytes as encode::membership; names are [A-Za-z0-9_.:@-], nothing to escape). EXCL: the
-- connection that joined (it is not told of itself), or empty.
local function event(kind, room, user, exclude)
  return 'e ' .. (exclude or '') .. '\n{"type":"' .. kind .. '","room":"' .. room ..
    '","user":"' .. user .. '"}'
end

-- Removes the entries that expired (their node stopped refreshing them); `left` for every user
-- whose last entry went.
local function purge(pz, pu, now, channel, pubcmd, room, events)
  local gone = redis.call('ZRANGEBYSCORE', pz, '-inf', '(' .. now)
  for _, m in ipairs(gone) do
    redis.call('ZREM', pz, m)
    local user = string.match(m, '^(%S+)')
    if redis.call('HINCRBY', pu, user, -1) <= 0 then
      redis.call('HDEL', pu, user)
      if events == '1' then redis.call(pubcmd, channel, event('left', room, user)) end
    end
  end
end

-- The stream's epoch; a stream without one (new, or its meta was lost) starts a new epoch
-- and drops any log left from an older one.
local function epoch_of(meta, log, candidate)
  local e = redis.call('HGET', meta, 'epoch')
  if not e then
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', candidate)
    e = candidate
  end
  return e
end
