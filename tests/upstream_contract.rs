//! `proto/` against the upstream Atomix definitions of January 2021 (as
//! `shared/spec/WIRE.md` lists them): every message with exactly its fields
//! (name, number, type, repeated), every enum value and every method of the
//! five upstream files, read back from the compiled descriptors the server
//! and the client library are built from. Nothing missing, nothing added.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::FileDescriptorSet;

/// (message, [(field, number, type)]); types as `pkg.Message`, scalars by
/// name, `repeated ` in front when repeated.
type Fields = Vec<(String, i32, String)>;

/// Records message `name` with `fields`; each message once.
fn add(messages: &mut BTreeMap<String, Fields>, name: &str, fields: &[(&str, i32, &str)]) {
    let fields = fields
        .iter()
        .map(|(f, n, t)| (f.to_string(), *n, t.to_string()))
        .collect();
    assert!(
        messages.insert(name.to_owned(), fields).is_none(),
        "{name} twice"
    );
}

/// The envelopes of `calls`: XRequest { header = 1; input = 2 } and
/// XResponse { header = 1; output = 2 }.
fn envelopes(messages: &mut BTreeMap<String, Fields>, package: &str, calls: &[&str]) {
    for call in calls {
        add(
            messages,
            &format!("{package}.{call}Request"),
            &[
                ("header", 1, "atomix.primitive.RequestHeader"),
                ("input", 2, &format!("{package}.{call}Input")),
            ],
        );
        add(
            messages,
            &format!("{package}.{call}Response"),
            &[
                ("header", 1, "atomix.primitive.ResponseHeader"),
                ("output", 2, &format!("{package}.{call}Output")),
            ],
        );
    }
}

