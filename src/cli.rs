//! What the operator subcommands print, apart from the server: the commented default config
//! file (`shardcast config --default`), the effective configuration with its secrets masked
//! (`shardcast config`), and the token lifetimes of `shardcast token`.
//!
//! Owns no state and touches no sockets. The help texts it writes into the default file are
//! `Config`'s `--help` texts (its field doc comments), so the file and `--help` cannot differ.

use std::fmt::Write;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::core::Name;
use crate::core::rights::{Grant, Pattern, Rights};

/// What `shardcast config` prints instead of a secret.
pub const MASK: &str = "***";

/// Width of the default file's comment lines, `# ` included.
const WIDTH: usize = 80;

/// The effective configuration as TOML, with `jwt_secret`, `api_key`, `metrics_key` and
/// `webhook_secret` replaced by [`MASK`] when set. Unset optional values are left out, as TOML has no null.
pub fn effective_toml(config: &Config) -> String {
    let mut shown = config.clone();
    for secret in [
        &mut shown.jwt_secret,
        &mut shown.api_key,
        &mut shown.metrics_key,
        &mut shown.webhook_secret,
    ] {
        if secret.is_some() {
            *secret = Some(MASK.to_owned());
        }
    }
    toml::to_string(&shown).expect("a Config serializes to TOML")
}

/// A TOML file that sets every key to its default, each after its `--help` text as comments.
/// Keys with no default (the secrets) are commented out. Loading it gives `Config::default()`.
pub fn default_toml() -> String {
    let command = Config::augment_args(clap::Command::new("shardcast"));
    let defaults = toml::Table::try_from(Config::default()).expect("a Config serializes to TOML");
    let mut out = String::from(
        "# shardcast configuration: every key with its default. Pass this file with\n\
         # `shardcast serve --config FILE`; SHARDCAST_* variables and flags override it.\n",
    );
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        // clap drops the full stop of a one-sentence help text.
        if !help.ends_with(['.', ')']) {
            help.push('.');
        }
        out.push('\n');
        for line in wrap(&help, WIDTH - 2) {
            writeln!(out, "# {line}").expect("writing to a String");
        }
        if let (Some(flag), Some(env)) = (arg.get_long(), arg.get_env()) {
            let env = env.to_string_lossy();
            writeln!(out, "# --{flag}, {env}").expect("writing to a String");
        }
        match defaults.get(key) {
            Some(value) => writeln!(out, "{key} = {value}"),
            None => writeln!(out, "# {key} = \"...\""),
        }
        .expect("writing to a String");
    }
    out.push_str(
        "\n# Room rules by name prefix (config file only; docs/protocol.md, \"Rooms: rules\n\
         # and rights\"). The longest matching prefix wins; prefix = \"\" is the default\n\
         # rule, and what a rule leaves out comes from the default rule, then from the\n\
         # keys above.\n\
         # Default none. For example:\n\
         # [[rooms]]\n\
         # prefix = \"live:\"\n\
         # publish = \"granted\"        # members | granted | api\n\
         # presence = \"count\"         # list | count | off\n\
         # presence_list_max = 1000\n\
         # history_messages = 1000     # 0 = no limit\n\
         # history_secs = 3600         # 0 = no limit\n\
         # recover = true\n\
         # max_members = 0             # 0 = no limit\n",
    );
    out
}

/// Splits `text` into lines of at most `width` characters at spaces (a longer word gets a line
/// of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// How long a minted token is valid: its `exp` is now plus this. Never zero: servers refuse
/// tokens without `exp` (`require_exp`), and one that never expires is a leak that never ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(pub Duration);

