//! Node-level heartbeats: a fast failure detector for dead processes. Every node pings
//! every other registered node (one small message per pair, whatever the number of
//! groups they share) and judges a peer **down** once `DOWN_AFTER_REFUSALS` pings in a
//! row found nothing accepting connections at its address (connection refused), which
//! is what a node killed or crashed looks like within milliseconds: its connections
//! break, and the redial is refused. A broken or closed connection alone proves nothing
//! (an HTTP/2 error on a busy link closes one too): it only makes the next ping come
//! sooner, to redial. A ping that merely gets no answer in time proves nothing either (a
//! loaded node, a paused one, a lossy link) and changes nothing here: those are judged by
//! the metadata leader's lease (`suspect-after-ms`), as before. So load cannot make a
//! peer "down".
//!
//! A peer judged down counts as gone for the partition groups it leads
//! (`mover::wake_election` starts the take-over at once instead of waiting for the lease)
//! and, on the metadata leader, is recorded suspected. One answer clears the judgement.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_metadata::AdminState;
use flotilla_raft::{RaftTransport, TransportError};
use flotilla_types::NodeId;
use tokio::time::Instant;

use crate::Node;

/// How often each peer is pinged.
pub(crate) const PING_EVERY: Duration = Duration::from_millis(200);
/// How soon a peer whose last ping failed outright is pinged again (a reset connection
/// fails once; the redial then tells whether anything listens).
const RECHECK_AFTER: Duration = Duration::from_millis(20);
/// How long a ping may wait for its answer (no answer changes no judgement).
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Outright failures in a row that make a peer down.
pub(crate) const DOWN_AFTER_REFUSALS: u32 = 2;

/// What one ping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ping {
    /// The peer's process answered (whatever it said).
    Answered,
    /// Nothing accepted the connection.
    Refused,
    /// The call failed without an answer otherwise: the connection broke or was closed.
    Broken,
    /// No answer in time.
    Silent,
}

impl Ping {
    pub(crate) fn of(r: &Result<(), TransportError>) -> Ping {
        match r {
            Ok(()) => Ping::Answered,
            Err(TransportError::Refused(..)) => Ping::Refused,
            Err(TransportError::Unreachable(..)) => Ping::Broken,
            Err(TransportError::Timeout(_)) => Ping::Silent,
        }
    }
}

/// Outright failures in a row after one more ping (the pure judgement).
pub(crate) fn refusals_after(refusals: u32, ping: Ping) -> u32 {
    match ping {
        Ping::Answered => 0,
        Ping::Refused => refusals.saturating_add(1),
        Ping::Silent | Ping::Broken => refusals,
    }
}

/// What this node's pings say of each peer.
#[derive(Default)]
pub(crate) struct PeerWatch {
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    /// Notified when a peer is newly judged down (the mover, its one waiter, acts at once).
    pub(crate) went_down: tokio::sync::Notify,
}

/// What this node's pings found of one peer.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// Outright failures in a row.
    refusals: u32,
    /// What the last ping found.
    last: Ping,
    /// When it last answered.
    answered: Option<Instant>,
    /// When it last answered after having been judged down (it came back: a restart).
    returned: Option<Instant>,
}

impl PeerWatch {
    /// Whether `peer`'s process is gone, as this node's own pings say.
    pub(crate) fn down(&self, peer: NodeId) -> bool {
        self.peers.lock().expect("peer watch poisoned").get(&peer).is_some_and(|p| p.refusals >= DOWN_AFTER_REFUSALS)
    }

    /// Whether `peer` answered a ping within `within`: evidence that its process runs
    /// and reaches this node, whatever the metadata leader's lease says.
    pub(crate) fn answered_within(&self, peer: NodeId, within: Duration) -> bool {
        self.answered_ago(peer).is_some_and(|ago| ago <= within)
    }

    /// The peers judged down now.
    pub(crate) fn down_set(&self) -> std::collections::BTreeSet<NodeId> {
        let peers = self.peers.lock().expect("peer watch poisoned");
        peers.iter().filter(|(_, p)| p.refusals >= DOWN_AFTER_REFUSALS).map(|(id, _)| *id).collect()
    }