fn expected_messages() -> BTreeMap<String, Fields> {
    let mut messages: BTreeMap<String, Fields> = BTreeMap::new();
    let p = "atomix.primitive";
    add(
        &mut messages,
        &format!("{p}.PrimitiveId"),
        &[("type", 1, "string"), ("name", 2, "string")],
    );
    add(
        &mut messages,
        &format!("{p}.RequestHeader"),
        &[
            ("client_id", 1, "string"),
            ("primitive_id", 2, "atomix.primitive.PrimitiveId"),
            ("request_id", 3, "uint64"),
            ("request_type", 4, "atomix.primitive.RequestType"),
        ],
    );
    add(
        &mut messages,
        &format!("{p}.ResponseHeader"),
        &[("response_type", 1, "atomix.primitive.ResponseType")],
    );
    for call in ["Create", "Close", "Delete"] {
        add(
            &mut messages,
            &format!("{p}.{call}Request"),
            &[("header", 1, "atomix.primitive.RequestHeader")],
        );
        add(
            &mut messages,
            &format!("{p}.{call}Response"),
            &[("header", 1, "atomix.primitive.ResponseHeader")],
        );
    }

    let m = "atomix.primitive.meta";
    let timestamps = [
        (
            "physical_timestamp",
            "atomix.primitive.meta.PhysicalTimestamp",
        ),
        (
            "logical_timestamp",
            "atomix.primitive.meta.LogicalTimestamp",
        ),
        ("vector_timestamp", "atomix.primitive.meta.VectorTimestamp"),
        ("epoch_timestamp", "atomix.primitive.meta.EpochTimestamp"),
    ];
    let mut object_meta = vec![("revision", 1, "atomix.primitive.meta.Revision")];
    let mut timestamp = Vec::new();
    for (i, (field, type_name)) in timestamps.iter().enumerate() {
        object_meta.push((field, i as i32 + 2, type_name));
        timestamp.push((*field, i as i32 + 1, *type_name));
    }
    timestamp.push(("revision", 5, "atomix.primitive.meta.Revision"));
    add(&mut messages, &format!("{m}.ObjectMeta"), &object_meta);
    add(&mut messages, &format!("{m}.Timestamp"), &timestamp);
    for name in ["Revision", "Epoch", "Sequence"] {
        add(
            &mut messages,
            &format!("{m}.{name}"),
            &[("num", 1, "uint64")],
        );
    }
    add(
        &mut messages,
        &format!("{m}.LogicalTimestamp"),
        &[("time", 1, "uint64")],
    );
    add(
        &mut messages,
        &format!("{m}.VectorTimestamp"),
        &[("time", 1, "repeated uint64")],
    );
    add(
        &mut messages,
        &format!("{m}.PhysicalTimestamp"),
        &[("time", 1, "google.protobuf.Timestamp")],
    );
    add(
        &mut messages,
        &format!("{m}.EpochTimestamp"),
        &[
            ("epoch", 1, "atomix.primitive.meta.Epoch"),
            ("sequence", 2, "atomix.primitive.meta.Sequence"),
        ],
    );

    // Envelopes: XRequest { header = 1; input = 2 }, XResponse { header = 1;
    // output = 2 }.
    let l = "atomix.primitive.leader";
    envelopes(&mut messages, l, &["Latch", "Get", "Events"]);
    let e = "atomix.primitive.election";
    envelopes(
        &mut messages,
        e,
        &[
            "Enter", "Withdraw", "Anoint", "Promote", "Evict", "GetTerm", "Events",
        ],
    );
    for (package, primitive_field, primitive_type) in [
        (l, "latch", "atomix.primitive.leader.Latch"),
        (e, "term", "atomix.primitive.election.Term"),
    ] {
        add(
            &mut messages,
            &format!("{package}.Snapshot"),
            &[(primitive_field, 1, primitive_type)],
        );
        add(
            &mut messages,
            &format!("{package}.SnapshotRequest"),
            &[("header", 1, "atomix.primitive.RequestHeader")],
        );
        add(
            &mut messages,
            &format!("{package}.SnapshotResponse"),
            &[
                ("header", 1, "atomix.primitive.ResponseHeader"),
                ("snapshot", 2, &format!("{package}.Snapshot")),
            ],
        );
        add(
            &mut messages,
            &format!("{package}.RestoreRequest"),
            &[
                ("header", 1, "atomix.primitive.RequestHeader"),
                ("snapshot", 2, &format!("{package}.Snapshot")),
            ],
        );
        add(
            &mut messages,
            &format!("{package}.RestoreResponse"),
            &[("header", 1, "atomix.primitive.ResponseHeader")],
        );
        add(
            &mut messages,
            &format!("{package}.EventsOutput"),
            &[
                ("type", 2, &format!("{package}.EventsOutput.Type")),
                (primitive_field, 3, primitive_type),
            ],
        );
    }
    for input in ["LatchInput", "GetInput", "EventsInput"] {
        add(&mut messages, &format!("{l}.{input}"), &[]);
    }
    for output in ["LatchOutput", "GetOutput"] {
        add(
            &mut messages,
            &format!("{l}.{output}"),
            &[("latch", 2, "atomix.primitive.leader.Latch")],
        );
    }
    add(
        &mut messages,
        &format!("{l}.Latch"),
        &[
            ("meta", 1, "atomix.primitive.meta.ObjectMeta"),
            ("leader", 2, "string"),
            ("participants", 3, "repeated string"),
        ],
    );
    for input in ["EnterInput", "WithdrawInput", "GetTermInput", "EventsInput"] {
        add(&mut messages, &format!("{e}.{input}"), &[]);
    }
    for input in ["AnointInput", "PromoteInput", "EvictInput"] {
        add(
            &mut messages,
            &format!("{e}.{input}"),
            &[("candidate_id", 2, "string")],
        );
    }
    for output in [
        "EnterOutput",
        "WithdrawOutput",
        "AnointOutput",
        "PromoteOutput",
        "EvictOutput",
        "GetTermOutput",
    ] {
        add(
            &mut messages,
            &format!("{e}.{output}"),
            &[("term", 2, "atomix.primitive.election.Term")],
        );
    }
    add(
        &mut messages,
        &format!("{e}.Term"),
        &[
            ("id", 1, "atomix.primitive.meta.Epoch"),
            ("timestamp", 2, "google.protobuf.Timestamp"),
            ("leader", 3, "string"),
            ("candidates", 4, "repeated string"),
        ],
    );
    messages
}

fn expected_enums() -> BTreeMap<String, Vec<(String, i32)>> {
    [
        (
            "atomix.primitive.RequestType",
            vec![("REQUEST", 0), ("REQUEST_STREAM", 1)],
        ),
        (
            "atomix.primitive.ResponseType",
            vec![("RESPONSE", 0), ("RESPONSE_STREAM", 1)],
        ),
        (
            "atomix.primitive.leader.EventsOutput.Type",
            vec![("NONE", 0), ("CHANGE", 1)],
        ),
        (
            "atomix.primitive.election.EventsOutput.Type",
            vec![("NONE", 0), ("CHANGED", 1)],
        ),
    ]
    .into_iter()
    .map(|(name, values)| {
        let values = values.into_iter().map(|(v, n)| (v.to_owned(), n)).collect();
        (name.to_owned(), values)
    })
    .collect()
}

