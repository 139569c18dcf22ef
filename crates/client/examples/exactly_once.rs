//! An exactly-once producer: a named, idempotent producer writes a numbered stream of
//! records. Every batch carries the producer's id, epoch and sequence, so a batch the
//! client retries after a lost answer (a timeout, a dropped connection, a leader that
//! changed) is written once. The name fences: start a second copy of this program and the
//! first one's next send fails with PRODUCER_FENCED instead of interleaving with it.
//!
//! ```text
//! FLOTILLA_BOOTSTRAP=127.0.0.1:7070 cargo run -p flotilla-client --example exactly_once
//! ```
//!
//! Kafka equivalents: `ProducerConfig::idempotent` is `enable.idempotence` (on by
//! default), `ProducerConfig::name` is `transactional.id` (used here for fencing only),
//! `delivery_timeout` is `delivery.timeout.ms`, `linger` is `linger.ms`,
//! `max_batch_bytes` is `batch.size`.

use std::time::Duration;

use flotilla_client::{Client, ErrorCode, ProducerConfig, Record};

const TOPIC: &str = "exactly-once";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("FLOTILLA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect(&bootstrap).await?;
    if let Err(e) = client.create_topic(TOPIC, 1, client.metadata().await?.brokers.len().clamp(1, 3) as u32).await
        && e.code() != Some(ErrorCode::TopicExists)
    {
        return Err(e.into());
    }

    let config = ProducerConfig {
        name: Some("exactly-once-example".into()),
        linger: Duration::from_millis(5),
        delivery_timeout: Some(Duration::from_secs(120)),
        ..ProducerConfig::default()
    };
    let producer = client.producer(TOPIC, config);
    for i in 0..1_000u32 {
        // Retries (after timeouts, lost connections, leader changes) are the client's:
        // each record is in the partition once, in this order.
        match producer.send_to(0, Record::value(format!("record {i}"))).await {
            Ok(offset) if i % 100 == 0 => println!("record {i} at offset {offset}"),
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::ProducerFenced) => {
                println!("fenced by a newer instance of this producer: stopping");
                return Ok(());
            }
            // The delivery timeout passed while the outcome was unknown: the record is in
            // the partition once or not at all, never twice.
            Err(e) if e.is_indeterminate() => println!("record {i}: unknown outcome: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
