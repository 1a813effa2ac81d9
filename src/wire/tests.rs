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
    assert_eq!(
        client_to_json(&publish(br#"{"text":"hi"}"#)).unwrap(),
        r#"{"type":"publish","id":7,"room":"lobby","body":{"text":"hi"},"key":"k\"1"}"#
    );
    assert_eq!(
        client_to_json(&publish(&[0xff, 0, 1])).unwrap(),
        r#"{"type":"publish","id":7,"room":"lobby","body":{"$b64":"/wAB"},"key":"k\"1"}"#
    );
}

#[test]
fn an_unknown_or_empty_frame_is_an_unknown_type_and_garbage_is_an_error() {
    let empty = schema::ClientFrame {
        id: Some(client_frame::Id::StrId("a".into())),
        frame: None,
    };
    let text = client_to_json(&empty.encode_to_vec()).unwrap();
    let err = crate::protocol::parse(&text).unwrap_err();
    assert_eq!(err.error.code, crate::core::error::ErrorCode::UnknownType);
    assert!(client_to_json(&[0x0a, 0xff]).is_err());
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
    let j = |f: F| client_to_json(&client(None, f)).unwrap();
    assert_eq!(
        j(F::Signal(schema::SignalRequest {
            room: "r".into(),
            body: b"{\"typing\":true}".to_vec(),
        })),
        r#"{"type":"signal","room":"r","body":{"typing":true}}"#
    );
    assert_eq!(
        j(F::Read(schema::ReadRequest {
            inbox: true,
            seq: 7,
            ..Default::default()
        })),
        r#"{"type":"read","inbox":true,"seq":7}"#
    );
    assert_eq!(
        j(F::Edit(schema::Edit {
            room: "r".into(),
            target: 41,
            body: b"\"x\"".to_vec(),
        })),
        r#"{"type":"edit","room":"r","target":41,"body":"x"}"#
    );
    assert_eq!(
        j(F::Delete(schema::Delete {
            room: "r".into(),
            target: 41,
        })),
        r#"{"type":"delete","room":"r","target":41}"#
    );
    let reaction = schema::Reaction {
        room: "r".into(),
        target: 41,
        emoji: "👍".into(),
    };
    assert_eq!(
        j(F::Unreact(reaction.clone())),
        r#"{"type":"unreact","room":"r","target":41,"emoji":"👍"}"#
    );
    assert_eq!(
        j(F::History(schema::HistoryRequest {
            room: "r".into(),
            fold: true,
            ..Default::default()
        })),
        r#"{"type":"history","room":"r","fold":true}"#
    );
    // Each parses as the JSON client's frame would.
    for f in [
        F::React(reaction),
        F::Read(schema::ReadRequest {
            room: "r".into(),
            seq: 1,
            inbox: false,
        }),
    ] {
        crate::protocol::parse(&j(f)).unwrap();
    }
}

#[test]
fn issue_23_server_fields_translate_in_order() {
    let bin = server::encode(
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
    let bin = server::encode(
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
