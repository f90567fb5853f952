//! The generated types put every field at the number WIRE.md fixes: each
//! message below is encoded and compared with bytes worked out by hand.

use baton::proto::atomix::primitive::election as el;
use baton::proto::atomix::primitive::leader as la;
use baton::proto::atomix::primitive::meta::{
    object_meta, Epoch, ObjectMeta, PhysicalTimestamp, Revision,
};
use baton::proto::atomix::primitive::{
    PrimitiveId, RequestHeader, RequestType, ResponseHeader, ResponseType,
};
use baton::proto::baton::v1 as bt;
use prost::Message;

fn bytes(message: &impl Message) -> Vec<u8> {
    message.encode_to_vec()
}

#[test]
fn request_header_fields() {
    let header = RequestHeader {
        client_id: "x".into(),
        primitive_id: Some(PrimitiveId {
            r#type: "Election".into(),
            name: "e".into(),
        }),
        request_id: 5,
        request_type: RequestType::RequestStream as i32,
    };
    let mut expected = vec![0x0a, 0x01, b'x', 0x12, 13, 0x0a, 8];
    expected.extend_from_slice(b"Election");
    expected.extend_from_slice(&[0x12, 0x01, b'e', 0x18, 0x05, 0x20, 0x01]);
    assert_eq!(bytes(&header), expected);
    let response = ResponseHeader {
        response_type: ResponseType::ResponseStream as i32,
    };
    assert_eq!(bytes(&response), [0x08, 0x01]);
}

#[test]
fn object_meta_revision_and_physical_timestamp() {
    let meta = ObjectMeta {
        revision: Some(Revision { num: 7 }),
        timestamp: Some(object_meta::Timestamp::PhysicalTimestamp(
            PhysicalTimestamp {
                time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
            },
        )),
    };
    // revision = 1 {num = 1: 7}; physical_timestamp = 2 {time = 1 {seconds = 1: 1}}
    assert_eq!(
        bytes(&meta),
        [0x0a, 0x02, 0x08, 0x07, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x01]
    );
}

#[test]
fn latch_outputs_put_latch_at_field_two() {
    let latch = la::Latch {
        meta: None,
        leader: "a".into(),
        participants: vec!["a".into()],
    };
    // Latch: leader = 2, participants = 3
    let latch_bytes = [0x12, 0x01, b'a', 0x1a, 0x01, b'a'];
    assert_eq!(bytes(&latch), latch_bytes);
    let mut expected = vec![0x12, 0x06];
    expected.extend_from_slice(&latch_bytes);
    assert_eq!(
        bytes(&la::LatchOutput {
            latch: Some(latch.clone())
        }),
        expected
    );
    assert_eq!(
        bytes(&la::GetOutput {
            latch: Some(latch.clone())
        }),
        expected
    );
    // Snapshot.latch is field 1.
    let mut snapshot = vec![0x0a, 0x06];
    snapshot.extend_from_slice(&latch_bytes);
    assert_eq!(bytes(&la::Snapshot { latch: Some(latch) }), snapshot);
}

#[test]
fn latch_events_output_type_is_two_and_latch_is_three() {
    let output = la::EventsOutput {
        r#type: la::events_output::Type::Change as i32,
        latch: Some(la::Latch {
            meta: None,
            leader: "a".into(),
            participants: vec![],
        }),
    };
    assert_eq!(bytes(&output), [0x10, 0x01, 0x1a, 0x03, 0x12, 0x01, b'a']);
}

#[test]
fn latch_request_envelopes() {
    let request = la::RestoreRequest {
        header: Some(RequestHeader {
            client_id: "x".into(),
            ..Default::default()
        }),
        snapshot: Some(la::Snapshot { latch: None }),
    };
    assert_eq!(bytes(&request), [0x0a, 0x03, 0x0a, 0x01, b'x', 0x12, 0x00]);
    let request = la::LatchRequest {
        header: None,
        input: Some(la::LatchInput {}),
    };
    assert_eq!(bytes(&request), [0x12, 0x00]);
}

#[test]
fn term_fields() {
    let term = el::Term {
        id: Some(Epoch { num: 3 }),
        timestamp: Some(prost_types::Timestamp {
            seconds: 2,
            nanos: 0,
        }),
        leader: "a".into(),
        candidates: vec!["a".into(), "b".into()],
    };
    assert_eq!(
        bytes(&term),
        [
            0x0a, 0x02, 0x08, 0x03, 0x12, 0x02, 0x08, 0x02, 0x1a, 0x01, b'a', 0x22, 0x01, b'a',
            0x22, 0x01, b'b'
        ]
    );
}

