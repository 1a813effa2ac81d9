//! The client side's room policy: what a connection may do in a room, from its token's rights
//! and the room's rule (`[[rooms]]`), and the `forbidden` a refusal gets, naming the right and
//! the rule.

use super::Shard;
use crate::config::{PresenceMode, PublishMode};
use crate::conn::Conn;
use crate::core::Name;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::rights::Rights;

impl Shard {
    /// What `conn` may do in `room`: its token's rights, less what the room's rule keeps from
    /// clients (`publish = "api"`; `publish = "granted"` without an explicit grant;
    /// `presence = "off"`).
    pub(super) fn rights_in(&self, conn: &Conn, room: &str) -> Rights {
        let rule = self.config.rule(room);
        let mut rights = conn.rights(room);
        let granted = || {
            conn.granted(room)
                .is_some_and(|g| g.contains(Rights::PUBLISH))
        };
        match rule.publish {
            PublishMode::Members => {}
            PublishMode::Granted if granted() => {}
            PublishMode::Granted | PublishMode::Api => rights = rights.without(Rights::PUBLISH),
        }
        if rule.presence == PresenceMode::Off {
            rights = rights.without(Rights::PRESENCE);
        }
        rights
    }

    /// `Ok` if `conn` has `right` in `room`; else `forbidden`, saying whether the room's rule or
    /// the token keeps it, and what to do.
    pub(super) fn may(&self, conn: &Conn, room: &Name, right: Rights) -> Result<(), ReplyError> {
        if self.rights_in(conn, room).contains(right) {
            return Ok(());
        }
        let rule = self.config.rule(room);
        let name = right.names().next().unwrap_or("that");
        let why = match (right, rule.publish, rule.presence) {
            (Rights::PUBLISH, PublishMode::Api, _) => format!(
                "{room} takes messages from the server API only ({}: publish = \"api\")",
                rule.describe()
            ),
            (Rights::PUBLISH, PublishMode::Granted, _) => format!(
                "publishing to {room} needs the publish right granted by your token's rooms \
                 claim ({}: publish = \"granted\")",
                rule.describe()
            ),
            (Rights::PRESENCE, _, PresenceMode::Off) => format!(
                "{room} shows no presence ({}: presence = \"off\")",
                rule.describe()
            ),
            _ => format!(
                "{room} needs the {name} right for this, and your token's rooms claim does not \
                 grant it there"
            ),
        };
        Err(ReplyError::new(ErrorCode::Forbidden, why))
    }
}