/// Parses a token lifetime: a number with a unit `s`, `m`, `h` or `d` (`30s`, `15m`, `24h`,
/// `7d`; a bare number is seconds), above zero.
pub fn parse_ttl(text: &str) -> Result<Ttl, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let bad = || format!("`{text}` is not a lifetime: use e.g. 30s, 15m, 24h, 7d");
    if text.eq_ignore_ascii_case("none") || number.parse() == Ok(0u64) {
        return Err(format!(
            "`{text}`: a token must expire (servers refuse tokens without exp unless \
             require_exp = false); give a lifetime such as 24h, or 3650d for a long one"
        ));
    }
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(scale).ok_or_else(bad)?;
    Ok(Ttl(Duration::from_secs(secs)))
}

/// Parses a user id or room name as the server validates it.
pub fn parse_name(text: &str) -> Result<Name, String> {
    Name::new(text).map_err(|e| format!("`{text}`: {}", e.message))
}

/// A `--grant` of `shardcast token`: `PATTERN=RIGHT,RIGHT`, where the pattern is a room name or
/// a name's start followed by `*` (`*` alone: every room), and the rights are among join,
/// publish, presence and history.
pub fn parse_grant(text: &str) -> Result<Grant, String> {
    let (pattern, rights) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected PATTERN=RIGHTS, e.g. live:*=join,presence"))?;
    let pattern = match pattern.strip_suffix('*') {
        Some(prefix) if prefix.is_empty() || Name::new(prefix).is_ok() => {
            Pattern::Prefix(prefix.into())
        }
        Some(_) => return Err(format!("`{pattern}`: not a room name followed by *")),
        None => Pattern::Room(parse_name(pattern)?),
    };
    let mut granted = Rights::NONE;
    for right in rights.split(',') {
        granted =
            granted.with(Rights::named(right).ok_or_else(|| {
                format!("`{right}`: not a right (join, publish, presence, history)")
            })?);
    }
    Ok(Grant {
        pattern,
        rights: granted,
        join_at_connect: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_patterns_and_rights() {
        let g = parse_grant("live:*=join,presence").unwrap();
        assert_eq!(g.pattern, Pattern::Prefix("live:".into()));
        assert_eq!(g.rights, Rights::JOIN.with(Rights::PRESENCE));
        let g = parse_grant("lobby=publish").unwrap();
        assert_eq!(g.pattern, Pattern::Room(Name::new("lobby").unwrap()));
        assert!(parse_grant("lobby").unwrap_err().contains("PATTERN=RIGHTS"));
        assert!(
            parse_grant("lobby=admin")
                .unwrap_err()
                .contains("not a right")
        );
        assert!(
            parse_grant("a b*=join")
                .unwrap_err()
                .contains("followed by *")
        );
    }

    #[test]
    fn the_default_file_loads_as_the_defaults() {
        let text = default_toml();
        let loaded: Config = toml::from_str(&text).unwrap();
        assert_eq!(loaded, Config::default());
        for line in text.lines() {
            assert!(line.len() <= WIDTH, "line over {WIDTH} characters: {line}");
        }
        assert!(text.contains("\nbind = \"127.0.0.1:8080\"\n"), "{text}");
        assert!(text.contains("\n# jwt_secret = \"...\"\n"), "{text}");
    }

    #[test]
    fn secrets_are_masked() {
        let config = Config {
            jwt_secret: Some("hunter2-hunter2-hunter2-hunter2-!".into()),
            api_key: Some("k3y".into()),
            ..Config::default()
        };
        let text = effective_toml(&config);
        assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
        let shown: Config = toml::from_str(&text).unwrap();
        assert_eq!(shown.jwt_secret.as_deref(), Some(MASK));
        assert_eq!(shown.api_key.as_deref(), Some(MASK));
        assert_eq!(
            toml::from_str::<Config>(&effective_toml(&Config::default())).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn lifetimes_take_units() {
        let secs = |s| parse_ttl(s).map(|t| t.0.as_secs());
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("24h"), Ok(86_400));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("90"), Ok(90));
        for never in ["0", "none", "0h"] {
            let err = parse_ttl(never).unwrap_err();
            assert!(err.contains("must expire"), "{never}: {err}");
        }
        for bad in ["", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
