//! A node's configuration: a TOML file (`flotilla node --config FILE`) or flags.
//! Keys are kebab-case; every key has a default; `validate` explains what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_metadata::Labels;
use flotilla_raft::GroupTimings;
use flotilla_types::{NodeId, limits};
use serde::{Deserialize, Serialize};

use crate::quota::QuotaLimits;

/// How many of the first peers vote in the metadata group by default.
pub const DEFAULT_CONTROLLERS: usize = 3;

/// `flotilla node` listens for other nodes on its client port plus this, unless
/// `rpc-listen` says otherwise.
pub const RPC_PORT_OFFSET: u16 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// This node's id, 1 or more, unique in the cluster.
    pub id: NodeId,
    /// Address to listen on for clients: the client and admin APIs (host:port).
    pub listen: String,
    /// Address clients use to reach this one; defaults to `listen`.
    pub advertise: Option<String>,
    /// Address to listen on for other nodes: Raft messages and forwarded writes, never
    /// client requests. `flotilla node` defaults it to `listen`'s host and port + 100
    /// (`RPC_PORT_OFFSET`); unset in a library user (the simulator), the node-to-node
    /// service shares `listen`.
    pub rpc_listen: Option<String>,
    /// Address other nodes use to reach this one; defaults to `advertise`'s host with
    /// `rpc-listen`'s port, or to `rpc-listen` when `advertise` is not set.
    pub rpc_advertise: Option<String>,
    /// Mutual TLS between nodes (docs/security.md): the certificate authority that signs
    /// every node's certificate (PEM). With it, the node-to-node listener takes only
    /// connections that present a certificate it signed, and a message is refused unless
    /// its sender's id is the one in that certificate.
    pub rpc_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), naming it `node-ID.CLUSTER.flotilla`
    /// (`flotilla certs node`).
    pub rpc_tls_cert: Option<PathBuf>,
    /// The private key of `rpc-tls-cert` (PEM).
    pub rpc_tls_key: Option<PathBuf>,
    /// TLS on the client listener (docs/security.md): the certificate clients check
    /// (PEM; it must name the host clients dial, `advertise`'s). Unset: plaintext.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls-cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// With `tls-cert`: require every client to present a certificate signed by this
    /// authority (PEM). Unset: clients need none.
    pub tls_client_ca: Option<PathBuf>,
    /// Where this node keeps its data.
    pub data_dir: PathBuf,
    /// Every node of the initial cluster, this one included, as `ID=HOST:PORT` where
    /// HOST:PORT is the node's node-to-node address (`rpc-advertise`; a list, or one
    /// comma-separated string as in `FLOTILLA_PEERS`).
    #[serde(deserialize_with = "list_or_commas")]
    pub peers: Vec<String>,
    /// The metadata group's voters; defaults to the first three peers by id.
    #[serde(deserialize_with = "list_or_commas")]
    pub controllers: Vec<NodeId>,
    pub region: String,
    pub zone: String,
    pub rack: String,
    /// How long a produce may wait for its batch to commit before answering TIMEOUT.
    pub produce_timeout_ms: u64,
    /// Join a running cluster through this node (host:port) instead of forming one from
    /// `peers`. The node then never initialises the metadata group itself.
    pub join: Option<String>,
    /// Controller: a node the metadata leader has not heard from for this long is
    /// suspected (its partition groups elect new leaders, it receives no new replicas).
    pub suspect_after_ms: u64,
    /// Controller: a node silent for this long is dead and its replicas are re-created on
    /// other nodes (the grace period).
    pub dead_after_ms: u64,
    /// Controller: keep replicas and leaders balanced without being asked.
    pub auto_balance: bool,
    /// Controller: partition moves in progress at once.
    pub max_concurrent_moves: usize,
    /// Log bytes per second this node sends to replicas catching up in moves.
    pub move_bytes_per_sec: u64,
    /// Where to serve Prometheus metrics over HTTP (`/metrics`); none when unset.
    pub metrics_listen: Option<String>,
    /// Partition groups' heartbeat interval.
    pub partition_heartbeat_ms: u64,
    /// Partition groups' own election timeout (randomised up to twice this). A group whose
    /// leader's node is suspected elects at once, without waiting for it.
    pub partition_election_timeout_ms: u64,
    /// A partition group with no new entries for this long, every voter caught up, is
    /// quiesced: its replicas stop ticking (no heartbeats, no election timers) until the
    /// next write, and node liveness stands in for its failure detection. 0: never.
    pub quiesce_after_ms: u64,
    /// A quiesced group's leader heartbeats its followers this often (and every 3 s for
    /// 10 s after a follower's node comes back). Between keepalives the node-level
    /// heartbeat stands in for them: a quiet follower whose leader's node answers this
    /// node's pings and claims the group has heard from its leader, and a follower that
    /// holds its leader's last entry is in sync while its node answers. A quiet follower
    /// that hears from neither for 15 s starts its own timers again (a leader's node that
    /// reaches the metadata leader but not this follower).
    pub quiesce_keepalive_ms: u64,
    /// A replica that has not acknowledged its partition's leader for this long is out of
    /// sync (Kafka's `replica.lag.time.max.ms`): the partition counts as under-replicated,
    /// and a move or a controller change does not rely on it. A replica that holds its
    /// leader's last entry counts as acknowledging whenever its node answers the leader's
    /// node-level heartbeat (a quiet group's leader sends its own only every keepalive).
    pub replica_lag_time_max_ms: u64,
    /// Retention: records older than this are deleted, for topics that do not set their
    /// own `retention-ms` (Kafka's `log.retention.ms`; 7 days). 0: keep forever.
    pub retention_ms: u64,
    /// Retention: a partition replica keeps at most this many bytes of records, for
    /// topics that do not set their own `retention-bytes`. 0: no limit.
    pub retention_bytes: u64,
    /// How often each partition leader checks its retention (and each replica whether
    /// deleted records can be purged from its log). Records past their retention become
    /// unreadable within about this long after they expire.
    pub retention_check_interval_ms: u64,
    /// Below this much free space on the data directory's filesystem the node refuses
    /// produce with DISK_FULL (retriable), and keeps serving reads and replication. 0:
    /// never refuse.
    pub disk_free_min_bytes: u64,
    /// Idempotent producers: a partition forgets a producer that appended nothing for
    /// this long (Kafka's `producer.id.expiration.ms`; one day). Its next batch is then
    /// refused as out of sequence and the client starts again under a new producer id.
    /// Carried in every produce this node proposes as leader.
    pub producer_expiry_ms: u64,
    /// Idempotent producers: the most one partition remembers; the least recently active
    /// is forgotten first (10,000; at most 100,000).
    pub partition_producers_max: u32,
    /// Quotas (docs/security.md): batch bytes per second one principal (client id) may
    /// produce to this node's partitions, unless `quotas` gives it its own. 0: no limit.
    pub quota_produce_bytes_per_sec: u64,
    /// Quotas: batch bytes per second one principal may fetch from this node. 0: none.
    pub quota_fetch_bytes_per_sec: u64,
    /// Quotas: produce and fetch requests per second one principal may make to this
    /// node. 0: no limit.
    pub quota_requests_per_sec: u64,
    /// Quotas of particular principals, by client id (`[quotas."client-id"]` in the
    /// file), replacing the defaults above for the kinds they set.
    pub quotas: BTreeMap<String, QuotaLimits>,
    /// Check every client and admin request against the cluster's ACLs
    /// (docs/security.md): what no entry allows is refused with NOT_AUTHORIZED, and a
    /// request without credentials or a client certificate with NOT_AUTHENTICATED.
    /// Default off: every request is allowed (credentials that are sent are still
    /// checked).
    pub authorization: bool,
    /// Principals (user names, or client certificates' common names) allowed
    /// everything, whatever the ACLs say (a list, or one comma-separated string).
    #[serde(deserialize_with = "list_or_commas")]
    pub superusers: Vec<String>,
    /// A user this node creates at its first start if the cluster has no user of that
    /// name, with the password in the environment variable `FLOTILLA_BOOTSTRAP_PASSWORD`
    /// (never a flag or the file): the first superuser of a cluster that uses passwords.
    pub bootstrap_user: Option<String>,
    /// Set when this node came back on an empty disk as a replacement of itself
    /// (`flotilla cluster replace-node`, RFC 0008; kept in `data-dir/replaced`): the first
    /// group id it may initialise. It never initialises the metadata group, and joins
    /// every older group as a learner. Not a configuration key.
    #[serde(skip)]
    pub replaced_below: Option<flotilla_types::GroupId>,
    /// Set when this node started on an empty data directory and none of its peers
    /// answered whether the cluster knows it: it serves no Raft message and initialises
    /// nothing until `Node::confirm_identity`. Not a configuration key.
    #[serde(skip)]
    pub identity_unconfirmed: bool,
}

