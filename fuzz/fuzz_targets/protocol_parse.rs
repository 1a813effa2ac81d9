//! The client protocol parser (`protocol::parse`): a text frame's JSON into a `Request`.
//! Any input must give a request or a reply error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames reach the parser only as valid UTF-8 (the decoder refuses the rest).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shardcast::protocol::parse(text);
    }
});
