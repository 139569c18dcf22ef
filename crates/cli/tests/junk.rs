//! Wire safety over real node processes: junk, truncated, oversized and garbled messages
//! sent to every service a node listens for (client API, admin API, node-to-node Raft)
//! and to the raw socket. No node may stop or grow past the documented limits, the
//! cluster keeps serving, and every acknowledged record is still there afterwards.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::*;
use flotilla_client::ProducerConfig;
use flotilla_fuzz::Mutator;
use flotilla_proto::raft::v1 as raftpb;
use flotilla_proto::v1;
use flotilla_types::{Record, RecordBatch, limits};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Sends and receives message bodies as they are, so a test can put anything on the wire.
#[derive(Default, Clone)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One gRPC call of `path` with `body` as its message; the status code, or OK.
async fn raw_call(addr: &str, path: &'static str, body: Bytes) -> tonic::Code {
    raw_call_tls(addr, None, path, body).await
}

/// [`raw_call`] over TLS with `tls` when given.
async fn raw_call_tls(
    addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    path: &'static str,
    body: Bytes,
) -> tonic::Code {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("tls config");
    }
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {addr}: {e}"),
    };
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    if let Err(e) = grpc.ready().await {
        panic!("{addr} not ready: {e}");
    }
    match grpc.unary(tonic::Request::new(body), PathAndQuery::from_static(path), Raw).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

const CLIENT_METHODS: [&str; 4] = [
    "/flotilla.v1.Flotilla/Produce",
    "/flotilla.v1.Flotilla/Fetch",
    "/flotilla.v1.Flotilla/ListOffsets",
    "/flotilla.v1.Flotilla/Metadata",
];

const ADMIN_METHODS: [&str; 12] = [
    "/flotilla.v1.Admin/CreateTopic",
    "/flotilla.v1.Admin/DeleteTopic",
    "/flotilla.v1.Admin/DescribeTopic",
    "/flotilla.v1.Admin/AddNode",
    "/flotilla.v1.Admin/DrainNode",
    "/flotilla.v1.Admin/RemoveNode",
    "/flotilla.v1.Admin/Reassign",
    "/flotilla.v1.Admin/TransferLeader",
    "/flotilla.v1.Admin/CancelMove",
    "/flotilla.v1.Admin/Plan",
    "/flotilla.v1.Admin/SetTopicConfig",
    "/flotilla.v1.Admin/AddPartitions",
];

/// Peak resident memory of a process (VmHWM), in KiB, and whether it still runs (not a
/// zombie).
fn process_state(pid: u32) -> (bool, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (false, 0) };
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap_or("").to_string();
    let alive = !field("State:").contains('Z');
    let hwm = field("VmHWM:").split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    (alive, hwm)
}

