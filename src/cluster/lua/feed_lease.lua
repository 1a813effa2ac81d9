-- Takes or renews a lease: on delivering the event feed (one node delivers it at a time), and
-- on the sweep after a node died (engine/sweep.rs).
-- KEYS: lease; ARGV: 1 the holder, 2 its time to live (ms). Returns 1 when the holder has it.
local h = redis.call('GET', KEYS[1])
if not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if h ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
