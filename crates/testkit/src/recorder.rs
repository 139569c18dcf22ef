//! A thin wrapper around the smart client that records every operation it performs into
//! a shared [`History`]: the invoke before the call, then `Ok`, `Fail` (the error is
//! definite: it did not happen) or `Info` (indeterminate, per
//! [`ClientError::is_indeterminate`]).
//!
//! Times are milliseconds since the recorder was made, by tokio's clock: simulated time
//! under turmoil, wall time otherwise. Values are recorded as UTF-8 record values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::{
    Client, ClientError, ConsumerConfig, OffsetReset, ProducerConfig, Record as ClientRecord, StartAt, TopicInfo,
};
use tokio::time::Instant;

use crate::history::{Event, History, Kind, NEMESIS_PROCESS, Op, Record};

/// Who performs an operation: a workload process and its producer or consumer session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Actor {
    pub process: u64,
    pub session: u64,
}

impl Actor {
    pub fn new(process: u64, session: u64) -> Actor {
        Actor { process, session }
    }
}

/// Records a client's operations. Cheap to clone; clones share the history, the start
/// time and the producers.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    history: Arc<Mutex<History>>,
    start: Instant,
    producer_config: ProducerConfig,
    /// One producer per topic, so that creating one per send costs nothing.
    producers: Arc<Mutex<HashMap<String, flotilla_client::Producer>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("client", &self.client).finish_non_exhaustive()
    }
}

/// How a failed operation is recorded: `Info` when it may have happened, else `Fail`.
pub fn failure_kind(e: &ClientError) -> Kind {
    if e.is_indeterminate() { Kind::Info } else { Kind::Fail }
}

impl Recorder {
    /// A recorder with an empty history, its clock starting now, sending with the default
    /// [`ProducerConfig`] (idempotent: it retries after indeterminate errors and appends
    /// once, so sends are recorded with `retries: false` and duplicates are anomalies).
    pub fn new(client: Client) -> Recorder {
        Recorder::with_producer_config(client, ProducerConfig::default())
    }

