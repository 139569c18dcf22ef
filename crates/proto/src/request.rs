//! Checked requests: what a node's service sees after the wire request has been
//! validated. Each `TryFrom<v1::…Request>` rejects junk with the [`v1::Error`] to answer,
//! so nothing past the `rpc` crate ever sees an unchecked name, count or batch.
//!
//! Sizes the client may ask for (`max_bytes`, `max_wait_ms`) are clamped to their limits
//! rather than refused, as `flotilla_types::limits` documents.

use std::time::Duration;

use flotilla_types::{ErrorCode, Offset, PartitionId, RecordBatch, limits};

use crate::v1;

fn invalid(message: impl Into<String>) -> v1::Error {
    v1::Error::new(ErrorCode::InvalidRequest, message)
}

fn topic_name(name: String) -> Result<String, v1::Error> {
    limits::check_topic_name(&name).map_err(invalid)?;
    Ok(name)
}

/// A produce request whose batch has been verified (checksum, structure, limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produce {
    pub topic: String,
    pub partition: PartitionId,
    pub batch: RecordBatch,
}

impl TryFrom<v1::ProduceRequest> for Produce {
    type Error = v1::Error;
    fn try_from(r: v1::ProduceRequest) -> Result<Produce, v1::Error> {
        let topic = topic_name(r.topic)?;
        let batch = RecordBatch::decode(r.batch).map_err(|e| v1::Error::from(&e))?;
        Ok(Produce { topic, partition: r.partition, batch })
    }
}

impl v1::ProduceRequest {
    /// The wire request for `batch`.
    pub fn new(topic: impl Into<String>, partition: PartitionId, batch: &RecordBatch) -> v1::ProduceRequest {
        v1::ProduceRequest { topic: topic.into(), partition, batch: batch.bytes().clone() }
    }
}

/// A fetch with its byte budget and wait clamped to the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub topic: String,
    pub partition: PartitionId,
    pub offset: Offset,
    /// At most `FETCH_BYTES_MAX`; at least one batch is returned whatever this says.
    pub max_bytes: usize,
    /// At most `FETCH_WAIT_MS_MAX`.
    pub max_wait: Duration,
}

impl TryFrom<v1::FetchRequest> for Fetch {
    type Error = v1::Error;
    fn try_from(r: v1::FetchRequest) -> Result<Fetch, v1::Error> {
        Ok(Fetch {
            topic: topic_name(r.topic)?,
            partition: r.partition,
            offset: r.offset,
            max_bytes: (r.max_bytes as usize).min(limits::FETCH_BYTES_MAX),
            max_wait: Duration::from_millis(u64::from(r.max_wait_ms).min(limits::FETCH_WAIT_MS_MAX)),
        })
    }
}

/// One partition named by a request (ListOffsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: PartitionId,
}

impl TryFrom<v1::ListOffsetsRequest> for TopicPartition {
    type Error = v1::Error;
    fn try_from(r: v1::ListOffsetsRequest) -> Result<TopicPartition, v1::Error> {
        Ok(TopicPartition { topic: topic_name(r.topic)?, partition: r.partition })
    }
}

/// Which topics a Metadata request asks about; an empty list means every topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataQuery {
    pub topics: Vec<String>,
}

impl TryFrom<v1::MetadataRequest> for MetadataQuery {
    type Error = v1::Error;
    fn try_from(r: v1::MetadataRequest) -> Result<MetadataQuery, v1::Error> {
        if r.topics.len() > limits::TOPICS_MAX {
            return Err(invalid(format!("{} topics asked for, the limit is {}", r.topics.len(), limits::TOPICS_MAX)));
        }
        let topics = r.topics.into_iter().map(topic_name).collect::<Result<_, _>>()?;
        Ok(MetadataQuery { topics })
    }
}

/// A topic to create, its counts within the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    /// `1..=TOPIC_PARTITIONS_MAX`.
    pub partitions: u32,
    /// `1..=REPLICATION_FACTOR_MAX`.
    pub replication_factor: u32,
}

