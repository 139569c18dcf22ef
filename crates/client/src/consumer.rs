//! Reading one partition.

use std::sync::Arc;
use std::time::Duration;

use flotilla_types::{ErrorCode, Offset, PartitionId, Record};
use serde::Serialize;

use crate::config::ConsumerConfig;
use crate::error::{ClientError, Result};
use crate::router::ClientInner;

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StartAt {
    /// The earliest offset still stored.
    Beginning,
    /// This offset.
    Offset(Offset),
    /// The high watermark when the consumer is created: only records written later.
    End,
    /// The first record whose timestamp is at or after this time (ms since the Unix
    /// epoch); the high watermark when every record is older.
    Time(u64),
}

/// What a consumer does when its position is no longer in the partition (records below
/// the log start were deleted by retention or delete-records, or the position is past
/// the high watermark): Kafka's `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum OffsetReset {
    /// Go to the log start: read what is still there (the default: records are skipped
    /// only when they are gone).
    #[default]
    Earliest,
    /// Go to the high watermark: only records written from now on.
    Latest,
    /// Fail the poll with `OFFSET_OUT_OF_RANGE`; the caller seeks.
    None,
}

/// A record read from a partition, with its place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub partition: PartitionId,
    pub offset: Offset,
    pub record: Record,
}

/// Reads one partition in offset order from its leader. Call [`Consumer::poll`] in a loop
/// to follow new data: it long-polls the leader, so an idle loop costs one request per
/// `max_wait`.
#[derive(Debug)]
pub struct Consumer {
    client: Arc<ClientInner>,
    topic: String,
    partition: PartitionId,
    position: Offset,
    config: ConsumerConfig,
    high_watermark: Option<Offset>,
    log_start: Option<Offset>,
    resets: u64,
}

impl Consumer {
    pub(crate) fn new(
        client: Arc<ClientInner>,
        topic: String,
        partition: PartitionId,
        position: Offset,
        config: ConsumerConfig,
    ) -> Consumer {
        Consumer { client, topic, partition, position, config, high_watermark: None, log_start: None, resets: 0 }
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition read.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The offset of the next record `poll` returns.
    pub fn position(&self) -> Offset {
        self.position
    }

    /// Moves to `offset`; the next `poll` reads from there.
    pub fn seek(&mut self, offset: Offset) {
        self.position = offset;
    }

    /// Moves to the first record at or after `time_ms` (ms since the Unix epoch).
    pub async fn seek_to_time(&mut self, time_ms: u64) -> Result<Offset> {
        self.position = self.client.offset_for_time(&self.topic, self.partition, time_ms).await?;
        Ok(self.position)
    }

    /// How many times the position was reset by the reset policy.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// The partition's high watermark as of the last poll (every offset below it is
    /// committed).
    pub fn high_watermark(&self) -> Option<Offset> {
        self.high_watermark
    }

    /// The partition's earliest stored offset as of the last poll.
    pub fn log_start_offset(&self) -> Option<Offset> {
        self.log_start
    }

    /// The records from the position on, waiting up to `max_wait` (at most
    /// `limits::FETCH_WAIT_MS_MAX`) for some to be committed; empty when none came. The
    /// position moves past the records returned.
    ///
    /// Every batch's checksum is verified; a corrupt batch fails with `CORRUPT_BATCH`
    /// ([`ClientError::CorruptBatch`]) without moving past it (records before it in the
    /// same answer are returned first). A position outside the stored range (records
    /// deleted by retention) is reset by `ConsumerConfig::offset_reset`, or fails with
    /// `OFFSET_OUT_OF_RANGE` under `OffsetReset::None`.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        let fetched =
            self.client.fetch(&self.topic, self.partition, self.position, self.config.fetch_max_bytes, max_wait);
        let resp = match fetched.await {
            Ok(resp) => resp,
            Err(e)
                if e.code() == Some(ErrorCode::OffsetOutOfRange) && self.config.offset_reset != OffsetReset::None =>
            {
                let (earliest, latest) = self.client.list_offsets(&self.topic, self.partition).await?;
                if (earliest..=latest).contains(&self.position) {
                    // The range moved back over the position meanwhile (a new leader
                    // caught up): nothing to reset.
                    return Ok(Vec::new());
                }
                self.position = match self.config.offset_reset {
                    OffsetReset::Earliest => earliest,
                    _ => latest,
                };
                self.resets += 1;
                self.log_start = Some(earliest);
                self.high_watermark = Some(latest);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        self.high_watermark = Some(resp.high_watermark);
        self.log_start = Some(resp.log_start_offset);
        let (out, next) = records_from(&resp, &self.topic, self.partition, self.position)?;
        self.position = next;
        Ok(out)
    }
}

/// The records of a fetch answer at or after `position`, and the position after them.
/// Every batch's checksum is verified: a corrupt first batch fails with `CORRUPT_BATCH`;
/// a corrupt later one ends the answer before it.
pub(crate) fn records_from(
    resp: &flotilla_proto::v1::FetchResponse,
    topic: &str,
    partition: PartitionId,
    mut position: Offset,
) -> Result<(Vec<ConsumedRecord>, Offset)> {
    let mut out = vec![];
    for fetched in &resp.batches {
        let batch = match fetched.decode() {
            Ok(b) => b,
            Err(e) if out.is_empty() => {
                return Err(ClientError::CorruptBatch {
                    topic: topic.to_string(),
                    partition,
                    base_offset: fetched.base_offset,
                    reason: e.to_string(),
                });
            }
            Err(_) => break,
        };
        let end = fetched.base_offset.saturating_add(u64::from(batch.len()));
        if end <= position {
            continue;
        }
        for (i, record) in batch.records().into_iter().enumerate() {
            let offset = fetched.base_offset + i as u64;
            if offset < position {
                continue;
            }
            out.push(ConsumedRecord { partition, offset, record });
        }
        position = end;
    }
    Ok((out, position))
}