/// A list given as a list, or as one string of comma-separated items (how an
/// environment variable gives it), or as one item.
fn list_or_commas<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given<T> {
        List(Vec<T>),
        Text(String),
        One(T),
    }
    match Given::<T>::deserialize(d)? {
        Given::List(v) => Ok(v),
        Given::One(v) => Ok(vec![v]),
        Given::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<T>().map_err(|e| serde::de::Error::custom(format!("'{p}': {e}"))))
            .collect(),
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            listen: "127.0.0.1:7070".into(),
            advertise: None,
            rpc_listen: None,
            rpc_advertise: None,
            rpc_tls_ca: None,
            rpc_tls_cert: None,
            rpc_tls_key: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            data_dir: PathBuf::from("./.flotilla/node-1"),
            peers: Vec::new(),
            controllers: Vec::new(),
            region: "local".into(),
            zone: String::new(),
            rack: String::new(),
            produce_timeout_ms: 10_000,
            join: None,
            suspect_after_ms: 1_500,
            dead_after_ms: 30_000,
            auto_balance: true,
            max_concurrent_moves: limits::MOVES_CONCURRENT_DEFAULT,
            move_bytes_per_sec: limits::MOVE_BYTES_PER_SEC_DEFAULT,
            metrics_listen: None,
            partition_heartbeat_ms: GroupTimings::PARTITION.heartbeat_ms,
            partition_election_timeout_ms: GroupTimings::PARTITION.election_min_ms,
            quiesce_after_ms: 3000,
            quiesce_keepalive_ms: 20_000,
            replica_lag_time_max_ms: limits::REPLICA_LAG_TIME_MAX_MS_DEFAULT,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            retention_check_interval_ms: 5_000,
            disk_free_min_bytes: 256 << 20,
            producer_expiry_ms: limits::PRODUCER_IDLE_EXPIRY_MS,
            partition_producers_max: limits::PARTITION_PRODUCERS_MAX as u32,
            quota_produce_bytes_per_sec: 0,
            quota_fetch_bytes_per_sec: 0,
            quota_requests_per_sec: 0,
            quotas: BTreeMap::new(),
            authorization: false,
            superusers: Vec::new(),
            bootstrap_user: None,
            replaced_below: None,
            identity_unconfirmed: false,
        }
    }
}