    /// [`Recorder::new`] with the producer settings its sends use.
    pub fn with_producer_config(client: Client, producer_config: ProducerConfig) -> Recorder {
        Recorder {
            client,
            history: Arc::new(Mutex::new(History::new())),
            start: Instant::now(),
            producer_config,
            producers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A recorder writing into an existing `history` (one the simulator's nemesis also
    /// writes into), its times measured from `start`.
    pub fn with_history(
        client: Client,
        producer_config: ProducerConfig,
        history: Arc<Mutex<History>>,
        start: Instant,
    ) -> Recorder {
        Recorder { client, history, start, producer_config, producers: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// This recorder with other producer settings (same client, history and clock).
    pub fn with_producer_settings(&self, producer_config: ProducerConfig) -> Recorder {
        Recorder { producer_config, producers: Arc::new(Mutex::new(HashMap::new())), ..self.clone() }
    }

    /// A recorder for another client (another simulated host, say) writing into the same
    /// history with the same clock and producer settings.
    pub fn for_client(&self, client: Client) -> Recorder {
        Recorder {
            client,
            history: self.history.clone(),
            start: self.start,
            producer_config: self.producer_config.clone(),
            producers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The client operations go through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Milliseconds since the recorder was made.
    pub fn time_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Appends `event` with its time set to now; its index.
    pub fn record(&self, mut event: Event) -> usize {
        event.time_ms = self.time_ms();
        self.history.lock().expect("history lock").push(event)
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.history.lock().expect("history lock").clone()
    }

    fn event(&self, actor: Actor, op: Op, kind: Kind) -> Event {
        Event::new(actor.process, actor.session, op, kind, 0)
    }

    fn producer(&self, topic: &str) -> flotilla_client::Producer {
        let mut producers = self.producers.lock().expect("producers lock");
        producers
            .entry(topic.to_string())
            .or_insert_with(|| self.client.producer(topic, self.producer_config.clone()))
            .clone()
    }

    /// Records the completion of a failed operation.
    fn failed(&self, actor: Actor, op: Op, topic: &str, partition: u32, e: &ClientError) {
        self.record(self.event(actor, op, failure_kind(e)).on(topic, partition).note(e.to_string()));
    }

    /// Sends `values` as one batch to `partition`; the offset of each value.
    pub async fn send(
        &self,
        actor: Actor,
        topic: &str,
        partition: u32,
        values: Vec<String>,
    ) -> Result<Vec<u64>, ClientError> {
        // Duplicates are allowed only where a retry may write a batch twice: an
        // idempotent producer's retries append once.
        let retries = !self.producer_config.idempotent && self.producer_config.retry_indeterminate;
        self.record(
            self.event(actor, Op::Send, Kind::Invoke).on(topic, partition).values(values.clone()).retries(retries),
        );
        let records = values.iter().map(|v| ClientRecord::value(v.clone().into_bytes())).collect();
        match self.producer(topic).send_batch(partition, records).await {
            Ok(base) => {
                self.record(
                    self.event(actor, Op::Send, Kind::Ok).on(topic, partition).records_from(base, values.clone()),
                );
                Ok((base..).take(values.len()).collect())
            }
            Err(e) => {
                self.failed(actor, Op::Send, topic, partition, &e);
                Err(e)
            }
        }
    }

    /// One fetch of `partition` from `offset`, waiting up to `max_wait` for records; the
    /// records read (with their offsets).
    pub async fn poll(
        &self,
        actor: Actor,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
    ) -> Result<Vec<Record>, ClientError> {
        self.fetch(actor, topic, partition, offset, max_wait, false).await
    }

    /// [`Recorder::poll`] as part of the final drain after every fault healed.
    pub async fn drain(
        &self,
        actor: Actor,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
    ) -> Result<Vec<Record>, ClientError> {
        self.fetch(actor, topic, partition, offset, max_wait, true).await
    }

    async fn fetch(
        &self,
        actor: Actor,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        final_drain: bool,
    ) -> Result<Vec<Record>, ClientError> {
        let invoke = self.event(actor, Op::Poll, Kind::Invoke).on(topic, partition).offset(offset);
        self.record(invoke.final_drain(final_drain));
        let read = async {
            // A position below the log start is an error here, not a reset: the history
            // says where each read started.
            let config = ConsumerConfig { offset_reset: OffsetReset::None, ..ConsumerConfig::default() };
            let mut consumer = self.client.consumer_with(topic, partition, StartAt::Offset(offset), config).await?;
            consumer.poll(max_wait).await
        };
        match read.await {
            Ok(consumed) => {
                let records: Vec<Record> = consumed
                    .into_iter()
                    .map(|c| Record::at(c.offset, String::from_utf8_lossy(&c.record.value).into_owned()))
                    .collect();
                let ok = self.event(actor, Op::Poll, Kind::Ok).on(topic, partition).offset(offset);
                self.record(ok.records(records.clone()).final_drain(final_drain));
                Ok(records)
            }
            Err(e) => {
                self.failed(actor, Op::Poll, topic, partition, &e);
                Err(e)
            }
        }
    }

    /// The latest offset (high watermark) of `partition`.
    pub async fn list_offsets(&self, actor: Actor, topic: &str, partition: u32) -> Result<u64, ClientError> {
        self.record(self.event(actor, Op::ListOffsets, Kind::Invoke).on(topic, partition));
        match self.client.list_offsets(topic, partition).await {
            Ok((earliest, latest)) => {
                let ok = self.event(actor, Op::ListOffsets, Kind::Ok).on(topic, partition).offset(latest);
                self.record(ok.note(format!("earliest {earliest}")));
                Ok(latest)
            }
            Err(e) => {
                self.failed(actor, Op::ListOffsets, topic, partition, &e);
                Err(e)
            }
        }
    }

    /// The log start of `partition`, recorded as a delete-records up to it: for topics
    /// with retention, whose records below the log start the cluster deleted on its own.
    /// The checker then counts them deleted, not lost, and lets a reader skip to it.
    pub async fn retention_seen(&self, actor: Actor, topic: &str, partition: u32) -> Result<u64, ClientError> {
        let (start, _) = self.log_range(actor, topic, partition).await?;
        let event = |kind| self.event(actor, Op::DeleteRecords, kind).on(topic, partition).offset(start);
        self.record(event(Kind::Invoke).note("retention: the log start seen"));
        self.record(event(Kind::Ok));
        Ok(start)
    }

    /// The log start and high watermark of `partition`.
    pub async fn log_range(&self, actor: Actor, topic: &str, partition: u32) -> Result<(u64, u64), ClientError> {
        self.record(self.event(actor, Op::ListOffsets, Kind::Invoke).on(topic, partition));
        match self.client.list_offsets(topic, partition).await {
            Ok((earliest, latest)) => {
                let ok = self.event(actor, Op::ListOffsets, Kind::Ok).on(topic, partition).offset(latest);
                self.record(ok.note(format!("earliest {earliest}")));
                Ok((earliest, latest))
            }
            Err(e) => {
                self.failed(actor, Op::ListOffsets, topic, partition, &e);
                Err(e)
            }
        }
    }

    /// Deletes the records of `partition` below `before`; the new log start.
    pub async fn delete_records(
        &self,
        actor: Actor,
        topic: &str,
        partition: u32,
        before: u64,
    ) -> Result<u64, ClientError> {
        self.record(self.event(actor, Op::DeleteRecords, Kind::Invoke).on(topic, partition).offset(before));
        match self.client.delete_records(topic, partition, before).await {
            Ok(start) => {
                self.record(self.event(actor, Op::DeleteRecords, Kind::Ok).on(topic, partition).offset(start));
                Ok(start)
            }
            Err(e) => {
                self.failed(actor, Op::DeleteRecords, topic, partition, &e);
                Err(e)
            }
        }
    }

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        actor: Actor,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<TopicInfo, ClientError> {
        let note = format!("{partitions} partitions, replication factor {replication_factor}");
        self.record(self.event(actor, Op::CreateTopic, Kind::Invoke).on(name, 0).note(note));
        match self.client.create_topic(name, partitions, replication_factor).await {
            Ok(info) => {
                self.record(self.event(actor, Op::CreateTopic, Kind::Ok).on(name, 0));
                Ok(info)
            }
            Err(e) => {
                self.failed(actor, Op::CreateTopic, name, 0, &e);
                Err(e)
            }
        }
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, actor: Actor, name: &str) -> Result<(), ClientError> {
        self.record(self.event(actor, Op::DeleteTopic, Kind::Invoke).on(name, 0));
        match self.client.delete_topic(name).await {
            Ok(()) => {
                self.record(self.event(actor, Op::DeleteTopic, Kind::Ok).on(name, 0));
                Ok(())
            }
            Err(e) => {
                self.failed(actor, Op::DeleteTopic, name, 0, &e);
                Err(e)
            }
        }
    }

    /// Records a fault the nemesis injected (process [`NEMESIS_PROCESS`]); its index.
    pub fn fault(&self, note: impl Into<String>, nodes: Vec<u64>) -> usize {
        self.record(Event::fault(NEMESIS_PROCESS, 0, note, nodes))
    }

    /// Records that the nemesis healed faults; its index.
    pub fn heal(&self, note: impl Into<String>) -> usize {
        self.record(Event::heal(NEMESIS_PROCESS, 0, note))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_recorded_as_fail_or_info() {
        let refused = ClientError::Connect { addr: "n1".into(), message: "connection refused".into() };
        assert_eq!(failure_kind(&refused), Kind::Fail);
        let timeout = ClientError::Timeout { addr: "n1".into(), after: Duration::from_secs(1) };
        assert_eq!(failure_kind(&timeout), Kind::Info);
        let gave_up = ClientError::GaveUp {
            attempts: 2,
            elapsed: Duration::from_secs(3),
            maybe_applied: true,
            last: Box::new(refused),
        };
        assert_eq!(failure_kind(&gave_up), Kind::Info, "an earlier attempt may have been applied");
    }
}
