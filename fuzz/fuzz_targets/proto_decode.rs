//! The binary protocol's decoder (`wire::client_to_json`): a binary frame's bytes into the JSON
//! text `protocol::parse` reads. Any input must give that text or a decode error (the 1007
//! close), never a panic, and the text must always be one JSON object, so a binary client can
//! never hand the parser something a JSON client could not. The same bytes are also fed to the
//! server side's translation (`wire::to_binary` reads JSON frames), which must not panic on
//! any JSON either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = shardcast::wire::client_to_json(data) {
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object()),
            "not one JSON object: {text}"
        );
        let _ = shardcast::protocol::parse(&text);
    }
    let _ = shardcast::wire::body_json(data);
    if let Some(frame) = std::str::from_utf8(data).ok().filter(|t| t.len() < 4096) {
        let mut framed = Vec::new();
        shardcast::ws::push_frame(&mut framed, shardcast::ws::OP_TEXT, false, frame.as_bytes());
        let _ = shardcast::wire::to_binary(&framed);
    }
});