impl NodeConfig {
    /// Where clients reach this node.
    pub fn advertised(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// Where other nodes reach this node: `rpc-advertise`; else, with `rpc-listen`, the
    /// host of `advertise` (or of `rpc-listen` when `advertise` is not set) and the port
    /// of `rpc-listen`; else the client address (one shared listener).
    pub fn rpc_advertised(&self) -> String {
        if let Some(a) = &self.rpc_advertise {
            return a.clone();
        }
        match (&self.rpc_listen, &self.advertise) {
            (Some(rpc), Some(adv)) => match (adv.rsplit_once(':'), rpc.rsplit_once(':')) {
                (Some((host, _)), Some((_, port))) => format!("{host}:{port}"),
                _ => rpc.clone(),
            },
            (Some(rpc), None) => rpc.clone(),
            (None, _) => self.advertised().to_string(),
        }
    }

    /// The node-to-node listener `flotilla node` uses when `rpc-listen` is not set:
    /// `listen`'s host, its port + `RPC_PORT_OFFSET`.
    pub fn default_rpc_listen(&self) -> Result<String, String> {
        let (host, port) =
            self.listen.rsplit_once(':').ok_or_else(|| format!("listen: '{}' is not HOST:PORT", self.listen))?;
        let port: u16 = port.parse().map_err(|_| format!("listen: '{}' has no port number", self.listen))?;
        let rpc = port.checked_add(RPC_PORT_OFFSET).filter(|_| port != 0).ok_or_else(|| {
            format!("listen: port {port} leaves no default for rpc-listen (port + {RPC_PORT_OFFSET}); set rpc-listen")
        })?;
        Ok(format!("{host}:{rpc}"))
    }

    /// Sets `rpc-listen` to its default (`default_rpc_listen`) when it is not set, as
    /// `flotilla node` does: a node process always has its own node-to-node listener.
    pub fn fill_rpc_listen(&mut self) -> Result<(), String> {
        if self.rpc_listen.is_none() {
            self.rpc_listen = Some(self.default_rpc_listen()?);
        }
        Ok(())
    }

    /// What a partition remembers of idempotent producers, as this node proposes it.
    pub fn producer_settings(&self) -> flotilla_partition::ProducerSettings {
        flotilla_partition::ProducerSettings {
            idle_expiry_ms: self.producer_expiry_ms,
            max_producers: self.partition_producers_max,
        }
    }

    pub fn partition_timings(&self) -> GroupTimings {
        GroupTimings {
            heartbeat_ms: self.partition_heartbeat_ms,
            election_min_ms: self.partition_election_timeout_ms,
            election_max_ms: self.partition_election_timeout_ms * 2,
        }
    }

    /// The quotas this node enforces.
    pub fn quotas(&self) -> crate::quota::Quotas {
        let defaults = QuotaLimits {
            produce_bytes_per_sec: Some(self.quota_produce_bytes_per_sec),
            fetch_bytes_per_sec: Some(self.quota_fetch_bytes_per_sec),
            requests_per_sec: Some(self.quota_requests_per_sec),
        };
        crate::quota::Quotas::new(defaults, self.quotas.clone())
    }

    pub fn labels(&self) -> Labels {
        Labels { region: self.region.clone(), zone: self.zone.clone(), rack: self.rack.clone() }
    }

    /// The peers as id → address; this node is always included.
    pub fn peer_map(&self) -> Result<BTreeMap<NodeId, String>, String> {
        let mut out = BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p.split_once('=').ok_or_else(|| format!("peer '{p}' is not ID=HOST:PORT"))?;
            let id: NodeId = id.trim().parse().map_err(|_| format!("peer '{p}': '{id}' is not a node id"))?;
            if id == 0 {
                return Err(format!("peer '{p}': node ids start at 1"));
            }
            let addr = addr.trim();
            if addr.is_empty() || !addr.contains(':') {
                return Err(format!("peer '{p}': '{addr}' is not HOST:PORT"));
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(format!("peer id {id} is listed twice"));
            }
        }
        out.entry(self.id).or_insert_with(|| self.rpc_advertised());
        Ok(out)
    }

