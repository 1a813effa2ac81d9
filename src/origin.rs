//! Which browser origins may open a WebSocket (`allowed_origins`).
//!
//! Owns the matching of an `Origin` header against the configured patterns, or against the
//! request's own `Host`. It must not touch sockets or tokens: `http` calls [`check`] before
//! authenticating, and a browser page from another site never gets as far as its cookies or
//! tokens being tried.

use crate::config::Config;
use crate::core::error::HandshakeError;

/// Refuses a browser upgrade whose `Origin` is not allowed. `origin` and `host` are the request's
/// headers, if present. No `Origin` means a non-browser client, which an origin check cannot
/// protect against anyway, so it passes. In dev mode, which trusts `?user=`, the default is a
/// loopback page only: not the same host, which a DNS-rebound site would pass.
pub fn check(
    config: &Config,
    origin: Option<&str>,
    host: Option<&str>,
) -> Result<(), HandshakeError> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let allowed = if config.allowed_origins.is_empty() {
        if config.dev_mode() {
            loopback(origin)
        } else {
            host.is_some_and(|h| same_host(origin, h))
        }
    } else {
        config.allowed_origins.iter().any(|p| matches(p, origin))
    };
    if allowed {
        Ok(())
    } else {
        Err(HandshakeError::OriginNotAllowed(
            origin.chars().take(200).collect(),
        ))
    }
}

/// `origin` (`scheme://host[:port]`) names the same host and port as the `Host` header. A
/// default port may be written or left out on either side. The scheme itself is not compared:
/// behind a TLS proxy the page is https while the server sees plain HTTP with the same Host.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return false,
    };
    let strip = |a: &str| a.strip_suffix(default).unwrap_or(a).to_ascii_lowercase();
    !authority.is_empty() && strip(authority) == strip(host)
}

/// `origin` is a page served from this machine: `http(s)://` and `localhost`, `127.0.0.1` or
/// `[::1]`, on any port.
fn loopback(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    ["http", "https"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
        && ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .any(|h| host.eq_ignore_ascii_case(h))
}

/// `origin` matches `pattern`: equal ignoring ASCII case, `*`, or a `scheme://*.domain[:port]`
/// pattern and an origin with the same scheme and port whose host is a subdomain of `domain`
/// (at least one label more; the bare domain needs its own entry).
fn matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
        return true;
    }
    let (Some((p_scheme, p_rest)), Some((o_scheme, o_rest))) =
        (pattern.split_once("://"), origin.split_once("://"))
    else {
        return false;
    };
    let Some(suffix) = p_rest.strip_prefix('*') else {
        return false;
    };
    let o_rest = o_rest.to_ascii_lowercase();
    p_scheme.eq_ignore_ascii_case(o_scheme)
        && suffix.starts_with('.')
        && o_rest.len() > suffix.len()
        && o_rest.ends_with(&suffix.to_ascii_lowercase())
        // The part the `*` stands for is one or more whole labels, never a port or a path.
        && o_rest[..o_rest.len() - suffix.len()]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_patterns_match_subdomains_only() {
        let p = "https://*.example.com";
        assert!(matches(p, "https://app.example.com"));
        assert!(matches(p, "https://a.b.example.com"));
        assert!(matches(p, "HTTPS://App.Example.com"));
        assert!(!matches(p, "https://example.com"), "the bare domain");
        assert!(!matches(p, "http://app.example.com"), "another scheme");
        assert!(!matches(p, "https://app.example.com:8443"), "another port");
        assert!(!matches(p, "https://evilexample.com"));
        assert!(!matches(p, "https://example.com.evil.net"));
        assert!(!matches(p, "https://x/.example.com"));
        assert!(matches(
            "https://*.example.com:8443",
            "https://a.example.com:8443"
        ));
        assert!(matches("https://example.com", "https://EXAMPLE.com"));
        assert!(!matches("https://example.com", "https://example.com.evil"));
        assert!(matches("*", "null"));
        assert!(!matches("https://*.example.com", "null"));
    }

    #[test]
    fn same_host_compares_host_and_port() {
        assert!(same_host("https://chat.example.com", "chat.example.com"));
        assert!(same_host(
            "https://chat.example.com",
            "chat.example.com:443"
        ));
        assert!(same_host("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_host("http://127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(!same_host("https://evil.com", "chat.example.com"));
        assert!(!same_host(
            "http://chat.example.com",
            "chat.example.com:443"
        ));
        assert!(!same_host("null", "chat.example.com"));
        assert!(!same_host("file://", ""));
    }

    #[test]
    fn loopback_origins_are_localhost_and_the_loopback_addresses_on_any_port() {
        for origin in [
            "http://localhost",
            "http://localhost:5173",
            "HTTPS://LocalHost:8443",
            "http://127.0.0.1",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "https://[::1]",
        ] {
            assert!(loopback(origin), "{origin}");
        }
        for origin in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://evil.localhost",
            "http://127.0.0.1.evil.example:80",
            "http://127.0.0.2",
            "file://localhost",
            "ws://localhost:8080",
            "http://localhost:80x",
            "http://localhost:",
            "null",
            "localhost",
        ] {
            assert!(!loopback(origin), "{origin}");
        }
    }

    #[test]
    fn the_default_is_same_host_outside_dev_mode_and_loopback_in_it() {
        let prod = Config {
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..Config::default()
        };
        let host = Some("chat.example.com");
        assert!(check(&prod, None, host).is_ok(), "no Origin: not a browser");
        assert!(check(&prod, Some("https://chat.example.com"), host).is_ok());
        let err = check(&prod, Some("https://evil.com"), host).unwrap_err();
        assert_eq!((err.status(), err.code()), (403, "origin_not_allowed"));
        assert!(check(&prod, Some("https://chat.example.com"), None).is_err());
        let dev = Config::default();
        assert!(check(&dev, Some("https://evil.com"), host).is_err());
        let rebound = Some("evil.example:8080");
        assert!(
            check(&dev, Some("http://evil.example:8080"), rebound).is_err(),
            "dev mode does not trust the same host: DNS rebinding"
        );
        assert!(check(&dev, Some("http://localhost:5173"), host).is_ok());
        assert!(check(&dev, None, host).is_ok());
        let listed = Config {
            allowed_origins: vec!["https://*.example.com".into()],
            ..Config::default()
        };
        assert!(check(&listed, Some("https://app.example.com"), host).is_ok());
        assert!(
            check(&listed, Some("https://evil.com"), host).is_err(),
            "a list applies in dev mode too"
        );
    }
}
