-- Sequences, stores and publishes one message of a stream (a room, or a user's inbox).
-- Its arguments are only what the message needs: each costs Redis about 0.08 us per call.
-- KEYS: meta, log; an inbox adds online (its attached connections); a keyed message adds
--       online (a room passes meta again), keys (hash "SENDER KEY" -> seq) and keyz (the
--       same keys scored by ts)
-- ARGV: 1 channel, 2 publish command, 3 JSON up to the seq, 4 JSON after the seq, 5 ts (also
--       now), 6 excluded connection ('' for none), 7 max entries ('0': no limit), 8 oldest ts
--       kept ('0': no limit), 9 epoch if the stream starts one; an inbox or a keyed message:
--       10 an inbox's dead (see common.lua; '' for a room); a keyed message: 11 "SENDER KEY",
--       12 most keys kept, 13 keys written before this ts are forgotten once their message is
--       trimmed
-- With the event feed, all five KEYS and ARGV 10 to 13 are passed (unused ones empty), and
-- 14 the room's or user's name, then KEYS 6, 7 (see common.lua): the `message` or `direct`
-- event is written with the message.
-- Returns {seq, epoch, dup}: dup 1 when the key was stored before, with that message's seq
-- (nothing is stored or published then).
feed_from(5)
local meta, log, keys, keyz = KEYS[1], KEYS[2], KEYS[4], KEYS[5]
local m = redis.call('HMGET', meta, 'epoch', 'trim')
local epoch = m[1] or epoch_of(meta, log, ARGV[9])
local inbox = KEYS[3] and KEYS[3] ~= meta
local key = ARGV[11] or ''
if key ~= '' then
  -- The keys hold the epoch they name seqs of (field ' epoch': no "SENDER KEY" starts with a
  -- space); keys of another epoch (history lost, whichever script started the new one) name
  -- nothing.
  if redis.call('HGET', keys, ' epoch') ~= tostring(epoch) then
    redis.call('DEL', keys, keyz)
    redis.call('HSET', keys, ' epoch', epoch)
  else
    local first = redis.call('HGET', keys, key)
    if first then return {tonumber(first), epoch, 1} end
  end
end
local seq, text = next_seq(meta)
local json = ARGV[3] .. text .. ARGV[4]
append(log, seq, text, ARGV[7], ARGV[5], json)
-- Age, only once the oldest entry may have expired: `trim` in meta says when that is. Both are
-- unix ms as integer text, compared as text (tonumber is a strtod, about 0.1 us each).
local trim = m[2]
if ARGV[8] ~= '0' and (not trim or #trim < #ARGV[5] or (#trim == #ARGV[5] and trim <= ARGV[5])) then
  local cut, oldest = nil, nil
  for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', 64)) do
    local ts = tonumber(e[2][2])
    if ts >= tonumber(ARGV[8]) then oldest = ts; break end
    cut = tonumber(string.match(e[1], '^(%d+)')) + 1
  end
  if cut then redis.call('XTRIM', log, 'MINID', cut) end
  -- The oldest kept expires at oldest + age; more than 64 expired: go on at the next publish.
  local due = ARGV[5]
  if oldest then due = string.format('%d', oldest + tonumber(ARGV[5]) - tonumber(ARGV[8])) end
  redis.call('HSET', meta, 'trim', due)
end
if key ~= '' then
  -- With its message, in this script: a repeat is recognised from here on.
  redis.call('HSET', keys, key, text)
  redis.call('ZADD', keyz, ARGV[5], key)
  local over = redis.call('ZCARD', keyz) - tonumber(ARGV[12])
  if over > 0 then
    for _, k in ipairs(redis.call('ZRANGE', keyz, 0, over - 1)) do redis.call('HDEL', keys, k) end
    redis.call('ZREMRANGEBYRANK', keyz, 0, over - 1)
  end
  -- Keys older than the window whose message is trimmed, oldest first, 64 at most.
  local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  local kept = head[1] and tonumber(string.match(head[1][1], '^(%d+)')) or seq + 1
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', keyz, '-inf', '(' .. ARGV[13], 'LIMIT', 0, 64)) do
    if tonumber(redis.call('HGET', keys, k) or 0) >= kept then break end
    redis.call('HDEL', keys, k)
    redis.call('ZREM', keyz, k)
  end
end
if inbox then remove_dead(KEYS[3], ARGV[10]) end
local attached = inbox and redis.call('ZCARD', KEYS[3]) > 0
if attached then
  -- A connection of the user is attached, so it gets the message live: delivered.
  redis.call('HSET', meta, 'cursor', text)
end
if inbox then
  feed('t', ARGV[5], 'e', 'd', 'n', ARGV[14], 's', text, 'o', attached and '0' or '1', 'd', json)
else
  feed('t', ARGV[5], 'e', 'm', 'n', ARGV[14], 's', text, 'd', json)
end
-- A keyed message names its sender and key ("m SEQ EXCL EPOCH SENDER KEY"), for the sender's
-- other connections.
local own = ''
if key ~= '' then own = ' ' .. key end
redis.call(ARGV[2], ARGV[1], 'm ' .. text .. ' ' .. ARGV[6] .. ' ' .. epoch .. own .. '\n' .. json)
return {seq, epoch, 0}
