-- The sweep after a node died is done (engine/sweep.rs): records the live leases it swept
-- against, and frees the sweep's lease if the caller holds it.
-- KEYS: lease, done; ARGV: 1 the holder, 2 the leases ("MAX LEASE ...", `Live::record`).
redis.call('SET', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
