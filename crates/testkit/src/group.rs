//! A consumer group as a workload, shared by the simulation and chaos suites: members
//! that join, read and commit for a while, then leave, die (dropped without leaving: the
//! group evicts them when their session times out) or turn zombie (stop, and once surely
//! evicted commit their positions at their old epoch, as a paused process would: the
//! group must refuse it). Every poll and commit is recorded for the checker's group
//! checks (docs/checker.md item 9), and [`group_offsets`] records the committed offsets
//! at the end.
//!
//! The group's checks count on the log start staying put: do not run this beside
//! retention or delete-records on the same topic.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_client::GroupConfig;
use tokio::time::Instant;

use crate::history::{Event, Kind, Op, Record};
use crate::recorder::{Actor, Recorder, failure_kind};

/// How a member's session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Commits its positions and leaves the group.
    Leave,
    /// Dropped without a word: evicted when its session times out.
    Die,
    /// Stops, then after `pause` commits its positions at its old epoch.
    Zombie { pause: Duration },
}

/// The random choices of a member, drawn by the suite from its own seed.
pub trait MemberDice: Send {
    /// How long a session reads before it ends.
    fn lifetime(&mut self) -> Duration;
    /// How it ends.
    fn ending(&mut self) -> Ending;
}

/// The group, topic and timings the members use.
#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub group: String,
    pub topic: String,
    /// A member not heard from for this long is evicted.
    pub session_timeout: Duration,
    /// A member's long poll.
    pub poll_wait: Duration,
    /// How often a member commits its positions while it reads.
    pub commit_every: Duration,
}

/// One slot of the group (history process `process`): a member joins, reads and commits
/// for a while, then ends as `dice` says, and the next joins as a new session, while
/// `running()` holds.
pub async fn member(
    rec: Recorder,
    process: u64,
    plan: GroupPlan,
    mut dice: impl MemberDice,
    running: impl Fn() -> bool,
) {
    let mut session = 0;
    while running() {
        session += 1;
        let config = GroupConfig {
            session_timeout: plan.session_timeout,
            // Every commit is the workload's own, so that the history holds them all.
            auto_commit_interval: None,
            fetch_max_wait: plan.poll_wait,
            client_id: format!("m{process}"),
            ..GroupConfig::default()
        };
        let Ok(mut m) = rec.client().group_consumer(&plan.group, &[plan.topic.as_str()], config).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let actor = Actor::new(process, session);
        let until = Instant::now() + dice.lifetime();
        let mut last_commit = Instant::now();
        while Instant::now() < until && running() {
            let records = m.poll(Duration::from_millis(200)).await.unwrap_or_default();
            let grants = m.grants();
            let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
            for r in records {
                let value = String::from_utf8_lossy(&r.record.value).into_owned();
                by_partition.entry(r.partition).or_default().push(Record::at(r.offset, value));
            }
            // What one poll delivered, per partition: an invoke and its ok each, recorded
            // when the poll returned (the checks use the ok's place in the history).
            for (partition, records) in by_partition {
                let epoch = grants.get(&(plan.topic.clone(), partition)).copied().unwrap_or(0);
                let event = |kind| {
                    Event::new(process, session, Op::GroupPoll, kind, 0).on(&plan.topic, partition).note(&plan.group)
                };
                rec.record(event(Kind::Invoke));
                rec.record(event(Kind::Ok).epoch(epoch).records(records));
            }
            if last_commit.elapsed() >= plan.commit_every {
                last_commit = Instant::now();
                let (id, epoch) = (m.member_id().to_string(), m.member_epoch());
                commit(&rec, &plan.group, actor, &id, epoch, m.positions()).await;
            }
        }
        match dice.ending() {
            Ending::Leave => {
                let (id, epoch) = (m.member_id().to_string(), m.member_epoch());
                commit(&rec, &plan.group, actor, &id, epoch, m.positions()).await;
                let _ = m.close().await;
            }
            Ending::Die => drop(m),
            Ending::Zombie { pause } => {
                let (id, epoch, positions) = (m.member_id().to_string(), m.member_epoch(), m.positions());
                drop(m);
                tokio::time::sleep(pause).await;
                commit(&rec, &plan.group, actor, &id, epoch, positions).await;
            }
        }
    }
}

/// Commits each position as member `id` at `epoch`, one partition per request, recorded.
pub async fn commit(
    rec: &Recorder,
    group: &str,
    actor: Actor,
    id: &str,
    epoch: u64,
    positions: BTreeMap<(String, u32), u64>,
) {
    for ((topic, partition), offset) in positions {
        rec.record(
            Event::new(actor.process, actor.session, Op::GroupCommit, Kind::Invoke, 0)
                .on(&topic, partition)
                .note(group)
                .epoch(epoch)
                .offset(offset),
        );
        let done =
            |kind| Event::new(actor.process, actor.session, Op::GroupCommit, kind, 0).on(&topic, partition).note(group);
        match rec.client().commit_offsets(group, Some((id, epoch)), &[((topic.clone(), partition), offset)]).await {
            Ok(c) => {
                let after = c.first().map_or(offset, |(_, o)| *o);
                rec.record(done(Kind::Ok).offset(after));
            }
            Err(e) => {
                rec.record(done(failure_kind(&e)).note(format!("{group}: {e}")));
            }
        }
    }
}

/// Records the group's committed offset of each partition of `topic` at the end, with
/// the partition's log start (history process `process`). Partitions the group never
/// committed, or whose answer did not come, are left out.
pub async fn group_offsets(rec: &Recorder, process: u64, group: &str, topic: &str, partitions: u32) {
    let me = Actor::new(process, 0);
    let Ok(info) = rec.client().describe_group(group).await else { return };
    for partition in 0..partitions {
        let Some(committed) =
            info.partitions.iter().find(|p| p.topic == topic && p.partition == partition).and_then(|p| p.committed)
        else {
            continue;
        };
        let Ok((start, _)) = rec.log_range(me, topic, partition).await else { continue };
        rec.record(
            Event::new(me.process, 0, Op::GroupOffsets, Kind::Invoke, 0).on(topic, partition).note(group).offset(start),
        );
        rec.record(
            Event::new(me.process, 0, Op::GroupOffsets, Kind::Ok, 0).on(topic, partition).note(group).offset(committed),
        );
    }
}
