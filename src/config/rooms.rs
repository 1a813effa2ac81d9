//! Room rules: the policy of each room, chosen by the longest `prefix` of its name among the
//! `[[rooms]]` tables of the config file (a rule with `prefix = ""` is the default). Each field
//! a rule leaves out comes from the default rule, then from the server-wide setting.
//! `[[room_retention]]` tables, the older form, still count: for a room's history only, when
//! their prefix is longer than its `[[rooms]]` rule's.

use serde::{Deserialize, Serialize};

use super::Config;
use super::hooks::{HookOnError, RoomHook, RoomHooks};

/// Who may publish in a room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// Every member whose token allows it (every member without a `rooms` claim).
    #[default]
    Members,
    /// Only connections whose token grants `publish` on the room explicitly.
    Granted,
    /// Only the server API.
    Api,
}

/// What members see of each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceMode {
    /// Names: `presence` lists them, and `joined`/`left` events follow them (unless
    /// `presence_events` is off).
    #[default]
    List,
    /// A number: `occupancy` events (coalesced) and `presence` answer the member count.
    Count,
    /// Nothing: no events, and `presence` is refused.
    Off,
}

impl PublishMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Members => "members",
            PublishMode::Granted => "granted",
            PublishMode::Api => "api",
        }
    }
}

impl PresenceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceMode::List => "list",
            PresenceMode::Count => "count",
            PresenceMode::Off => "off",
        }
    }
}

/// One `[[rooms]]` table. Fields left out come from the default rule (`prefix = ""`), then from
/// the server-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRule {
    /// Rooms whose name starts with this; the longest matching prefix wins.
    pub prefix: String,
    /// Who may publish: members (default), granted or api.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishMode>,
    /// What members see of each other: list (default), count or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceMode>,
    /// A `list` room with more members behaves as `count` until it shrinks back. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_list_max: Option<u32>,
    /// Messages kept; 0 = no limit. Default room_retention_messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_messages: Option<u64>,
    /// Age after which messages are trimmed, in seconds; 0 = no limit. Default
    /// room_retention_secs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_secs: Option<u64>,
    /// Whether a `join` with `since` replays what was missed. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover: Option<bool>,
    /// Most members (users); a join past it gets `room_full`. Default 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<u32>,
    /// The hooks that run for the rule's rooms: `join`, `publish` (docs/hooks.md). Needs
    /// hook_url. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<RoomHook>>,
    /// How long the rule's hooks may take, in milliseconds. Default hook_timeout_ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_timeout_ms: Option<u64>,
    /// What the rule's failed hooks decide: deny or allow. Default hook_on_error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_on_error: Option<HookOnError>,
    /// Whether members may send `signal` frames (typing indicators). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<bool>,
    /// Whether members get coalesced `receipt` events when a member reads. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<bool>,
}

/// The `presence_list_max` of a rule that does not set one, nor its default rule.
pub const PRESENCE_LIST_MAX: u32 = 1_000;

/// The rule a room obeys, every field resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule<'a> {
    /// The prefix of the rule that matched (`""`: the default).
    pub prefix: &'a str,
    pub publish: PublishMode,
    pub presence: PresenceMode,
    pub presence_list_max: u32,
    pub history_messages: u64,
    pub history_secs: u64,
    pub recover: bool,
    pub max_members: u32,
    /// The hooks that run for the room (none without hook_url).
    pub hooks: RoomHooks,
    pub hook_timeout_ms: u64,
    pub hook_on_error: HookOnError,
    pub signals: bool,
    pub receipts: bool,
}

impl Rule<'_> {
    /// The presence a room of `members` members has now: a `list` room past
    /// `presence_list_max` counts.
    pub fn presence_at(&self, members: usize) -> PresenceMode {
        match self.presence {
            PresenceMode::List if members > self.presence_list_max as usize => PresenceMode::Count,
            mode => mode,
        }
    }

    /// How a refusal names this rule: `the rule for rooms "live:"`, or the default.
    pub fn describe(&self) -> String {
        match self.prefix {
            "" => "the default room rule".to_owned(),
            prefix => format!("the room rule for \"{prefix}\""),
        }
    }
}

impl Config {
    /// The rule `room` obeys: its longest matching `[[rooms]]` prefix, with the missing fields
    /// from the default rule, then the server-wide settings. Its history fields come from a
    /// `[[room_retention]]` rule instead when that one's prefix is longer. No allocation: a few
    /// prefix compares per call.
    pub fn rule(&self, room: &str) -> Rule<'_> {
        let matching = |prefix: &String| room.starts_with(prefix.as_str());
        let rule =
            (self.rooms.iter().filter(|r| matching(&r.prefix))).max_by_key(|r| r.prefix.len());
        // An older `[[room_retention]]` rule gives the history fields when it is the longer.
        let legacy = (self.room_retention.iter().filter(|r| matching(&r.prefix)))
            .max_by_key(|r| r.prefix.len())
            .filter(|l| rule.is_none_or(|r| l.prefix.len() > r.prefix.len()));
        let default = self.rooms.iter().find(|r| r.prefix.is_empty());
        let pick =
            |f: &dyn Fn(&RoomRule) -> Option<u64>| rule.and_then(f).or_else(|| default.and_then(f));
        Rule {
            prefix: rule.map_or("", |r| &r.prefix),
            publish: (rule.and_then(|r| r.publish))
                .or_else(|| default.and_then(|r| r.publish))
                .unwrap_or_default(),
            presence: (rule.and_then(|r| r.presence))
                .or_else(|| default.and_then(|r| r.presence))
                .unwrap_or_default(),
            presence_list_max: pick(&|r| r.presence_list_max.map(u64::from))
                .map_or(PRESENCE_LIST_MAX, |n| n as u32),
            history_messages: (legacy.map(|l| l.messages))
                .or_else(|| pick(&|r| r.history_messages))
                .unwrap_or(self.room_retention_messages),
            history_secs: (legacy.map(|l| l.secs))
                .or_else(|| pick(&|r| r.history_secs))
                .unwrap_or(self.room_retention_secs),
            recover: pick(&|r| r.recover.map(u64::from)).is_none_or(|r| r != 0),
            max_members: pick(&|r| r.max_members.map(u64::from)).map_or(0, |n| n as u32),
            hooks: (rule.and_then(|r| r.hooks.as_deref()))
                .or_else(|| default.and_then(|r| r.hooks.as_deref()))
                .filter(|_| self.hook_url.is_some())
                .map_or_else(RoomHooks::default, RoomHooks::of),
            hook_timeout_ms: pick(&|r| r.hook_timeout_ms).unwrap_or(self.hook_timeout_ms),
            hook_on_error: (rule.and_then(|r| r.hook_on_error))
                .or_else(|| default.and_then(|r| r.hook_on_error))
                .unwrap_or(self.hook_on_error),
            signals: pick(&|r| r.signals.map(u64::from)).is_none_or(|s| s != 0),
            receipts: pick(&|r| r.receipts.map(u64::from)).is_some_and(|r| r != 0),
        }
    }
}