    /// Records one round of pings; returns the peers newly judged down. Peers not in
    /// `results` are forgotten (no longer registered).
    fn record(&self, results: &[(NodeId, Ping)]) -> Vec<NodeId> {
        let now = Instant::now();
        let mut peers = self.peers.lock().expect("peer watch poisoned");
        peers.retain(|id, _| results.iter().any(|(p, _)| p == id));
        let mut newly_down = vec![];
        for (peer, ping) in results {
            let p = peers.entry(*peer).or_insert(Peer { refusals: 0, last: *ping, answered: None, returned: None });
            let before = p.refusals;
            let after = refusals_after(before, *ping);
            if *ping == Ping::Answered {
                p.answered = Some(now);
            }
            if before < DOWN_AFTER_REFUSALS && after >= DOWN_AFTER_REFUSALS {
                newly_down.push(*peer);
            } else if before >= DOWN_AFTER_REFUSALS && after == 0 {
                tracing::info!(peer, "node answers again");
                p.returned = Some(now);
            }
            (p.refusals, p.last) = (after, *ping);
        }
        newly_down
    }

    /// How long ago `peer` last answered one of this node's pings (none: never).
    pub(crate) fn answered_ago(&self, peer: NodeId) -> Option<Duration> {
        self.peers.lock().expect("peer watch poisoned").get(&peer).and_then(|p| p.answered).map(|t| t.elapsed())
    }

    /// When `peer` last answered again after being judged down (it restarted, or came
    /// back from a cut): its replicas of quiet groups need their leaders' keepalives now.
    pub(crate) fn returned_at(&self, peer: NodeId) -> Option<Instant> {
        self.peers.lock().expect("peer watch poisoned").get(&peer).and_then(|p| p.returned)
    }

    /// Whether any peer has refused but is not judged down yet, or its connection just
    /// broke (ping it again soon).
    fn undecided(&self) -> bool {
        self.peers
            .lock()
            .expect("peer watch poisoned")
            .values()
            .any(|p| (1..DOWN_AFTER_REFUSALS).contains(&p.refusals) || p.last == Ping::Broken)
    }
}