/// (service, [(method, input, output, server streaming)]).
fn expected_services() -> BTreeMap<String, Vec<(String, String, String, bool)>> {
    let mut services = BTreeMap::new();
    for (service, package, calls) in [
        (
            "atomix.primitive.PrimitiveService",
            "atomix.primitive",
            &["Create", "Close", "Delete"][..],
        ),
        (
            "atomix.primitive.leader.LeaderLatchService",
            "atomix.primitive.leader",
            &["Latch", "Get", "Events", "Snapshot", "Restore"][..],
        ),
        (
            "atomix.primitive.election.LeaderElectionService",
            "atomix.primitive.election",
            &[
                "Enter", "Withdraw", "Anoint", "Promote", "Evict", "GetTerm", "Events", "Snapshot",
                "Restore",
            ][..],
        ),
    ] {
        let methods = calls
            .iter()
            .map(|call| {
                (
                    call.to_string(),
                    format!("{package}.{call}Request"),
                    format!("{package}.{call}Response"),
                    *call == "Events",
                )
            })
            .collect();
        services.insert(service.to_owned(), methods);
    }
    services
}

fn type_of(field: &prost_types::FieldDescriptorProto) -> String {
    let base = match field.r#type() {
        Type::Message | Type::Enum => field.type_name().trim_start_matches('.').to_owned(),
        Type::String => "string".into(),
        Type::Uint64 => "uint64".into(),
        other => format!("{other:?}"),
    };
    if field.label() == Label::Repeated {
        format!("repeated {base}")
    } else {
        base
    }
}

struct Compiled {
    messages: BTreeMap<String, Fields>,
    enums: BTreeMap<String, Vec<(String, i32)>>,
    services: BTreeMap<String, Vec<(String, String, String, bool)>>,
}

fn walk(prefix: &str, message: &prost_types::DescriptorProto, compiled: &mut Compiled) {
    let name = format!("{prefix}.{}", message.name());
    let fields = message
        .field
        .iter()
        .map(|f| (f.name().to_owned(), f.number(), type_of(f)))
        .collect();
    compiled.messages.insert(name.clone(), fields);
    for nested in &message.enum_type {
        let values = nested
            .value
            .iter()
            .map(|v| (v.name().to_owned(), v.number()))
            .collect();
        compiled
            .enums
            .insert(format!("{name}.{}", nested.name()), values);
    }
    for nested in &message.nested_type {
        walk(&name, nested, compiled);
    }
}

/// Everything in the `atomix.*` packages of the compiled descriptors.
fn compiled() -> Compiled {
    let set = FileDescriptorSet::decode(baton::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut compiled = Compiled {
        messages: BTreeMap::new(),
        enums: BTreeMap::new(),
        services: BTreeMap::new(),
    };
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("atomix"))
    {
        let package = file.package();
        for message in &file.message_type {
            walk(package, message, &mut compiled);
        }
        for e in &file.enum_type {
            let values = e
                .value
                .iter()
                .map(|v| (v.name().to_owned(), v.number()))
                .collect();
            compiled
                .enums
                .insert(format!("{package}.{}", e.name()), values);
        }
        for service in &file.service {
            let methods = service
                .method
                .iter()
                .map(|m| {
                    (
                        m.name().to_owned(),
                        m.input_type().trim_start_matches('.').to_owned(),
                        m.output_type().trim_start_matches('.').to_owned(),
                        m.server_streaming(),
                    )
                })
                .collect();
            compiled
                .services
                .insert(format!("{package}.{}", service.name()), methods);
        }
    }
    compiled
}

#[test]
fn every_upstream_message_has_exactly_its_fields() {
    let compiled = compiled();
    let expected = expected_messages();
    for (name, fields) in &expected {
        let mut want = fields.clone();
        want.sort();
        let mut got = compiled
            .messages
            .get(name)
            .unwrap_or_else(|| panic!("missing message {name}"))
            .clone();
        got.sort();
        assert_eq!(got, want, "fields of {name}");
    }
    let extra: Vec<&String> = compiled
        .messages
        .keys()
        .filter(|name| !expected.contains_key(*name))
        .collect();
    assert!(
        extra.is_empty(),
        "messages upstream does not have: {extra:?}"
    );
}

#[test]
fn every_upstream_enum_value_is_present() {
    assert_eq!(compiled().enums, expected_enums());
}

#[test]
fn every_upstream_method_is_present() {
    assert_eq!(compiled().services, expected_services());
}
