//! Connects to a Flotilla cluster, creates a topic if it is missing, produces ten keyed
//! records and reads them back.
//!
//! ```text
//! FLOTILLA_BOOTSTRAP=127.0.0.1:7070 cargo run -p flotilla-client --example quickstart
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_client::{Client, ErrorCode, ProducerConfig, Record, RecordExt, StartAt};

const TOPIC: &str = "quickstart";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("FLOTILLA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect(&bootstrap).await?;

    match client.describe_topic(TOPIC).await {
        Ok(t) => println!("topic '{TOPIC}' exists with {} partitions", t.partitions.len()),
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
            let replication = client.metadata().await?.brokers.len().clamp(1, 3) as u32;
            let t = client.create_topic(TOPIC, 3, replication).await?;
            println!("created topic '{TOPIC}' with {} partitions", t.partitions.len());
        }
        Err(e) => return Err(e.into()),
    }

    // Where each partition ends now: we read back from there.
    let partitions = client.partition_count(TOPIC).await?;
    let mut start = BTreeMap::new();
    for p in 0..partitions {
        start.insert(p, client.list_offsets(TOPIC, p).await?.1);
    }

    // Ten records with five keys: records with one key go to one partition, in the order
    // they were queued. `enqueue` returns once a record is queued, so all ten are in
    // flight together (and batched); each `Ack` resolves to the record's place.
    let producer = client.producer(TOPIC, ProducerConfig::default());
    let mut acks = vec![];
    for i in 0..10 {
        let record = Record::value(format!("hello #{i}")).with_key(format!("user-{}", i % 5));
        acks.push(producer.enqueue(record).await?);
    }
    let mut last = BTreeMap::new();
    for ack in acks {
        let (partition, offset) = ack.await?;
        println!("produced to partition {partition} at offset {offset}");
        let end = last.entry(partition).or_insert(offset + 1);
        *end = (*end).max(offset + 1);
    }

    for (&partition, &end) in &last {
        let mut consumer = client.consumer(TOPIC, partition, StartAt::Offset(start[&partition])).await?;
        while consumer.position() < end {
            for r in consumer.poll(Duration::from_secs(1)).await? {
                let key = r.record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                println!(
                    "consumed {partition}/{}: key={key} value={}",
                    r.offset,
                    String::from_utf8_lossy(&r.record.value)
                );
            }
        }
    }
    Ok(())
}