/// Pings every other registered node every `PING_EVERY`, sooner while one is undecided,
/// and at once (at most every `RECHECK_AFTER`) when any of this node's calls to a peer
/// failed outright: a killed node's connections are reset under every group's traffic
/// within milliseconds, long before the next round.
pub(crate) async fn ping_loop<T: RaftTransport>(node: Node<T>) {
    let mut shutdown = node.shutdown_signal();
    let refusals = node.groups().router().refusals().clone();
    let mut next_round = tokio::time::Instant::now() + PING_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_round) => {}
            _ = refusals.notified() => {
                // Only news about a peer not yet judged down is worth a round now.
                let refused = node.groups().router().take_refused();
                if refused.iter().all(|p| node.peer_down(*p)) {
                    continue;
                }
                tokio::time::sleep(RECHECK_AFTER).await;
            }
            _ = shutdown.changed() => return,
        }
        // Only peers whose address this node knows (the reconciler learns it from the
        // metadata): a call that cannot be addressed proves nothing about the peer.
        let me = node.id();
        let peers: Vec<NodeId> = node.with_metadata(|m| {
            m.brokers()
                .values()
                .filter(|b| b.id != me && b.admin != AdminState::Removed && node.addresses().get(b.id).is_some())
                .map(|b| b.id)
                .collect()
        });
        let pings = peers.iter().map(|p| node.groups().ping(*p, PING_TIMEOUT));
        let results: Vec<(NodeId, Ping)> =
            peers.iter().copied().zip(futures::future::join_all(pings).await.iter().map(Ping::of)).collect();
        let newly_down = node.inner.peers.record(&results);
        node.groups().router().set_down(node.inner.peers.down_set());
        if !newly_down.is_empty() {
            tracing::warn!(peers = ?newly_down, "node-level heartbeat: connection refused, taken for down");
            node.inner.peers.went_down.notify_one();
            node.inner.controller_kick.notify_one();
        }
        let wait = if node.inner.peers.undecided() { RECHECK_AFTER } else { PING_EVERY };
        next_round = tokio::time::Instant::now() + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outright_failures_in_a_row_make_a_peer_down_and_one_answer_clears_it() {
        use Ping::*;
        // (pings in order) → down at the end
        let table: [(&[Ping], bool); 10] = [
            (&[Refused], false),
            (&[Refused, Refused], true),
            (&[Refused, Silent, Refused], true), // silence neither counts nor clears
            (&[Silent, Silent, Silent, Silent], false), // a loaded or paused node is never down here
            (&[Refused, Answered, Refused], false),
            (&[Refused, Refused, Answered], false),
            (&[Refused, Refused, Refused, Silent], true),
            // A connection closed under load (an HTTP/2 error on a busy link) is no
            // evidence: it neither counts nor clears. A killed node's broken connection
            // is followed by refused redials.
            (&[Broken, Broken, Broken, Broken], false),
            (&[Broken, Refused, Refused], true),
            (&[Refused, Broken, Refused], true),
        ];
        for (pings, want) in table {
            let watch = PeerWatch::default();
            for p in pings {
                watch.record(&[(7, *p)]);
            }
            assert_eq!(watch.down(7), want, "{pings:?}");
        }
    }

    /// What quiet groups rely on instead of a keepalive per group: when each peer last
    /// answered, and when it came back after being judged down.
    #[tokio::test(start_paused = true)]
    async fn answers_and_returns_are_timed() {
        let watch = PeerWatch::default();
        assert_eq!(watch.answered_ago(2), None);
        watch.record(&[(2, Ping::Answered)]);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(watch.answered_ago(2), Some(Duration::from_secs(3)));
        watch.record(&[(2, Ping::Silent)]);
        assert_eq!(watch.answered_ago(2), Some(Duration::from_secs(3)), "silence is no answer");
        assert_eq!(watch.returned_at(2), None, "never down");
        watch.record(&[(2, Ping::Refused)]);
        watch.record(&[(2, Ping::Refused)]);
        assert!(watch.down(2));
        assert_eq!(watch.returned_at(2), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let back = Instant::now();
        watch.record(&[(2, Ping::Answered)]);
        assert_eq!(watch.returned_at(2), Some(back));
        assert_eq!(watch.answered_ago(2), Some(Duration::ZERO));
        watch.record(&[(3, Ping::Answered)]);
        assert_eq!(watch.answered_ago(2), None, "forgotten once no longer registered");
    }

    /// Regression (10,000 partitions, a killed node restarted): under load a node's
    /// metadata heartbeats came late, the metadata leader suspected it, and the others
    /// took over its thousands of quiet groups though it answered them. An answer to this
    /// node's own heartbeats is kept as evidence that the peer lives.
    #[tokio::test(start_paused = true)]
    async fn an_answer_is_evidence_for_as_long_as_asked() {
        let watch = PeerWatch::default();
        let d = Duration::from_millis(1500);
        assert!(!watch.answered_within(2, d), "never answered");
        watch.record(&[(2, Ping::Answered), (3, Ping::Silent)]);
        assert!(watch.answered_within(2, d));
        assert!(!watch.answered_within(3, d), "silence is no answer");
        tokio::time::advance(Duration::from_millis(1000)).await;
        watch.record(&[(2, Ping::Silent), (3, Ping::Silent)]);
        assert!(watch.answered_within(2, d), "one late ping does not erase the answer before it");
        tokio::time::advance(Duration::from_millis(501)).await;
        assert!(!watch.answered_within(2, d), "silent longer than asked");
        watch.record(&[(3, Ping::Answered)]);
        assert!(!watch.answered_within(2, d), "forgotten once no longer registered");
    }

    #[test]
    fn a_peer_is_reported_newly_down_once_and_forgotten_when_unregistered() {
        let watch = PeerWatch::default();
        assert!(watch.record(&[(2, Ping::Refused), (3, Ping::Answered)]).is_empty());
        assert!(watch.undecided());
        assert_eq!(watch.record(&[(2, Ping::Refused), (3, Ping::Answered)]), vec![2]);
        assert!(watch.record(&[(2, Ping::Refused), (3, Ping::Answered)]).is_empty());
        assert!(!watch.undecided());
        watch.record(&[(3, Ping::Answered)]);
        assert!(!watch.down(2));
        // A broken connection makes the next round come soon, to redial.
        watch.record(&[(3, Ping::Broken)]);
        assert!(watch.undecided());
        watch.record(&[(3, Ping::Answered)]);
        assert!(!watch.undecided());
    }
}