impl CreateTopic {
    /// Checks the name and counts; the same checks a node applies.
    pub fn new(name: impl Into<String>, partitions: u32, replication_factor: u32) -> Result<CreateTopic, v1::Error> {
        let name = topic_name(name.into())?;
        if partitions == 0 || partitions > limits::TOPIC_PARTITIONS_MAX {
            return Err(invalid(format!(
                "{partitions} partitions requested; a topic has 1 to {} partitions",
                limits::TOPIC_PARTITIONS_MAX
            )));
        }
        if replication_factor == 0 || replication_factor > limits::REPLICATION_FACTOR_MAX {
            return Err(invalid(format!(
                "replication factor {replication_factor} requested; it must be 1 to {}",
                limits::REPLICATION_FACTOR_MAX
            )));
        }
        Ok(CreateTopic { name, partitions, replication_factor })
    }
}

impl TryFrom<v1::CreateTopicRequest> for CreateTopic {
    type Error = v1::Error;
    fn try_from(r: v1::CreateTopicRequest) -> Result<CreateTopic, v1::Error> {
        CreateTopic::new(r.name, r.partitions, r.replication_factor)
    }
}

impl From<&CreateTopic> for v1::CreateTopicRequest {
    fn from(c: &CreateTopic) -> v1::CreateTopicRequest {
        v1::CreateTopicRequest {
            name: c.name.clone(),
            partitions: c.partitions,
            replication_factor: c.replication_factor,
        }
    }
}

/// A request naming one topic (DeleteTopic, DescribeTopic), its name checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName(pub String);

impl TryFrom<v1::DeleteTopicRequest> for TopicName {
    type Error = v1::Error;
    fn try_from(r: v1::DeleteTopicRequest) -> Result<TopicName, v1::Error> {
        Ok(TopicName(topic_name(r.name)?))
    }
}

impl TryFrom<v1::DescribeTopicRequest> for TopicName {
    type Error = v1::Error;
    fn try_from(r: v1::DescribeTopicRequest) -> Result<TopicName, v1::Error> {
        Ok(TopicName(topic_name(r.name)?))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flotilla_types::Record;

    use super::*;

    #[test]
    fn produce_verifies_the_batch() {
        let batch = RecordBatch::encode(&[Record::value("v")]).unwrap();
        let ok = Produce::try_from(v1::ProduceRequest::new("t", 1, &batch)).unwrap();
        assert_eq!(ok.batch, batch);
        assert_eq!(ok.partition, 1);

        let mut bad = batch.bytes().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = Produce::try_from(v1::ProduceRequest { topic: "t".into(), partition: 0, batch: Bytes::from(bad) })
            .unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::CorruptBatch);
        assert!(e.message.contains("checksum"), "{e}");

        let e =
            Produce::try_from(v1::ProduceRequest { topic: "a/b".into(), partition: 0, batch: batch.bytes().clone() })
                .unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::InvalidRequest);
        let e =
            Produce::try_from(v1::ProduceRequest { topic: "t".into(), partition: 0, batch: Bytes::new() }).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::CorruptBatch);
    }

    #[test]
    fn fetch_sizes_are_clamped() {
        let f = Fetch::try_from(v1::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            max_bytes: u32::MAX,
            max_wait_ms: u32::MAX,
        })
        .unwrap();
        assert_eq!(f.max_bytes, limits::FETCH_BYTES_MAX);
        assert_eq!(f.max_wait, Duration::from_millis(limits::FETCH_WAIT_MS_MAX));
        assert!(Fetch::try_from(v1::FetchRequest::default()).is_err(), "empty topic name");
    }

    #[test]
    fn create_topic_counts_are_checked() {
        assert!(CreateTopic::new("t", 1, 3).is_ok());
        for (p, rf) in [(0, 3), (limits::TOPIC_PARTITIONS_MAX + 1, 3), (1, 0), (1, limits::REPLICATION_FACTOR_MAX + 1)]
        {
            let e = CreateTopic::new("t", p, rf).unwrap_err();
            assert_eq!(e.error_code(), ErrorCode::InvalidRequest, "{p} {rf}");
        }
        let e = CreateTopic::try_from(v1::CreateTopicRequest { name: "".into(), partitions: 1, replication_factor: 1 });
        assert!(e.unwrap_err().message.contains("empty"));
    }

    #[test]
    fn metadata_query_checks_names() {
        assert_eq!(MetadataQuery::try_from(v1::MetadataRequest::default()).unwrap().topics.len(), 0);
        assert!(MetadataQuery::try_from(v1::MetadataRequest { topics: vec!["ok".into(), "no way".into()] }).is_err());
        assert!(TopicName::try_from(v1::DeleteTopicRequest { name: "x".into() }).is_ok());
        assert!(TopicName::try_from(v1::DescribeTopicRequest { name: "".into() }).is_err());
    }
}
