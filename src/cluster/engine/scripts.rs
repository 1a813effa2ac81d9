//! The Lua scripts the engine runs (`../lua/`, each with the shared functions of
//! `stream.lua` and, but for the per-message ones, `common.lua` in front), loaded into Redis's script cache at connect.

use redis::{RedisResult, Script, Value};

use super::super::link::Cmds;

pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) event: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) refresh: Script,
    pub(super) presence: Script,
    pub(super) occupancy: Script,
    pub(super) register: Script,
    pub(super) online: Script,
    pub(super) cursor: Script,
    pub(super) sessions: Script,
    pub(super) unregister: Script,
    pub(super) tail: Script,
    pub(super) lease: Script,
    pub(super) rollback: Script,
    pub(super) read: Script,
}

/// Each script with the shared functions (`lua/stream.lua`, `lua/common.lua`) in front.
macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("../lua/stream.lua"),
            include_str!("../lua/common.lua"),
            include_str!($file)
        )
    };
}

/// A script run once per message: only `lua/stream.lua` in front.
macro_rules! stream_lua {
    ($file:literal) => {
        concat!(include_str!("../lua/stream.lua"), include_str!($file))
    };
}

const PUBLISH: &str = stream_lua!("../lua/publish.lua");
const EVENT: &str = stream_lua!("../lua/event.lua");
const JOIN: &str = lua!("../lua/join.lua");
const LEAVE: &str = lua!("../lua/leave.lua");
const REFRESH: &str = lua!("../lua/refresh.lua");
const PRESENCE: &str = lua!("../lua/presence.lua");
const OCCUPANCY: &str = lua!("../lua/occupancy.lua");
const REGISTER: &str = lua!("../lua/register.lua");
const ONLINE: &str = lua!("../lua/online.lua");
const CURSOR: &str = lua!("../lua/cursor.lua");
const SESSIONS: &str = lua!("../lua/sessions.lua");
const UNREGISTER: &str = lua!("../lua/unregister.lua");
const TAIL: &str = lua!("../lua/tail.lua");
const LEASE: &str = include_str!("../lua/lease.lua");
const ROLLBACK: &str = include_str!("../lua/rollback.lua");
const READ: &str = include_str!("../lua/read.lua");
const ALL: [&str; 16] = [
    PUBLISH, EVENT, JOIN, LEAVE, REFRESH, PRESENCE, OCCUPANCY, REGISTER, ONLINE, CURSOR, SESSIONS,
    UNREGISTER, TAIL, LEASE, ROLLBACK, READ,
];

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH),
            event: Script::new(EVENT),
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            refresh: Script::new(REFRESH),
            presence: Script::new(PRESENCE),
            occupancy: Script::new(OCCUPANCY),
            register: Script::new(REGISTER),
            online: Script::new(ONLINE),
            cursor: Script::new(CURSOR),
            sessions: Script::new(SESSIONS),
            unregister: Script::new(UNREGISTER),
            tail: Script::new(TAIL),
            lease: Script::new(LEASE),
            rollback: Script::new(ROLLBACK),
            read: Script::new(READ),
        }
    }
}

/// Loads every script into Redis (every master of a Cluster) before the connection is used:
/// a script missing there would be loaded on first use and retried, which can reorder it
/// after requests sent later.
pub(super) async fn load_scripts(cmds: &mut Cmds) -> RedisResult<()> {
    for source in ALL {
        cmds.query::<Value>(redis::cmd("SCRIPT").arg("LOAD").arg(source))
            .await?;
    }
    Ok(())
}
