-- A node takes a new lease, the score of its presence entries and sessions from now on, and
-- writes it with its figures in the same step, so whoever reads a higher lease counter also
-- sees the node's lease. Leases only grow: a counter lost with Redis's data restarts above
-- the highest the node has seen.
-- KEYS: nodes
-- ARGV: 1 this node, 2 its figures (JSON) up to the lease: '{..., "lease":', 3 the highest
--       lease the node has seen
local lease = redis.call('HINCRBY', KEYS[1], 'lease', 1)
if lease <= tonumber(ARGV[3]) then
  lease = tonumber(ARGV[3]) + 1
  redis.call('HSET', KEYS[1], 'lease', lease)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. lease .. '}')
return lease
