-- A node saw the stream's seq go below what it had delivered (a failover to a replica that
-- lacked the last writes): the stream starts a new epoch, once, whichever node sees it first.
-- Keys that survived name seqs of the new epoch too (they were replicated with their messages).
-- KEYS: meta, keys (hash "SENDER KEY" -> seq)
-- ARGV: 1 the epoch the node knew, 2 the new epoch
-- Returns the stream's epoch now.
local e = redis.call('HGET', KEYS[1], 'epoch')
if e ~= ARGV[1] then return tonumber(e or '0') end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
if redis.call('HGET', KEYS[2], ' epoch') == ARGV[1] then
  redis.call('HSET', KEYS[2], ' epoch', ARGV[2])
end
return tonumber(ARGV[2])
