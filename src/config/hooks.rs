//! The hooks' settings that rules and the server share: which hooks a `[[rooms]]` rule runs
//! (`hooks = ["join", "publish"]`) and what a failed hook means (`hook_on_error`).
//!
//! Plain values; calling a hook is `hooks`' job, deciding when is the client side's.

use serde::{Deserialize, Serialize};

/// What a hook that failed (timed out, unreachable, a non-2xx status, an answer that is not
/// the expected JSON) decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HookOnError {
    /// The request is refused (`unavailable`; a connect: 503).
    #[default]
    #[value(name = "deny")]
    Deny,
    /// The request goes on as if the hook had allowed it, unchanged.
    #[value(name = "allow")]
    Allow,
}

/// A hook a room rule can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomHook {
    Join,
    Publish,
}

/// The room hooks a rule runs: a bit each, so `Rule` stays `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomHooks(u8);

impl RoomHooks {
    pub fn of(hooks: &[RoomHook]) -> RoomHooks {
        RoomHooks(hooks.iter().fold(0, |bits, h| bits | RoomHooks::bit(*h)))
    }

    pub fn has(self, hook: RoomHook) -> bool {
        self.0 & RoomHooks::bit(hook) != 0
    }

    fn bit(hook: RoomHook) -> u8 {
        match hook {
            RoomHook::Join => 1,
            RoomHook::Publish => 2,
        }
    }
}
