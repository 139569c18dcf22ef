//! Replica divergence, judged per replica (docs/checker.md item 10): at the end of a
//! scenario every replica of every partition is read on its own node (a follower fetch
//! of what that node has committed and applied, `Client::read_replica`), and testkit's
//! `check_replicas` compares each pair below the lower of their commit offsets. The
//! history checker sees only what clients were answered; this sees what each disk holds.

use std::time::{Duration, Instant};

use flotilla_client::Client;
use flotilla_testkit::replica::read_replica_log;
use flotilla_testkit::{Anomaly, ReplicaLog, check_replicas};

use crate::cluster::{Cluster, State};

/// How long a replica may stay unreadable (a follower that has not heard from its leader
/// yet answers NOT_LEADER) before the scenario fails for it.
const READ_WITHIN: Duration = Duration::from_secs(20);

/// What the comparison found: anomalies, replicas read, and replicas that could not be.
pub struct Outcome {
    pub anomalies: Vec<Anomaly>,
    pub read: Vec<String>,
    pub unreadable: Vec<String>,
}

/// Reads every replica of every partition of `topic` and compares them.
pub async fn compare(client: &Client, cluster: &Cluster, topic: &str, partitions: u32) -> Outcome {
    let mut logs = vec![];
    let mut read = vec![];
    let mut unreadable = vec![];
    for p in 0..partitions {
        let replicas = match client.describe_topic(topic).await {
            Ok(t) => t.partitions.get(p as usize).map(|i| i.replicas.clone()).unwrap_or_default(),
            Err(e) => {
                unreadable.push(format!("partition {p}: its replicas unknown ({e})"));
                continue;
            }
        };
        for node in replicas {
            if cluster.state(node) != State::Running {
                unreadable.push(format!("n{node} of partition {p}: not running"));
                continue;
            }
            match read_one(client, node, &cluster.addr(node), topic, p).await {
                Ok(log) => {
                    read.push(format!("n{node}/{p}: {} records below {}", log.records.len(), log.commit_offset));
                    logs.push(log);
                }
                Err(e) => unreadable.push(format!("n{node} of partition {p}: {e}")),
            }
        }
    }
    Outcome { anomalies: check_replicas(&logs), read, unreadable }
}

/// One replica's committed log from the partition's log start, retried for a while.
async fn read_one(client: &Client, node: u64, addr: &str, topic: &str, p: u32) -> anyhow::Result<ReplicaLog> {
    let deadline = Instant::now() + READ_WITHIN;
    loop {
        // From the partition's log start as its leader reports it: a replica's own is
        // not above it (the leader applies a deletion first).
        let attempt = async {
            let (start, _) = client.list_offsets(topic, p).await?;
            read_replica_log(client, node, addr, topic, p, start).await
        };
        match attempt.await {
            Ok(log) => return Ok(log),
            Err(e) if Instant::now() > deadline => anyhow::bail!("not read within {READ_WITHIN:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
