-- Sequences, stores and publishes one message of a stream (a room, or a user's inbox).
-- KEYS: meta, log, online (inbox: its attached connections; a room passes meta again)
-- ARGV: 1 channel, 2 publish command, 3 JSON up to the seq, 4 JSON after the seq, 5 ts,
--       6 excluded connection ('' for none), 7 max entries ('0': no limit), 8 oldest ts kept
--       ('0': no limit), 9 '1' for an inbox, 10 now (ms), 11 epoch if the stream starts one,
--       12 an inbox's dead (see common.lua)
-- Returns {seq, epoch}.
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'epoch', 'trim')
local epoch = m[1] or epoch_of(meta, log, ARGV[11])
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local json = ARGV[3] .. seq .. ARGV[4]
if ARGV[7] ~= '0' then
  redis.call('XADD', log, 'MAXLEN', ARGV[7], seq .. '-0', 't', ARGV[5], 'd', json)
else
  redis.call('XADD', log, seq .. '-0', 't', ARGV[5], 'd', json)
end
if ARGV[8] ~= '0' and (not m[2] or tonumber(m[2]) <= tonumber(ARGV[10])) then
  -- Age, only once the oldest entry may have expired: `trim` in meta says when that is.
  local cut, oldest = nil, nil
  for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', 64)) do
    local ts = tonumber(e[2][2])
    if ts >= tonumber(ARGV[8]) then oldest = ts; break end
    cut = tonumber(string.match(e[1], '^(%d+)')) + 1
  end
  if cut then redis.call('XTRIM', log, 'MINID', cut) end
  -- The oldest kept expires at oldest + age; more than 64 expired: go on at the next publish.
  local due = ARGV[10]
  if oldest then due = oldest + tonumber(ARGV[10]) - tonumber(ARGV[8]) end
  redis.call('HSET', meta, 'trim', due)
end
if ARGV[9] == '1' then remove_dead(KEYS[3], ARGV[12]) end
if ARGV[9] == '1' and redis.call('ZCARD', KEYS[3]) > 0 then
  -- A connection of the user is attached, so it gets the message live: delivered.
  redis.call('HSET', meta, 'cursor', seq)
end
redis.call(ARGV[2], ARGV[1], 'm ' .. seq .. ' ' .. ARGV[6] .. ' ' .. epoch .. '\n' .. json)
return {seq, epoch}
