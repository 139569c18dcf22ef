//! The fuzz targets: one per decoder of bytes from the network, the disk or a config
//! file (see the crate doc for the mutations, the environment and how to replay a case).
//! Every target also checks that no single allocation exceeded the limit that decoder
//! documents (`flotilla_types::limits`).

use flotilla_metadata::groups::GroupOp;
use flotilla_metadata::replace::ReplaceOp;
use flotilla_metadata::security::{Credential, SecurityOp};
use flotilla_metadata::share::{AckKind as ShareAckKind, ShareConfig, ShareOp};
use std::sync::Mutex;

use bytes::Bytes;
use flotilla_fuzz::{CountingAlloc, run};
use flotilla_metadata::{Broker, Labels, MetadataState, TopicPolicy};
use flotilla_proto::{request, v1};
use flotilla_raft::wire;
use flotilla_types::{Record, RecordBatch, limits};
use prost::Message;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The allocation counter is process-wide: targets run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a decoder may allocate at once while it reads a fuzz input (at most
/// `INPUT_BYTES_MAX` bytes): what the limits allow it to believe, never what the input
/// claims beyond them.
const ALLOCATION_MAX: usize = limits::DECODE_BYTES_MAX;

fn batch(records: &[Record]) -> RecordBatch {
    RecordBatch::encode(records).expect("valid batch")
}

fn sample_batches() -> Vec<Vec<u8>> {
    vec![
        batch(&[Record::value("v")]).bytes().to_vec(),
        batch(&[
            Record { key: Some(Bytes::from_static(b"key")), ..Record::value(vec![7u8; 300]) },
            Record {
                key: None,
                value: Bytes::from_static(b"x"),
                headers: vec![("h".into(), Bytes::from_static(b"hv")), ("trace".into(), Bytes::new())],
                timestamp_ms: 1_700_000_000_000,
            },
        ])
        .bytes()
        .to_vec(),
        RecordBatch::encode_with(&[Record::value("lz4 lz4 lz4 lz4 lz4")], None, flotilla_types::Compression::Lz4)
            .expect("a batch")
            .bytes()
            .to_vec(),
        RecordBatch::encode_with(&[Record::value("zstd zstd zstd zstd")], None, flotilla_types::Compression::Zstd)
            .expect("a batch")
            .bytes()
            .to_vec(),
        RecordBatch::encode_as(
            &[Record::value("stamped")],
            Some(flotilla_types::ProducerStamp { id: 9, epoch: 2, base_sequence: 40 }),
        )
        .expect("a batch")
        .bytes()
        .to_vec(),
    ]
}

/// t92 (wire safety): record batches, as a node checks a produce and a consumer a fetch.
#[test]
fn t92_fuzz_record_batch() {
    let _s = serial();
    run("record_batch", &sample_batches(), ALLOCATION_MAX, |b| match RecordBatch::decode(Bytes::copy_from_slice(b)) {
        Ok(batch) => {
            let records = batch.records();
            assert_eq!(records.len(), batch.len() as usize);
            // What decodes re-encodes to the same bytes (in the format written now; a
            // compressed section may compress differently, to the same records).
            if b[0] == flotilla_types::batch::FORMAT {
                let again =
                    RecordBatch::encode_with(&records, batch.producer(), batch.compression()).expect("re-encodes");
                if batch.compression() == flotilla_types::Compression::None {
                    assert_eq!(again.bytes().as_ref(), b);
                } else {
                    assert_eq!(RecordBatch::decode(again.bytes().clone()).expect("decodes").records(), records);
                }
            }
            true
        }
        Err(_) => false,
    });
}

/// A decoder under test: whether it accepted the bytes.
type Target = fn(&[u8]) -> bool;

fn enc(m: &impl Message) -> Vec<u8> {
    m.encode_to_vec()
}

/// Decodes `b` as the protobuf message `M` and converts it as the server does.
fn checked<M: Message + Default, P: TryFrom<M>>(b: &[u8]) -> bool {
    match M::decode(b) {
        Ok(m) => P::try_from(m).is_ok(),
        Err(_) => false,
    }
}

fn policy() -> v1::TopicPolicy {
    v1::TopicPolicy {
        allowed_regions: vec!["eu".into()],
        preferred_leader_region: Some("eu".into()),
        excluded_nodes: vec![4],
        excluded_zones: vec!["z9".into()],
        retention_ms: Some(3_600_000),
        retention_bytes: Some(1 << 30),
    }
}

/// t92 (wire safety): every client and admin request, decoded by prost within the
/// server's message limit and converted to its domain type (`flotilla_proto::request`).
#[test]
fn t92_fuzz_client_and_admin_requests() {
    let _s = serial();
    let produce = v1::ProduceRequest {
        topic: "orders".into(),
        partition: 2,
        batch: sample_batches()[1].clone().into(),
        acks: 0,
        client_id: "orders-app".into(),
    };
    let fetch = v1::FetchRequest {
        topic: "orders".into(),
        partition: 1,
        offset: 10,
        max_bytes: 1 << 20,
        max_wait_ms: 500,
        from_follower: true,
        client_id: "orders-app".into(),
    };
    let targets: Vec<(&str, Vec<u8>, Target)> = vec![
        ("produce", enc(&produce), checked::<v1::ProduceRequest, request::Produce>),
        ("fetch", enc(&fetch), checked::<v1::FetchRequest, request::Fetch>),
        (
            "init_producer",
            enc(&v1::InitProducerRequest { name: "orders-writer".into() }),
            checked::<v1::InitProducerRequest, request::InitProducer>,
        ),
        (
            "group_heartbeat",
            enc(&v1::GroupHeartbeatRequest {
                group: "readers".into(),
                member_id: "cli-00ff".into(),
                member_epoch: 3,
                topics: vec!["orders".into(), "events".into()],
                zone: "z1".into(),
                session_timeout_ms: 10_000,
                assignor: "range".into(),
                owned: vec![v1::TopicPartition { topic: "orders".into(), partition: 1 }],
                ..Default::default()
            }),
            checked::<v1::GroupHeartbeatRequest, request::GroupHeartbeat>,
        ),
        (
            "commit_offsets",
            enc(&v1::CommitOffsetsRequest {
                group: "readers".into(),
                member_id: "cli-00ff".into(),
                member_epoch: 3,
                offsets: vec![v1::OffsetCommit {
                    topic: "orders".into(),
                    partition: 1,
                    offset: 77,
                    metadata: "m".into(),
                }],
            }),
            checked::<v1::CommitOffsetsRequest, request::CommitOffsets>,
        ),
        (
            "reset_offsets",
            enc(&v1::ResetOffsetsRequest {
                group: "readers".into(),
                offsets: vec![v1::OffsetCommit {
                    topic: "orders".into(),
                    partition: 0,
                    offset: 5,
                    metadata: "".into(),
                }],
            }),
            checked::<v1::ResetOffsetsRequest, request::ResetOffsets>,
        ),
        (
            "share_heartbeat",
            enc(&v1::ShareHeartbeatRequest {
                group: "workers".into(),
                member_id: "cli-00ff".into(),
                topics: vec!["orders".into()],
                session_timeout_ms: 10_000,
                config: Some(v1::ShareGroupConfig {
                    max_deliveries: 3,
                    lock_timeout_ms: 2_000,
                    key_ordered: true,
                    start: 1,
                }),
                ..Default::default()
            }),
            checked::<v1::ShareHeartbeatRequest, request::ShareHeartbeat>,
        ),
        (
            "share_acquire",
            enc(&v1::ShareAcquireRequest {
                group: "workers".into(),
                member_id: "cli-00ff".into(),
                topic: "orders".into(),
                partition: 1,
                log_start: 0,
                from: 10,
                to: 13,
                records: vec![
                    v1::FetchedRecord { offset: 10, has_key: true, key_hash: 7 },
                    v1::FetchedRecord { offset: 12, has_key: false, key_hash: 0 },
                ],
                max_records: 100,
                request_seq: 3,
            }),
            checked::<v1::ShareAcquireRequest, request::ShareAcquire>,
        ),
        (
            "share_ack",
            enc(&v1::ShareAckRequest {
                group: "workers".into(),
                member_id: "cli-00ff".into(),
                acks: vec![
                    v1::ShareAck { topic: "orders".into(), partition: 1, offset: 10, r#type: 1, error: "".into() },
                    v1::ShareAck { topic: "orders".into(), partition: 1, offset: 12, r#type: 3, error: "bad".into() },
                ],
                request_seq: 4,
            }),
            checked::<v1::ShareAckRequest, request::ShareAcks>,
        ),
        (
            "describe_group",
            enc(&v1::DescribeGroupRequest { group: "readers".into() }),
            checked::<v1::DescribeGroupRequest, request::GroupName>,
        ),
        (
            "list_offsets",
            enc(&v1::ListOffsetsRequest { topic: "t".into(), partition: 0, timestamp_ms: Some(1_700_000_000_000) }),
            checked::<v1::ListOffsetsRequest, request::ListOffsets>,
        ),
        (
            "delete_records",
            enc(&v1::DeleteRecordsRequest { topic: "t".into(), partition: 2, before_offset: 99 }),
            checked::<v1::DeleteRecordsRequest, request::DeleteRecords>,
        ),
        (
            "metadata",
            enc(&v1::MetadataRequest { topics: vec!["a".into(), "b.c".into()] }),
            checked::<v1::MetadataRequest, request::MetadataQuery>,
        ),
        (
            "create_topic",
            enc(&v1::CreateTopicRequest {
                name: "orders".into(),
                partitions: 6,
                replication_factor: 3,
                policy: Some(policy()),
            }),
            checked::<v1::CreateTopicRequest, request::CreateTopic>,
        ),
        (
            "set_topic_config",
            enc(&v1::SetTopicConfigRequest {
                name: "orders".into(),
                replication_factor: 3,
                policy: Some(policy()),
                merge: true,
                reset: vec!["retention-ms".into()],
            }),
            checked::<v1::SetTopicConfigRequest, request::TopicConfig>,
        ),
        (
            "add_partitions",
            enc(&v1::AddPartitionsRequest { name: "orders".into(), total: 12 }),
            checked::<v1::AddPartitionsRequest, request::AddPartitions>,
        ),
        (
            "add_node",
            enc(&v1::AddNodeRequest {
                id: 4,
                addr: "127.0.0.1:7073".into(),
                labels: Some(v1::Labels { region: "eu".into(), zone: "a".into(), rack: "r1".into() }),
                rpc_addr: "127.0.0.1:7173".into(),
            }),
            checked::<v1::AddNodeRequest, request::AddNode>,
        ),
        (
            "drain_node",
            enc(&v1::DrainNodeRequest { id: 2, undo: true }),
            checked::<v1::DrainNodeRequest, request::DrainNode>,
        ),
        ("remove_node", enc(&v1::RemoveNodeRequest { id: 2 }), checked::<v1::RemoveNodeRequest, request::NodeRef>),
        (
            "replace_node",
            enc(&v1::ReplaceNodeRequest { id: 2, status_only: true }),
            checked::<v1::ReplaceNodeRequest, request::ReplaceNode>,
        ),
        (
            "reassign",
            enc(&v1::ReassignRequest { topic: "t".into(), partition: 1, replicas: vec![1, 2, 4] }),
            checked::<v1::ReassignRequest, request::Reassign>,
        ),
        (
            "transfer_leader",
            enc(&v1::TransferLeaderRequest { topic: "t".into(), partition: 1, to: 2 }),
            checked::<v1::TransferLeaderRequest, request::TransferLeader>,
        ),
        (
            "plan",
            enc(&v1::PlanRequest {
                scenario: Some(v1::plan_request::Scenario::TopicConfig(v1::plan_request::TopicConfig {
                    name: "t".into(),
                    replication_factor: 3,
                    policy: Some(policy()),
                })),
            }),
            checked::<v1::PlanRequest, request::PlanScenario>,
        ),
        (
            "set_controllers",
            enc(&v1::SetControllersRequest { voters: vec![1, 2, 3, 4, 5] }),
            checked::<v1::SetControllersRequest, request::SetControllers>,
        ),
        (
            "delete_topic",
            enc(&v1::DeleteTopicRequest { name: "t".into() }),
            checked::<v1::DeleteTopicRequest, request::TopicName>,
        ),
        (
            "cancel_move",
            enc(&v1::CancelMoveRequest { topic: "t".into(), partition: 3 }),
            checked::<v1::CancelMoveRequest, request::TopicPartition>,
        ),
        (
            "create_user",
            enc(&v1::CreateUserRequest { name: "alice".into(), password: "s3cret".into() }),
            checked::<v1::CreateUserRequest, request::CreateUser>,
        ),
        (
            "delete_user",
            enc(&v1::DeleteUserRequest { name: "alice".into() }),
            checked::<v1::DeleteUserRequest, request::UserName>,
        ),
        (
            "acl",
            enc(&v1::AclRequest {
                acl: Some(v1::Acl {
                    principal: "User:alice".into(),
                    resource_type: "topic".into(),
                    pattern: "prefix".into(),
                    resource_name: "orders.".into(),
                    operation: "write".into(),
                }),
            }),
            checked::<v1::AclRequest, request::AclChange>,
        ),
        (
            "list_acls",
            enc(&v1::ListAclsRequest { principal: "alice".into() }),
            checked::<v1::ListAclsRequest, request::ListAcls>,
        ),
    ];
    for (name, seed, target) in targets {
        run(name, &[seed], ALLOCATION_MAX, target);
    }
}

/// t92 (wire safety): answers a client decodes from a node: the fetch answer's batches
/// are checked as the consumer checks them.
#[test]
fn t92_fuzz_answers_the_client_decodes() {
    let _s = serial();
    let fetched = v1::FetchResponse {
        error: None,
        high_watermark: 12,
        log_start_offset: 0,
        batches: sample_batches()
            .into_iter()
            .enumerate()
            .map(|(i, b)| v1::FetchedBatch { base_offset: i as u64 * 3, batch: b.into() })
            .collect(),
        throttle_time_ms: 0,
    };
    run("fetch_response", &[enc(&fetched)], ALLOCATION_MAX, |b| match v1::FetchResponse::decode(b) {
        Ok(r) => r.batches.into_iter().all(|f| RecordBatch::decode(f.batch).is_ok()),
        Err(_) => false,
    });
    let meta = v1::MetadataResponse {
        brokers: vec![v1::Broker { id: 1, addr: "127.0.0.1:7070".into(), ..Default::default() }],
        topics: vec![v1::TopicMetadata {
            name: "t".into(),
            replication_factor: 3,
            partitions: vec![v1::PartitionMetadata {
                partition: 0,
                group_id: 1,
                leader_id: 1,
                replicas: vec![1, 2, 3],
                high_watermark: Some(4),
            }],
            ..Default::default()
        }],
        metadata_leader_id: 1,
    };
    run("metadata_response", &[enc(&meta)], ALLOCATION_MAX, |b| v1::MetadataResponse::decode(b).is_ok());
}

/// t92 (wire safety): node-to-node messages and their replies, decoded as the receiving
/// node decodes them (with forwarded writes checked), within `DECODE_BYTES_MAX`.
#[test]
fn t92_fuzz_node_to_node_messages_and_replies() {
    let _s = serial();
    run("raft_message", &wire::sample_messages(), ALLOCATION_MAX, |b| wire::message(b).is_ok());
    run("raft_reply", &wire::sample_replies(), ALLOCATION_MAX, |b| wire::reply(b).is_ok());
    // The gRPC envelope around them.
    let envelope = flotilla_proto::raft::v1::RaftRequest {
        group_id: 3,
        from_node: 2,
        payload: wire::sample_messages().swap_remove(0).into(),
        to_node: 1,
    };
    run("raft_envelope", &[enc(&envelope)], ALLOCATION_MAX, |b| {
        flotilla_proto::raft::v1::RaftRequest::decode(b).is_ok_and(|r| wire::message(&r.payload).is_ok())
    });
}

/// t92 (wire safety): what the log store reads back from the engine: entries, votes, log
/// ids, tombstones and log keys. A damaged value is an error, never a panic.
#[test]
fn t92_fuzz_stored_values_and_keys() {
    let _s = serial();
    let stored = wire::sample_stored();
    run("log_entry", &stored[..4], ALLOCATION_MAX, |b| wire::log_entry(b).is_ok());
    run("vote", &stored[4..5], ALLOCATION_MAX, |b| wire::vote(b).is_ok());
    run("log_id", &stored[5..6], ALLOCATION_MAX, |b| wire::log_id(b).is_ok());
    run("tombstone", &stored[6..7], ALLOCATION_MAX, |b| wire::tombstone(b).is_ok());
    run("offset_index_entry", &stored[7..8], ALLOCATION_MAX, |b| wire::index_entry(b).is_ok());
    run("time_index_entry", &stored[8..9], ALLOCATION_MAX, |b| wire::time_entry(b).is_ok());
    run("applied_state", &stored[9..10], ALLOCATION_MAX, |b| wire::applied_state(b).is_ok());
    run("snapshot", &stored[10..11], ALLOCATION_MAX, |b| wire::snapshot(b).is_ok());
    run("log_key", &wire::sample_keys()[..2], ALLOCATION_MAX, |b| wire::log_key(b).is_ok());
}

fn metadata_state() -> MetadataState {
    let mut s = MetadataState::new();
    let mut index = 0;
    let mut apply = |s: &mut MetadataState, c: flotilla_metadata::Command| {
        index += 1;
        s.apply(index, &c)
    };
    for id in 1..=4u64 {
        let labels = Labels { zone: format!("z{}", id % 3), ..Labels::default() };
        apply(
            &mut s,
            flotilla_metadata::Command::RegisterBroker(Broker::new(id, format!("127.0.0.1:{}", 7069 + id), labels)),
        );
    }
    apply(
        &mut s,
        flotilla_metadata::Command::CreateTopic {
            name: "orders".into(),
            partitions: 3,
            replication_factor: 3,
            policy: TopicPolicy::default(),
        },
    );
    s
}

/// t92 (wire safety): metadata commands, decoded and applied to a cluster's state. A
/// committed metadata command is applied by every node, so one that panics the state
/// machine would stop the whole cluster, over and over on restart.
#[test]
fn t92_fuzz_metadata_commands_decode_and_apply() {
    let _s = serial();
    // A cluster with a consumer group of two members, so that group commands reach
    // members, assignments and offsets.
    let mut base = metadata_state();
    let join = |member: &str| flotilla_metadata::Command::Group {
        name: "readers".into(),
        op: GroupOp::Join {
            member: member.into(),
            client: "fuzz".into(),
            zone: "".into(),
            topics: ["orders".to_string()].into(),
            session_timeout_ms: 10_000,
            assignor: Default::default(),
        },
    };
    for m in ["m1", "m2"] {
        let index = base.last_applied_index() + 1;
        base.apply(index, &join(m));
    }
    let group = |op: GroupOp| flotilla_metadata::Command::Group { name: "readers".into(), op };
    // And a share group with one member holding records.
    let share = |op: ShareOp| flotilla_metadata::Command::Share { name: "workers".into(), op };
    let share_join = |member: &str| {
        share(ShareOp::Join {
            member: member.into(),
            client: "fuzz".into(),
            topics: ["orders".to_string()].into(),
            session_timeout_ms: 10_000,
            config: ShareConfig {
                max_deliveries: 2,
                lock_timeout_ms: 1_000,
                key_ordered: true,
                ..ShareConfig::default()
            },
        })
    };
    let acquire = |member: &str, now_ms: u64| {
        share(ShareOp::Acquire {
            member: member.into(),
            seq: now_ms + 1,
            partition: ("orders".into(), 0),
            now_ms,
            log_start: 0,
            from: 0,
            to: 4,
            records: vec![(0, Some(1)), (1, Some(2)), (2, Some(1)), (3, None)],
            max: 10,
        })
    };
    for c in [share_join("w1"), acquire("w1", 0)] {
        let index = base.last_applied_index() + 1;
        base.apply(index, &c);
    }
    let acl = flotilla_types::acl::AclEntry {
        principal: "alice".into(),
        resource: flotilla_types::acl::ResourceType::Topic,
        pattern: flotilla_types::acl::PatternType::Literal,
        name: "orders".into(),
        operation: flotilla_types::acl::Operation::Write,
    };
    let commands = vec![
        share_join("w2"),
        acquire("w2", 5_000),
        share(ShareOp::Ack {
            member: "w1".into(),
            seq: 7,
            now_ms: 10,
            acks: vec![
                (("orders".into(), 0), 0, ShareAckKind::Accept),
                (("orders".into(), 0), 1, ShareAckKind::Reject { error: "bad".into() }),
                (("orders".into(), 0), 3, ShareAckKind::Release { error: "later".into() }),
                (("orders".into(), 0), 2, ShareAckKind::DeadLettered),
            ],
        }),
        share(ShareOp::Leave { member: "w1".into(), reason: "fuzz".into() }),
        share(ShareOp::Delete),
        join("m3"),
        group(GroupOp::Release { member: "m1".into(), partitions: vec![("orders".into(), 0), ("orders".into(), 1)] }),
        group(GroupOp::Leave { member: "m2".into(), reason: "fuzz".into() }),
        group(GroupOp::Commit {
            member: Some(("m1".into(), 2)),
            offsets: vec![(("orders".into(), 0), 10, "meta".into())],
        }),
        group(GroupOp::Commit { member: None, offsets: vec![(("orders".into(), 1), 3, String::new())] }),
        group(GroupOp::Reset { offsets: vec![(("orders".into(), 0), 1), (("orders".into(), 2), 0)] }),
        group(GroupOp::Delete),
        flotilla_metadata::Command::RegisterBroker(Broker::new(5, "127.0.0.1:7074", Labels::default())),
        flotilla_metadata::Command::CreateTopic {
            name: "events".into(),
            partitions: 4,
            replication_factor: 3,
            policy: TopicPolicy::default(),
        },
        flotilla_metadata::Command::DeleteTopic { name: "orders".into() },
        flotilla_metadata::Command::SetLiveness { node: 2, liveness: flotilla_metadata::Liveness::Suspected },
        flotilla_metadata::Command::SetAdmin { node: 3, admin: flotilla_metadata::AdminState::Draining },
        flotilla_metadata::Command::StartMove { group: 1, target: vec![1, 2, 4], reason: "fuzz".into() },
        flotilla_metadata::Command::FinishMove { group: 1, move_id: 1 },
        flotilla_metadata::Command::CancelMove { group: 2 },
        flotilla_metadata::Command::SetPreferredLeader { group: 1, leader: 2 },
        flotilla_metadata::Command::SetTopicConfig {
            name: "orders".into(),
            replication_factor: 2,
            policy: TopicPolicy::default(),
        },
        flotilla_metadata::Command::AddPartitions { name: "orders".into(), total: 5 },
        flotilla_metadata::Command::Security(SecurityOp::PutUser {
            name: "alice".into(),
            credential: Credential {
                salt: vec![7; 16],
                iterations: 4096,
                stored_key: vec![1; 32],
                server_key: vec![2; 32],
            },
            only_if_absent: false,
        }),
        flotilla_metadata::Command::Security(SecurityOp::DeleteUser { name: "alice".into() }),
        flotilla_metadata::Command::Security(SecurityOp::AddAcl(acl.clone())),
        flotilla_metadata::Command::Security(SecurityOp::RemoveAcl(acl)),
        flotilla_metadata::Command::Replace { node: 2, op: ReplaceOp::Start { metadata_voter: true } },
        flotilla_metadata::Command::Replace { node: 2, op: ReplaceOp::ReplicaGone { group: 1 } },
        flotilla_metadata::Command::Replace { node: 2, op: ReplaceOp::Finish },
    ];
    let seeds: Vec<Vec<u8>> = commands.iter().map(wire::encode_metadata_command).collect();
    run("metadata_command", &seeds, ALLOCATION_MAX, |b| match wire::metadata_command(b) {
        Ok(c) => {
            let mut s = base.clone();
            let index = s.last_applied_index() + 1;
            s.apply(index, &c);
            true
        }
        Err(_) => false,
    });
}

/// t92: the node's config file, parsed and validated as `flotilla node --config` does.
#[test]
fn t92_fuzz_config_file() {
    let _s = serial();
    let seed = br#"
id = 2
listen = "127.0.0.1:7071"
data-dir = "/var/lib/flotilla"
peers = ["1=127.0.0.1:7070", "2=127.0.0.1:7071", "3=127.0.0.1:7072"]
region = "eu"
zone = "a"
"#
    .to_vec();
    run("config_file", &[seed], ALLOCATION_MAX, |b| {
        let Ok(text) = std::str::from_utf8(b) else { return false };
        match toml::from_str::<flotilla_node::NodeConfig>(text) {
            Ok(c) => c.validate().is_ok(),
            Err(_) => false,
        }
    });
}