/// Bodies for the client and admin methods: valid requests garbled, random bytes, a
/// length that lies, an empty body. A body that still decodes reaches its method as a
/// well-formed request, and the admin API is not yet behind authorization
/// (docs/security.md): the admin seeds name a topic and nodes that do not exist, and
/// only the client seeds name the topic under test.
fn request_bodies(m: &mut Mutator, client: bool) -> Vec<Bytes> {
    let batch = RecordBatch::encode(&[Record::value("junk")]).unwrap();
    let seeds = if client {
        vec![
            v1::ProduceRequest {
                topic: "safe".into(),
                partition: 0,
                batch: batch.bytes().clone(),
                ..Default::default()
            }
            .encode_to_vec(),
            v1::FetchRequest {
                topic: "safe".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
                ..Default::default()
            }
            .encode_to_vec(),
            v1::MetadataRequest { topics: vec!["safe".into()] }.encode_to_vec(),
        ]
    } else {
        vec![
            v1::CreateTopicRequest { name: "no-such-topic".into(), partitions: 3, replication_factor: 9, policy: None }
                .encode_to_vec(),
            v1::ReassignRequest { topic: "no-such-topic".into(), partition: 0, replicas: vec![97, 98, 99] }
                .encode_to_vec(),
            v1::DrainNodeRequest { id: 99, undo: false }.encode_to_vec(),
        ]
    };
    let mut out: Vec<Bytes> = (0..40).map(|_| Bytes::from(m.input(&seeds))).collect();
    // A field that claims more bytes than the message has.
    out.push(Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a']));
    // Deep nesting: a sub-message inside a sub-message, a thousand deep.
    let mut nested = Vec::new();
    for _ in 0..1000 {
        let mut outer = vec![0x2a];
        prost::encoding::encode_varint(nested.len() as u64, &mut outer);
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    out.push(Bytes::from(nested));
    out.push(Bytes::new());
    out
}

/// t94 (wire safety): junk to every listener of every node of a real cluster; nothing
/// stops, nothing grows past the limits, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t94_junk_to_every_listener_crashes_nothing_and_loses_nothing() {
    let _serial = serial().await;
    let cluster = cluster(3);
    let client = ready_client(&cluster, 3).await;
    create_topic(&client, "safe", 3).await;
    let producer = client.producer("safe", ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..300 {
        let ack = producer.enqueue(keyed(&format!("k{}", i % 7), &format!("before-{i}"))).await.expect("enqueue");
        acked.push(ack);
    }
    for ack in acked.drain(..) {
        ack.await.expect("acknowledged before the junk");
    }
    let topic = client.describe_topic("safe").await.expect("describe");
    let groups: Vec<u64> = topic.partitions.iter().map(|p| p.group_id).collect();

    // What a node holds to speak to node `to`: its certificate, as node `from`.
    let certs = cluster.certs_dir();
    let node_tls = |from: u64| {
        let read = |f: String| std::fs::read(certs.join(f)).expect("certificate");
        flotilla_rpc::NodeTls::from_pem(
            from,
            &read("ca.pem".into()),
            &read(format!("node-{from}.pem")),
            &read(format!("node-{from}.key")),
        )
        .expect("node certificate")
    };
    let mut m = Mutator::new(0x6a75_6e6b);
    for id in cluster.ids() {
        let addr = cluster.addr(id);
        let rpc = cluster.rpc_addr(id);
        // The client and admin services.
        for (methods, client) in [(&CLIENT_METHODS[..], true), (&ADMIN_METHODS[..], false)] {
            let bodies = request_bodies(&mut m, client);
            for path in methods {
                for body in &bodies {
                    let code = raw_call(&addr, path, body.clone()).await;
                    assert_ne!(code, tonic::Code::Unavailable, "{path} on node {id}: the node went away");
                }
            }
        }
        // Over the message limit: refused by the transport, not allocated.
        let big = Bytes::from(vec![0x0a; limits::REQUEST_BYTES_MAX + 1]);
        let code = raw_call(&addr, CLIENT_METHODS[0], big).await;
        assert_eq!(code, tonic::Code::OutOfRange, "an oversized produce");

        // The client port does not serve the node-to-node service.
        let req = raftpb::RaftRequest { group_id: groups[0], from_node: 1, payload: vec![7].into(), to_node: id };
        let code = raw_call(&addr, "/flotilla.raft.v1.Raft/Call", req.encode_to_vec().into()).await;
        assert_eq!(code, tonic::Code::Unimplemented, "the client port of node {id} served a Raft message");

        // The node-to-node service, as a peer holding a node certificate (a node gone
        // bad): garbled messages (for groups the node does not host, so a mutation that
        // happens to decode is refused there too), random payloads for the groups it does
        // host, and the message that once aborted a node.
        let samples = flotilla_raft::wire::sample_messages();
        for i in 0..200 {
            let (group_id, payload) = if i % 4 == 0 {
                (groups[i % groups.len()], (0..(i * 37 % 700)).map(|j| (j * 131 + i) as u8).collect())
            } else {
                (1 << 40, m.input(&samples))
            };
            let from = 1 + (i as u64 % 3);
            let req = raftpb::RaftRequest { group_id, from_node: from, payload: payload.into(), to_node: id };
            let tls = node_tls(from).client(id);
            let code = raw_call_tls(&rpc, Some(tls), "/flotilla.raft.v1.Raft/Call", req.encode_to_vec().into()).await;
            assert_ne!(code, tonic::Code::Unavailable, "raft call on node {id}: the node went away");
        }
        let mut exabyte = Vec::from([5u8, 1, 0]); // Write(Partition(Produce { batch: …
        exabyte.push(253);
        exabyte.extend_from_slice(&(1u64 << 60).to_le_bytes());
        for group_id in [0, groups[0], 1 << 40] {
            let req = raftpb::RaftRequest { group_id, from_node: 2, payload: exabyte.clone().into(), to_node: 0 };
            let tls = node_tls(2).client(id);
            raw_call_tls(&rpc, Some(tls), "/flotilla.raft.v1.Raft/Call", req.encode_to_vec().into()).await;
        }

        // The raw socket: random bytes, the HTTP/2 preface then garbage, a frame header
        // that claims 16 MiB, and connections cut mid-frame.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut raw: Vec<Vec<u8>> = (0..20).map(|_| m.input(std::slice::from_ref(&preface))).collect();
        raw.push([preface.clone(), vec![0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 1]].concat());
        raw.push([preface.clone(), vec![0x00, 0x40, 0x00, 0x04, 0x00, 0, 0, 0, 0, 0x00, 0x04]].concat());
        raw.push(vec![0x16, 0x03, 0x01, 0x02, 0x00]); // a TLS hello to a plaintext port
        raw.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
        for bytes in raw {
            for to in [&addr, &rpc] {
                if let Ok(mut s) = tokio::net::TcpStream::connect(to).await {
                    let _ = s.write_all(&bytes).await;
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await;
                }
            }
        }
    }

    // Every node still runs, and none grew past what the limits allow.
    for id in cluster.ids() {
        let pid = cluster.pid(id).expect("the test started every node");
        let (alive, hwm_kib) = process_state(pid);
        assert!(alive, "node {id} stopped under junk:\n{}", cluster.log_tail(id, 30));
        eprintln!("node {id}: peak resident memory {} MiB", hwm_kib / 1024);
        assert!(hwm_kib < 1024 * 1024, "node {id} peaked at {hwm_kib} KiB");
    }
    // The cluster serves, and has everything it acknowledged.
    for i in 0..300 {
        acked.push(producer.enqueue(keyed(&format!("k{}", i % 7), &format!("after-{i}"))).await.expect("enqueue"));
    }
    for ack in acked {
        ack.await.expect("acknowledged after the junk");
    }
    let consumed = drain(&client, "safe", 3).await;
    let values: std::collections::BTreeSet<String> = consumed.values().flatten().map(|(_, v)| v.clone()).collect();
    for i in 0..300 {
        assert!(values.contains(&format!("before-{i}")), "before-{i} lost");
        assert!(values.contains(&format!("after-{i}")), "after-{i} lost");
    }
}
