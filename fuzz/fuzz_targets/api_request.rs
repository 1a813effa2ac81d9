//! The server API's request parsing (`api::parse_call`): method, path, query and body into a
//! `Call`. Any input must give a call or an API error, never a panic.
//!
//! Input: a byte picking the method, then path, query and body separated by 0xFF.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::DELETE,
        _ => Method::PUT,
    };
    let mut parts = rest.splitn(3, |&b| b == 0xFF);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let _ = shardcast::api::parse_call(&method, &path, &query, body, 256, 64);
});
