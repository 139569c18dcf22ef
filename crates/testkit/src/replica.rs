//! Reading one replica's committed log on its own node, for comparing replicas with
//! [`crate::check_replicas`] (the chaos suite at the end of every scenario; e2e t16).

use flotilla_client::{Client, ClientError};

use crate::checker::ReplicaLog;

/// The committed log of `topic`/`partition` as node `node` at `addr` holds it, from
/// `from` (a log start; below it a replica answers OFFSET_OUT_OF_RANGE), read with
/// [`Client::read_replica`] (no retries, no fallback to the leader). The first answer's
/// high watermark bounds the read, so a replica still applying gives a prefix; the
/// log's `commit_offset` is where the read stopped.
pub async fn read_replica_log(
    client: &Client,
    node: u64,
    addr: &str,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<ReplicaLog, ClientError> {
    let mut position = from;
    let mut records = vec![];
    let mut high = None;
    loop {
        let r = client.read_replica(addr, topic, partition, position).await?;
        let h = *high.get_or_insert(r.high_watermark);
        records.extend(
            r.records
                .into_iter()
                .filter(|c| c.offset < h)
                .map(|c| (c.offset, String::from_utf8_lossy(&c.record.value).into_owned())),
        );
        if r.next >= h || r.next == position {
            let commit_offset = h.min(r.next);
            return Ok(ReplicaLog { node, topic: topic.to_string(), partition, commit_offset, records });
        }
        position = r.next;
    }
}
