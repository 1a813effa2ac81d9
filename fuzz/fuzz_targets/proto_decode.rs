//! The binary protocol's decoder (`wire::decode`): a binary frame's bytes into the request the
//! JSON form's checks build. Any input must give a request, a request error or a decode error
//! (the 1007 close), never a panic, and a body must always be valid JSON, so a binary client
//! can never hand the shard something a JSON client could not. The same bytes are also fed to the
//! server side's translation (`wire::to_binary` reads JSON frames), which must not panic on
//! any JSON either. The oracle of the in-place reader of `publish` and `send`: `wire::decode`
//! must read every input as prost alone reads it (`wire::decode_by_prost`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use shardcast::protocol::ClientMessage as M;
    fn outcome(d: Result<shardcast::wire::Decoded<'_>, shardcast::wire::DecodeError>) -> String {
        match d {
            Ok(frame) => format!("{:?}", frame.request()),
            Err(e) => format!("decode error: {e}"),
        }
    }
    assert_eq!(
        outcome(shardcast::wire::decode(data)),
        outcome(shardcast::wire::decode_by_prost(data))
    );
    if let Ok(frame) = shardcast::wire::decode(data)
        && let Ok(req) = frame.request()
        && let M::Publish { body, .. } | M::Send { body, .. } | M::Signal { body, .. } = req.msg
    {
        assert!(
            serde_json::from_str::<serde_json::Value>(body.get()).is_ok(),
            "a body that is not JSON: {}",
            body.get()
        );
    }
    if let Some(frame) = std::str::from_utf8(data).ok().filter(|t| t.len() < 4096) {
        let mut framed = Vec::new();
        shardcast::ws::push_frame(&mut framed, shardcast::ws::OP_TEXT, false, frame.as_bytes());
        let _ = shardcast::wire::to_binary(&framed);
    }
});
