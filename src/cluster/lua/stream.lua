-- Prepended to every script (before common.lua): the functions `publish.lua` and `event.lua`
-- need. Those two, run once per message, get only these: defining common.lua's presence
-- functions at every call cost about 0.4 us of Redis CPU per publish.

-- The pairs of bounds in `dead`.
local function bounds(dead)
  local b = {}
  for w in string.gmatch(dead, '%S+') do b[#b + 1] = w end
  return b
end

-- Removes the entries of dead nodes from a user's sessions or attached connections.
local function remove_dead(key, dead)
  local b = bounds(dead)
  for i = 1, #b - 1, 2 do
    redis.call('ZREMRANGEBYSCORE', key, b[i], b[i + 1])
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

-- Appends entry SEQ (TEXT: the same, as text) to a stream's log, which keeps at most MAX
-- entries ('0': no limit). An exact MAXLEN on every append costs Redis about 2 us more than
-- the append (entries are marked deleted one at a time), so the log is trimmed exactly only at
-- every TRIM_EVERY-th seq: it holds up to TRIM_EVERY - 1 entries past MAX in between, which no
-- read returns (`range.lua`, `RedisStore`, hide seqs MAX or more behind the newest).
local TRIM_EVERY = 64
local function append(log, seq, text, max, ts, json)
  if max ~= '0' and seq % TRIM_EVERY == 0 then
    redis.call('XADD', log, 'MAXLEN', max, text .. '-0', 't', ts, 'd', json)
  else
    redis.call('XADD', log, text .. '-0', 't', ts, 'd', json)
  end
end

-- The stream's next seq, as a number and as text. A Lua number turned into text (`..`, or an
-- argument of redis.call) goes through sprintf('%.14g'): glibc's float printing, about 0.25 us
-- each, so a seq is printed once, with '%d', and redis.call gets text.
local function next_seq(meta)
  local seq = redis.call('HINCRBY', meta, 'seq', '1')
  return seq, string.format('%d', seq)
end

-- The event feed (docs/hooks.md), when it is on: a script that writes events is passed the
-- feed's stream and its meta hash after its own KEYS and calls `feed_from` with how many KEYS
-- are its own, so an event is written by the script call that makes it happen. An entry's id
-- is "CURSOR-0", the cursor dense from the meta's 'last'; its fields: t (ms), e (m message, d
-- direct, j joined, l left, o occupied, v vacated, c connected, x disconnected) and what the
-- event carries: n (room or user), u (user), s (seq), o (offline 0/1), c (connection), d (the
-- frame's JSON). cluster/store.rs reads it back into persist::FeedEvent, which formats it.
local feed_log, feed_meta
local function feed_from(own)
  if #KEYS >= own + 2 then feed_log, feed_meta = KEYS[own + 1], KEYS[own + 2] end
end

local function feed(...)
  if not feed_log then return end
  local c = redis.call('HINCRBY', feed_meta, 'last', 1)
  redis.call('XADD', feed_log, c .. '-0', ...)
end

-- Now, in unix ms (a string: a number this large would be written in exponent form).
local function feed_now()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
