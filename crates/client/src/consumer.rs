//! Reading one partition.

use std::time::Duration;

use flotilla_types::{Offset, PartitionId, Record};
use serde::Serialize;

use crate::client::Client;
use crate::config::ConsumerConfig;
use crate::error::{ClientError, Result};

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StartAt {
    /// The earliest offset still stored.
    Beginning,
    /// This offset.
    Offset(Offset),
    /// The high watermark when the consumer is created: only records written later.
    End,
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
    client: Client,
    topic: String,
    partition: PartitionId,
    position: Offset,
    config: ConsumerConfig,
    high_watermark: Option<Offset>,
    log_start: Option<Offset>,
}

impl Consumer {
    pub(crate) fn new(
        client: Client,
        topic: String,
        partition: PartitionId,
        position: Offset,
        config: ConsumerConfig,
    ) -> Consumer {
        Consumer { client, topic, partition, position, config, high_watermark: None, log_start: None }
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
    /// same answer are returned first). A position outside the stored range fails with
    /// `OFFSET_OUT_OF_RANGE`; `seek` to recover.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        let resp = self
            .client
            .inner
            .fetch(&self.topic, self.partition, self.position, self.config.fetch_max_bytes, max_wait)
            .await?;
        self.high_watermark = Some(resp.high_watermark);
        self.log_start = Some(resp.log_start_offset);
        let mut out = vec![];
        for fetched in &resp.batches {
            let batch = match fetched.decode() {
                Ok(b) => b,
                Err(e) if out.is_empty() => {
                    return Err(ClientError::CorruptBatch {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        base_offset: fetched.base_offset,
                        reason: e.to_string(),
                    });
                }
                Err(_) => break,
            };
            let end = fetched.base_offset.saturating_add(u64::from(batch.len()));
            if end <= self.position {
                continue;
            }
            for (i, record) in batch.records().into_iter().enumerate() {
                let offset = fetched.base_offset + i as u64;
                if offset < self.position {
                    continue;
                }
                out.push(ConsumedRecord { partition: self.partition, offset, record });
            }
            self.position = end;
        }
        Ok(out)
    }
}