    /// The voters this node initialises the metadata group with when its storage has
    /// none, or `None` when it must wait to be added by the metadata leader (it joins, it
    /// is not one of the initial controllers, or it replaces itself).
    pub fn initial_metadata_voters(&self) -> Result<Option<Vec<NodeId>>, String> {
        if self.join.is_some() || self.replaced_below.is_some() {
            return Ok(None);
        }
        let voters = self.controller_ids()?;
        Ok(voters.contains(&self.id).then_some(voters))
    }

    /// The metadata group's initial voters.
    pub fn controller_ids(&self) -> Result<Vec<NodeId>, String> {
        let peers = self.peer_map()?;
        if self.controllers.is_empty() {
            return Ok(peers.keys().copied().take(DEFAULT_CONTROLLERS).collect());
        }
        for c in &self.controllers {
            if !peers.contains_key(c) {
                return Err(format!("controller {c} is not among the peers"));
            }
        }
        Ok(self.controllers.clone())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id: node ids start at 1".into());
        }
        if !self.listen.contains(':') {
            return Err(format!("listen: '{}' is not HOST:PORT", self.listen));
        }
        if let Some(rpc) = &self.rpc_listen {
            if !rpc.contains(':') {
                return Err(format!("rpc-listen: '{rpc}' is not HOST:PORT"));
            }
            if *rpc == self.listen {
                return Err(format!("rpc-listen: '{rpc}' is the client listener too; give other nodes their own"));
            }
        }
        let tls = [&self.rpc_tls_ca, &self.rpc_tls_cert, &self.rpc_tls_key];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            return Err("rpc-tls-ca, rpc-tls-cert and rpc-tls-key go together: set all three or none".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls-cert and tls-key go together: set both or neither".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("tls-client-ca needs tls-cert and tls-key: clients present certificates only over TLS".into());
        }
        let peers = self.peer_map()?;
        if let Some(a) = peers.get(&self.id)
            && *a != self.rpc_advertised()
        {
            return Err(format!(
                "peers: this node ({}) is listed at {a} but other nodes reach it at {} (rpc-advertise)",
                self.id,
                self.rpc_advertised()
            ));
        }
        if self.join.is_none() {
            self.controller_ids()?;
        }
        if let Some(j) = &self.join
            && !j.contains(':')
        {
            return Err(format!("join: '{j}' is not HOST:PORT"));
        }
        if let Some(id) = self.quotas.keys().find(|id| id.len() > limits::CLIENT_ID_BYTES_MAX) {
            return Err(format!(
                "quotas: client id '{id}' is over {} bytes; no request could carry it",
                limits::CLIENT_ID_BYTES_MAX
            ));
        }
        if let Some(u) = self
            .superusers
            .iter()
            .chain(&self.bootstrap_user)
            .find(|u| u.is_empty() || u.len() > limits::USER_NAME_BYTES_MAX || *u == "*")
        {
            return Err(format!(
                "superusers, bootstrap-user: '{u}' is not a user name (1..={} bytes, not '*')",
                limits::USER_NAME_BYTES_MAX
            ));
        }
        if self.suspect_after_ms == 0 || self.dead_after_ms < self.suspect_after_ms {
            return Err(format!(
                "suspect-after-ms ({}) must be positive and at most dead-after-ms ({})",
                self.suspect_after_ms, self.dead_after_ms
            ));
        }
        if self.partition_heartbeat_ms == 0 || self.partition_election_timeout_ms < 2 * self.partition_heartbeat_ms {
            return Err(format!(
                "partition-election-timeout-ms ({}) must be at least twice partition-heartbeat-ms ({})",
                self.partition_election_timeout_ms, self.partition_heartbeat_ms
            ));
        }
        if self.quiesce_keepalive_ms < self.partition_heartbeat_ms {
            return Err(format!(
                "quiesce-keepalive-ms ({}) must be at least partition-heartbeat-ms ({})",
                self.quiesce_keepalive_ms, self.partition_heartbeat_ms
            ));
        }
        if self.max_concurrent_moves == 0 || self.move_bytes_per_sec < 1024 {
            return Err("max-concurrent-moves must be positive and move-bytes-per-sec at least 1024".into());
        }
        self.labels().check()?;
        if self.produce_timeout_ms == 0 {
            return Err("produce-timeout-ms must be positive".into());
        }
        if self.retention_check_interval_ms < 100 {
            return Err("retention-check-interval-ms must be at least 100".into());
        }
        if !(limits::PRODUCER_IDLE_EXPIRY_MS_MIN..=limits::PRODUCER_IDLE_EXPIRY_MS_MAX)
            .contains(&self.producer_expiry_ms)
        {
            return Err(format!(
                "producer-expiry-ms must be from {} to {}",
                limits::PRODUCER_IDLE_EXPIRY_MS_MIN,
                limits::PRODUCER_IDLE_EXPIRY_MS_MAX
            ));
        }
        if !(1..=limits::PARTITION_PRODUCERS_CEILING as u32).contains(&self.partition_producers_max) {
            return Err(format!("partition-producers-max must be from 1 to {}", limits::PARTITION_PRODUCERS_CEILING));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> NodeConfig {
        NodeConfig {
            id: 2,
            listen: "127.0.0.1:7071".into(),
            peers: vec!["1=127.0.0.1:7070".into(), "2=127.0.0.1:7071".into(), "3=127.0.0.1:7072".into()],
            ..NodeConfig::default()
        }
    }

    #[test]
    fn peers_and_controllers() {
        let c = three();
        c.validate().unwrap();
        assert_eq!(c.controller_ids().unwrap(), vec![1, 2, 3]);
        assert_eq!(c.peer_map().unwrap()[&3], "127.0.0.1:7072");
    }

    #[test]
    fn bad_configs_say_why() {
        let mut c = three();
        c.peers.push("x=1".into());
        assert!(c.validate().unwrap_err().contains("not a node id"));
        let mut c = three();
        c.listen = "127.0.0.1:9999".into();
        assert!(c.validate().unwrap_err().contains("rpc-advertise"));
    }

    /// Peers name node-to-node addresses: with its own listener, a node is listed at
    /// `rpc-listen`, and `flotilla node`'s default for it is the client port + 100.
    #[test]
    fn peers_are_node_to_node_addresses() {
        let mut c = three();
        c.rpc_listen = Some("127.0.0.1:7171".into());
        assert!(c.validate().unwrap_err().contains("7171"), "listed at 7071, reached at 7171");
        c.peers[1] = "2=127.0.0.1:7171".into();
        c.validate().unwrap();
        assert_eq!(c.advertised(), "127.0.0.1:7071");
        assert_eq!(c.rpc_advertised(), "127.0.0.1:7171");
        c.advertise = Some("node2.example:7071".into());
        assert_eq!(c.rpc_advertised(), "node2.example:7171", "advertise's host, rpc-listen's port");
        c.rpc_advertise = Some("10.0.0.2:7171".into());
        assert_eq!(c.rpc_advertised(), "10.0.0.2:7171");
        assert_eq!(three().default_rpc_listen().unwrap(), "127.0.0.1:7171");
        let no_room = NodeConfig { listen: "127.0.0.1:65500".into(), ..three() };
        assert!(no_room.default_rpc_listen().unwrap_err().contains("set rpc-listen"));
        let same = NodeConfig { rpc_listen: Some("127.0.0.1:7071".into()), ..three() };
        assert!(same.validate().unwrap_err().contains("own"));
        let half = NodeConfig { rpc_tls_ca: Some("ca.pem".into()), ..three() };
        assert!(half.validate().unwrap_err().contains("go together"));
    }
}
