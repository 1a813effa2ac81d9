use prost::Message as _;
use serde_json::value::RawValue;

use super::schema::{self, client_frame, server_frame};
use super::*;

#[test]
fn negotiation_takes_the_clients_first_known_offer() {
    let n = |h: &[&'static str]| negotiate(h.iter().copied());
    assert_eq!(n(&[]), Ok((Format::Json, None)));
    assert_eq!(n(&["shardcast.proto"]), Ok((Format::Proto, Some(PROTO))));
    assert_eq!(
        n(&["x, shardcast.json", "shardcast.proto"]),
        Ok((Format::Json, Some(JSON)))
    );
    assert_eq!(n(&["chat, mqtt"]), Err("chat, mqtt".to_owned()));
}

fn client(id: Option<client_frame::Id>, frame: client_frame::Frame) -> Vec<u8> {
    schema::ClientFrame {
        id,
        frame: Some(frame),
    }
    .encode_to_vec()
}

/// The binary frame is read as the JSON one: the same request, or the same error.
#[track_caller]
fn reads_as(bin: &[u8], json: &str) {
    let frame = decode(bin).unwrap();
    assert_eq!(
        format!("{:?}", frame.request()),
        format!("{:?}", crate::protocol::parse(json))
    );
}

#[test]
fn a_binary_publish_reads_as_the_json_one() {
    let publish = |body: &[u8]| {
        client(
            Some(client_frame::Id::NumId(7)),
            client_frame::Frame::Publish(schema::Publish {
                room: "lobby".into(),
                body: body.to_vec(),
                key: Some("k\"1".into()),
            }),
        )
    };
    reads_as(
        &publish(br#"{"text":"hi"}"#),
        r#"{"type":"publish","id":7,"room":"lobby","body":{"text":"hi"},"key":"k\"1"}"#,
    );
    reads_as(
        &publish(&[0xff, 0, 1]),
        r#"{"type":"publish","id":7,"room":"lobby","body":{"$b64":"/wAB"},"key":"k\"1"}"#,
    );
    // The JSON body is borrowed from the frame, as it is: no copy, no rewriting.
    let bin = publish(b" [1, 2] ");
    let frame = decode(&bin).unwrap();
    let Ok(crate::protocol::Request {
        msg: crate::protocol::ClientMessage::Publish { body, .. },
        ..
    }) = frame.request()
    else {
        panic!("not a publish")
    };
    assert_eq!(body.get(), "[1, 2]");
}

#[test]
fn binary_frames_get_the_json_forms_errors() {
    use client_frame::{Frame as F, Id};
    let str_id = Some(Id::StrId("a".into()));
    // A frame of no known kind is an unknown type, its id echoed.
    let empty = schema::ClientFrame {
        id: str_id.clone(),
        frame: None,
    };
    let err = decode(&empty.encode_to_vec())
        .unwrap()
        .request()
        .unwrap_err();
    assert_eq!(err.error.code, crate::core::error::ErrorCode::UnknownType);
    assert_eq!(err.id.unwrap().as_json(), r#""a""#);
    assert!(decode(&[0x0a, 0xff]).is_err());
    // An empty string is a missing field; a bad name, key or limit is the JSON form's error.
    let publish = |room: &str, key: Option<&str>| {
        client(
            str_id.clone(),
            F::Publish(schema::Publish {
                room: room.into(),
                body: b"1".to_vec(),
                key: key.map(Into::into),
            }),
        )
    };
    reads_as(
        &publish("", None),
        r#"{"type":"publish","id":"a","body":1}"#,
    );
    reads_as(
        &publish("a b", None),
        r#"{"type":"publish","id":"a","room":"a b","body":1}"#,
    );
    reads_as(
        &publish("r", Some("")),
        r#"{"type":"publish","id":"a","room":"r","body":1,"key":""}"#,
    );
    let long_id = Some(Id::StrId("x".repeat(70)));
    let ping = client(long_id, F::Ping(schema::Ping {}));
    reads_as(
        &ping,
        &format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(70)),
    );
    let history = |limit| {
        client(
            None,
            F::History(schema::HistoryRequest {
                room: "r".into(),
                limit: Some(limit),
                ..Default::default()
            }),
        )
    };
    reads_as(&history(0), r#"{"type":"history","room":"r","limit":0}"#);
    reads_as(
        &history(101),
        r#"{"type":"history","room":"r","limit":101}"#,
    );
    let read = |room: &str, inbox| {
        client(
            None,
            F::Read(schema::ReadRequest {
                room: room.into(),
                inbox,
                seq: 3,
            }),
        )
    };
    reads_as(
        &read("r", true),
        r#"{"type":"read","room":"r","inbox":true,"seq":3}"#,
    );
    reads_as(&read("", false), r#"{"type":"read","seq":3}"#);
    let delete = client(
        None,
        F::Delete(schema::Delete {
            room: "r".into(),
            target: 0,
        }),
    );
    reads_as(&delete, r#"{"type":"delete","room":"r","target":0}"#);
}

#[test]
fn a_b64_body_crosses_back_to_its_bytes_and_other_json_stays_text() {
    let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
    assert_eq!(
        server::body_bytes(&raw(r#"{"$b64":"/wAB"}"#)),
        (vec![0xff, 0, 1], false)
    );
    assert_eq!(
        server::body_bytes(&raw(r#"{"$b64":"/wAB","x":1}"#)),
        (br#"{"$b64":"/wAB","x":1}"#.to_vec(), true)
    );
    assert!(server::body_bytes(&raw(r#"{"$b64":"!!"}"#)).1);
    assert_eq!(
        server::body_bytes(&raw("\"hi\"")),
        (b"\"hi\"".to_vec(), true)
    );
}

#[test]
fn every_server_frame_kind_translates() {
    use crate::core::Name;
    use crate::protocol::encode;
    let name = |s: &str| Name::new(s).unwrap();
    let decode = |frame: &bytes::Bytes| {
        let bin = to_binary(frame);
        let (b0, payload, rest) = crate::ws::split_server_frame(&bin).unwrap();
        assert_eq!(b0 & 0x0f, crate::ws::OP_BINARY);
        assert!(rest.is_empty());
        schema::ServerFrame::decode(payload).unwrap()
    };
    let welcome = decode(&encode::welcome(&name("a"), &[name("lobby")], 25000, 3));
    assert_eq!(
        welcome.frame,
        Some(server_frame::Frame::Welcome(schema::Welcome {
            user: "a".into(),
            rooms: vec!["lobby".into()],
            heartbeat_ms: 25000,
            inbox_seq: 3,
            ..Default::default()
        }))
    );
    let m = decode(&encode::message(
        encode::Target::Room(&name("lobby")),
        &name("b"),
        4,
        99,
        b"[1,2]",
    ));
    let Some(server_frame::Frame::Message(m)) = m.frame else {
        panic!("{m:?}")
    };
    assert_eq!(
        (m.room.as_str(), m.seq, m.ts, &m.body[..], m.body_json),
        ("lobby", 4, 99, &b"[1,2]"[..], true)
    );
    let pong = decode(&encode::pong(Some(
        &crate::core::ReqId::parse(&RawValue::from_string("\"x\"".into()).unwrap()).unwrap(),
    )));
    assert_eq!(pong.id, Some(server_frame::Id::StrId("x".into())));
    assert_eq!(pong.frame, Some(server_frame::Frame::Pong(schema::Pong {})));
}

#[test]
fn issue_23_client_frames_read_as_their_json() {
    use client_frame::Frame as F;
    let j = |f: F, json: &str| reads_as(&client(None, f), json);
    j(
        F::Signal(schema::SignalRequest {
            room: "r".into(),
            body: b"{\"typing\":true}".to_vec(),
        }),
        r#"{"type":"signal","room":"r","body":{"typing":true}}"#,
    );
    j(
        F::Read(schema::ReadRequest {
            inbox: true,
            seq: 7,
            ..Default::default()
        }),
        r#"{"type":"read","inbox":true,"seq":7}"#,
    );
    j(
        F::Edit(schema::Edit {
            room: "r".into(),
            target: 41,
            body: b"\"x\"".to_vec(),
        }),
        r#"{"type":"edit","room":"r","target":41,"body":"x"}"#,
    );
    j(
        F::Delete(schema::Delete {
            room: "r".into(),
            target: 41,
        }),
        r#"{"type":"delete","room":"r","target":41}"#,
    );
    let reaction = schema::Reaction {
        room: "r".into(),
        target: 41,
        emoji: "👍".into(),
    };
    j(
        F::Unreact(reaction.clone()),
        r#"{"type":"unreact","room":"r","target":41,"emoji":"👍"}"#,
    );
    j(
        F::React(reaction),
        r#"{"type":"react","room":"r","target":41,"emoji":"👍"}"#,
    );
    j(
        F::History(schema::HistoryRequest {
            room: "r".into(),
            fold: true,
            ..Default::default()
        }),
        r#"{"type":"history","room":"r","fold":true}"#,
    );
    j(
        F::Read(schema::ReadRequest {
            room: "r".into(),
            seq: 1,
            inbox: false,
        }),
        r#"{"type":"read","room":"r","seq":1}"#,
    );
    j(
        F::Join(schema::Join {
            room: "r".into(),
            since: Some(4),
            epoch: Some(9),
        }),
        r#"{"type":"join","room":"r","since":4,"epoch":9}"#,
    );
    j(
        F::Sync(schema::SyncRequest { since: 0 }),
        r#"{"type":"sync","since":0}"#,
    );
    j(
        F::Connect(schema::Connect { token: "t".into() }),
        r#"{"type":"connect","token":"t"}"#,
    );
}

#[test]
fn issue_23_server_fields_translate_in_order() {
    let bin = server::general(
        br#"{"type":"history","id":3,"room":"r","messages":[{"type":"message","room":"r","from":"a","seq":40,"ts":1,"body":"v2","edited":47,"reactions":{"z":{"count":2,"me":true},"a":{"count":1,"me":false}}},{"type":"message","room":"r","from":"a","seq":39,"ts":1,"body":null,"deleted":true,"erased":true}],"more":true,"fold":true,"before":38}"#,
    )
    .unwrap();
    let Some(server_frame::Frame::History(page)) =
        schema::ServerFrame::decode(&bin[..]).unwrap().frame
    else {
        panic!("not a history page")
    };
    assert!(page.fold && page.more);
    assert_eq!(page.before, Some(38));
    let m = &page.messages[0];
    assert_eq!(m.edited, Some(47));
    let reactions: Vec<_> = (m.reactions.iter())
        .map(|r| (r.emoji.as_str(), r.count, r.me))
        .collect();
    assert_eq!(reactions, [("z", 2, true), ("a", 1, false)]);
    let t = &page.messages[1];
    assert!(t.deleted && t.erased && t.body_json);
    assert_eq!(t.body, b"null");
    let bin = server::general(
        br#"{"type":"welcome","user":"u","rooms":["b","a"],"heartbeat_ms":1,"inbox_seq":9,"inbox_read":7,"reads":{"b":{"seq":44,"read":41},"a":{"seq":2,"read":0}}}"#,
    )
    .unwrap();
    let Some(server_frame::Frame::Welcome(w)) =
        schema::ServerFrame::decode(&bin[..]).unwrap().frame
    else {
        panic!("not a welcome")
    };
    assert_eq!(w.inbox_read, 7);
    let reads: Vec<_> = (w.reads.iter())
        .map(|r| (r.room.as_str(), r.seq, r.read))
        .collect();
    assert_eq!(reads, [("b", 44, 41), ("a", 2, 0)]);
}

#[test]
fn a_frame_is_translated_once_per_thread_and_compressed_once_per_form() {
    use std::rc::Rc;
    let name = |s: &str| crate::core::Name::new(s).unwrap();
    let body = br#""a body long enough to be worth compressing, a body long enough""#;
    let frame = Rc::new(crate::protocol::encode::message(
        crate::protocol::encode::Target::Room(&name("lobby")),
        &name("a"),
        1,
        2,
        body,
    ));
    // Every binary member of the shard gets the very same bytes: one translation.
    let first = variant(&frame);
    assert!(Rc::ptr_eq(&first, &variant(&frame)));
    // Members that compress, in both forms, alternating as a mixed room's are: one
    // compression per form.
    let json_packed = crate::deflate::variant(&frame, 16);
    let proto_packed = crate::deflate::variant(&first, 16);
    assert!(!Rc::ptr_eq(&json_packed, &frame) && !Rc::ptr_eq(&proto_packed, &first));
    for _ in 0..3 {
        assert!(Rc::ptr_eq(
            &json_packed,
            &crate::deflate::variant(&frame, 16)
        ));
        assert!(Rc::ptr_eq(
            &proto_packed,
            &crate::deflate::variant(&variant(&frame), 16)
        ));
    }
    // Control frames pass as they are.
    let ping = Rc::new(crate::ws::control_frame(crate::ws::OP_PING, b"x"));
    assert!(Rc::ptr_eq(&ping, &variant(&ping)));
}

fn native_encode(json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    native::write(json, &mut out, false).then_some(out)
}

#[test]
fn chat_frames_are_written_natively_as_prost_writes_them() {
    use crate::core::{Name, ReqId};
    use crate::protocol::encode::{self, Target};
    let name = |s: &str| Name::new(s).unwrap();
    let id = |s: &str| ReqId::parse(&RawValue::from_string(s.into()).unwrap()).unwrap();
    let payload = |frame: bytes::Bytes| crate::ws::payload_of(&frame).to_vec();
    let (lobby, bob) = (name("lobby"), name("bob"));
    let message = |target, body: &[u8]| {
        payload(encode::message(
            target,
            &name("a"),
            42,
            1_700_000_000_123,
            body,
        ))
    };
    let native = [
        message(Target::Room(&lobby), br#"{"text":"see you at 6"}"#),
        message(Target::User(&bob), b"\"hi\""),
        message(Target::Room(&lobby), br#"{"$b64":"/wAB","x":1}"#),
        message(Target::Room(&lobby), b"null"),
        payload(encode::with_key(
            &message(Target::Room(&lobby), b"[1]"),
            "k-1",
        )),
        payload(encode::ack(Some(&id("7")), Target::Room(&lobby), Some(3))),
        payload(encode::ack(Some(&id("\"p1\"")), Target::User(&bob), None)),
        payload(encode::ack(None, Target::Room(&lobby), Some(0))),
    ];
    for json in &native {
        let text = String::from_utf8_lossy(json);
        let bin = native_encode(json).unwrap_or_else(|| panic!("not native: {text}"));
        assert_eq!(Some(bin), server::general(json), "{text}");
        // Framed, as `to_binary` writes it.
        let mut framed = Vec::new();
        crate::ws::push_frame(&mut framed, crate::ws::OP_TEXT, false, json);
        let mut want = Vec::new();
        let bin = server::general(json).unwrap();
        crate::ws::push_frame(&mut want, crate::ws::OP_BINARY, false, &bin);
        assert_eq!(to_binary(&framed), want, "{text}");
    }
    // Anything off the layout is left to the general path, which gives the same frame.
    let general = [
        payload(encode::dup_ack(None, Target::Room(&lobby), 9)),
        payload(encode::with_key(
            &message(Target::Room(&lobby), b"1"),
            "k\"q",
        )),
        payload(encode::ack(Some(&id("\"a\\\"b\"")), Target::Room(&lobby), None)),
        payload(encode::ack(Some(&id("-1")), Target::Room(&lobby), None)),
        message(Target::Room(&lobby), br#"{"$b64":"/wAB"}"#),
        message(Target::Room(&lobby), br#"{"\u0024b64":""}"#),
        br#"{"type":"message","room":"r","from":"a","seq":4,"ts":1,"kind":"delete","target":3,"body":null}"#.to_vec(),
    ];
    for json in &general {
        assert_eq!(
            native_encode(json),
            None,
            "{}",
            String::from_utf8_lossy(json)
        );
        assert!(server::general(json).is_some());
        let mut out = Vec::new();
        assert!(!native::write(json, &mut out, true) && out.is_empty());
    }
}

/// What `decode` gives, as text: the request or its error, or the decode error.
fn outcome(d: Result<Decoded<'_>, DecodeError>) -> String {
    match d {
        Ok(frame) => format!("{:?}", frame.request()),
        Err(e) => format!("decode error: {e}"),
    }
}

#[test]
fn a_chat_frame_read_in_place_is_what_prost_reads() {
    let publish = |id, room: &str, body: &[u8], key: Option<&str>| {
        client(
            id,
            client_frame::Frame::Publish(schema::Publish {
                room: room.into(),
                body: body.to_vec(),
                key: key.map(Into::into),
            }),
        )
    };
    let send = client(
        Some(client_frame::Id::StrId("s\"1".into())),
        client_frame::Frame::Send(schema::Send {
            to: "bob".into(),
            body: b"{}".to_vec(),
            key: Some(String::new()),
        }),
    );
    let plain = publish(Some(client_frame::Id::NumId(7)), "lobby", b"[1]", None);
    let mut cases = vec![
        plain.clone(),
        send.clone(),
        publish(None, "lobby", br#"{"t":1}"#, Some("k1")),
        publish(Some(client_frame::Id::NumId(0)), "", b"", None),
        publish(
            Some(client_frame::Id::NumId(u64::MAX)),
            "a b",
            &[0xff],
            Some(""),
        ),
        publish(
            Some(client_frame::Id::StrId("x".repeat(80))),
            "lobby",
            b"1",
            None,
        ),
        // The frame before the id, the body before the room.
        [&plain[2..], &plain[..2]].concat(),
        [&[0x62, 8, 0x12, 1, b'1', 0x0a, 3], &b"abc"[..]].concat(),
        // A repeated id, frame or field; an unknown field; a field of the wrong wire type.
        [&plain[..], &[0x08, 9]].concat(),
        [&plain[..], &plain[2..]].concat(),
        [&[0x62, 6, 0x0a, 1, b'a', 0x0a, 1], &b"b"[..]].concat(),
        [&plain[..], &[0x18, 1]].concat(),
        vec![0x62, 2, 0x08, 1],
        vec![0x10, 1, 0x62, 0],
        // Not UTF-8, truncated, an overlong length, an empty frame, an empty buffer.
        vec![0x62, 3, 0x0a, 1, 0xff],
        vec![0x12, 1, 0xc3, 0x62, 0],
        plain[..plain.len() - 1].to_vec(),
        vec![0x62, 0x80],
        vec![0x62, 0xff, 0xff, 0xff, 0xff, 0x0f, 0],
        vec![0x62, 0],
        vec![0x6a, 0],
        vec![],
    ];
    // Every cut of the plain frames.
    for cut in 0..plain.len() {
        cases.push(plain[..cut].to_vec());
        cases.push(send[..send.len().min(cut)].to_vec());
    }
    let mut in_place = 0;
    for bin in &cases {
        in_place += usize::from(super::chat::read(bin).is_some());
        assert_eq!(
            outcome(decode(bin)),
            outcome(decode_by_prost(bin)),
            "frame {bin:?}"
        );
    }
    assert!(
        in_place >= 9,
        "the plain frames are read in place ({in_place})"
    );
}
