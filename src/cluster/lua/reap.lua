-- The sweep after a node died (engine/sweep.rs): one user's sessions and attached
-- connections of dead nodes removed, with `disconnected` for each session, as at the user's
-- next connect (`purge_sessions`).
-- KEYS: conns, online (3, 4: the event feed, see common.lua); ARGV: 1 dead, 2 the user.
-- Returns how many `disconnected` were written.
feed_from(2)
return purge_sessions(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