#[test]
fn election_outputs_put_term_at_field_two() {
    let term = || {
        Some(el::Term {
            leader: "a".into(),
            ..Default::default()
        })
    };
    let expected = [0x12, 0x03, 0x1a, 0x01, b'a'];
    assert_eq!(bytes(&el::EnterOutput { term: term() }), expected);
    assert_eq!(bytes(&el::WithdrawOutput { term: term() }), expected);
    assert_eq!(bytes(&el::AnointOutput { term: term() }), expected);
    assert_eq!(bytes(&el::PromoteOutput { term: term() }), expected);
    assert_eq!(bytes(&el::EvictOutput { term: term() }), expected);
    assert_eq!(bytes(&el::GetTermOutput { term: term() }), expected);
    assert_eq!(
        bytes(&el::Snapshot { term: term() }),
        [0x0a, 0x03, 0x1a, 0x01, b'a']
    );
}

#[test]
fn election_inputs_put_candidate_id_at_field_two() {
    let expected = [0x12, 0x01, b'c'];
    assert_eq!(
        bytes(&el::AnointInput {
            candidate_id: "c".into()
        }),
        expected
    );
    assert_eq!(
        bytes(&el::PromoteInput {
            candidate_id: "c".into()
        }),
        expected
    );
    assert_eq!(
        bytes(&el::EvictInput {
            candidate_id: "c".into()
        }),
        expected
    );
}

#[test]
fn election_events_output_type_is_two_and_term_is_three() {
    let output = el::EventsOutput {
        r#type: el::events_output::Type::Changed as i32,
        term: Some(el::Term {
            leader: "a".into(),
            ..Default::default()
        }),
    };
    assert_eq!(bytes(&output), [0x10, 0x01, 0x1a, 0x03, 0x1a, 0x01, b'a']);
}

#[test]
fn session_service_messages() {
    let open = bt::OpenSessionRequest {
        client_id: "c".into(),
        timeout_ms: 1000,
    };
    assert_eq!(bytes(&open), [0x0a, 0x01, b'c', 0x10, 0xe8, 0x07]);
    assert_eq!(
        bytes(&bt::KeepAliveRequest {
            client_id: "c".into()
        }),
        [0x0a, 0x01, b'c']
    );
    assert_eq!(
        bytes(&bt::CloseSessionRequest {
            client_id: "c".into(),
            request_id: 0,
        }),
        [0x0a, 0x01, b'c']
    );
    assert_eq!(
        bytes(&bt::CloseSessionRequest {
            client_id: "c".into(),
            request_id: 300,
        }),
        [0x0a, 0x01, b'c', 0x10, 0xac, 0x02]
    );
}

#[test]
fn service_names_match_the_upstream_paths() {
    use tonic::server::NamedService;
    type Latch = la::leader_latch_service_server::LeaderLatchServiceServer<()>;
    type Election = el::leader_election_service_server::LeaderElectionServiceServer<()>;
    type Session = bt::session_service_server::SessionServiceServer<()>;
    assert_eq!(
        <Latch as NamedService>::NAME,
        "atomix.primitive.leader.LeaderLatchService"
    );
    assert_eq!(
        <Election as NamedService>::NAME,
        "atomix.primitive.election.LeaderElectionService"
    );
    assert_eq!(<Session as NamedService>::NAME, "baton.v1.SessionService");
}

#[test]
fn lifecycle_envelopes_put_the_header_at_one() {
    use baton::proto::atomix::primitive::{
        CloseRequest, CloseResponse, CreateRequest, CreateResponse, DeleteRequest, DeleteResponse,
    };
    let header = Some(RequestHeader {
        client_id: String::new(),
        primitive_id: Some(PrimitiveId {
            r#type: "LeaderLatch".into(),
            name: "l".into(),
        }),
        request_id: 0,
        request_type: 0,
    });
    // header (1, length-delimited) { primitive_id (2) { type (1), name (2) } }
    let mut expected = vec![0x0a, 18, 0x12, 16, 0x0a, 11];
    expected.extend_from_slice(b"LeaderLatch");
    expected.extend_from_slice(&[0x12, 0x01, b'l']);
    assert_eq!(
        bytes(&CreateRequest {
            header: header.clone()
        }),
        expected
    );
    assert_eq!(
        bytes(&CloseRequest {
            header: header.clone()
        }),
        expected
    );
    assert_eq!(bytes(&DeleteRequest { header }), expected);
    let response = Some(ResponseHeader {
        response_type: ResponseType::Response as i32,
    });
    // An all-default header is an empty message, still present at field 1.
    assert_eq!(bytes(&CreateResponse { header: response }), [0x0a, 0x00]);
    assert_eq!(bytes(&CloseResponse { header: response }), [0x0a, 0x00]);
    assert_eq!(bytes(&DeleteResponse { header: response }), [0x0a, 0x00]);
}
