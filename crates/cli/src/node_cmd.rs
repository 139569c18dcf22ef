//! `flotilla node`: one node on RocksDB, serving gRPC (and, when asked, Prometheus
//! metrics over HTTP), until SIGTERM or Ctrl-C. With `--join` it registers itself with a
//! running cluster instead of forming one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use flotilla_node::{AddressBook, Node, NodeConfig};
use flotilla_raft::Registration;
use flotilla_rpc::GrpcTransport;
use flotilla_storage_rocksdb::RocksEngine;
use flotilla_types::{GroupId, SystemClock};

/// The node's flags. Each setting is also read from a `FLOTILLA_*` environment variable
/// (the key in capitals, `-` as `_`: `FLOTILLA_DATA_DIR`) and from the configuration
/// file; flags win over the environment, which wins over the file (`load_config`).
#[derive(clap::Args, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeArgs {
    /// A TOML file with the node's configuration (keys as in docs/configuration.md);
    /// the environment and flags override it.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log lines as text, or as JSON objects (one per line) for log collectors.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value = "text")]
    #[serde(skip)]
    pub log_format: LogFormat,
    /// This node's id (1 or more).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    /// Address to listen on for clients (host:port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Address clients reach this node at, if not --listen.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// Address to listen on for other nodes (host:port; default: --listen's port + 100).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_listen: Option<String>,
    /// Address other nodes reach this node at, if not --advertise's host with
    /// --rpc-listen's port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_advertise: Option<String>,
    /// Node-to-node mutual TLS: the cluster's certificate authority (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_tls_ca: Option<PathBuf>,
    /// Node-to-node mutual TLS: this node's certificate (PEM; `flotilla certs node`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_tls_cert: Option<PathBuf>,
    /// Node-to-node mutual TLS: this node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_tls_key: Option<PathBuf>,
    /// Client TLS: the certificate the client listener presents (PEM; it must name the
    /// host clients dial).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// Client TLS: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Client TLS: require clients to present a certificate this authority signed (PEM).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_client_ca: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// The initial cluster, as ID=HOST:PORT (each node's node-to-node address),
    /// comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<String>,
    /// The metadata group's voters (default: the first three peers).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    controllers: Vec<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rack: Option<String>,
    /// Join a running cluster through this node (host:port): no static peers are needed;
    /// the node registers itself there, retrying until it succeeds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    join: Option<String>,
    /// Controller: a node not heard from for this long is suspected.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    suspect_after_ms: Option<u64>,
    /// Controller: a node not heard from for this long is dead; its replicas are
    /// re-created elsewhere.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_after_ms: Option<u64>,
    /// Controller: keep replicas and leaders balanced without being asked
    /// (`--auto-balance false` to turn off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_balance: Option<bool>,
    /// Controller: partition moves in progress at once.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_moves: Option<usize>,
    /// Log bytes per second this node sends to replicas catching up in moves.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    move_bytes_per_sec: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    /// Quiesce a partition group idle this long (no heartbeats, no election timers); 0:
    /// never.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quiesce_after_ms: Option<u64>,
    /// A quiesced group's leader heartbeats this often (default 20000); between
    /// keepalives the node-level heartbeat stands in for them.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quiesce_keepalive_ms: Option<u64>,
    /// A replica silent toward its partition's leader for this long is out of sync
    /// (default 15000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_lag_time_max_ms: Option<u64>,
    /// Retention for topics that set none: delete records older than this (default 7
    /// days; 0: keep forever).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_ms: Option<u64>,
    /// Retention for topics that set none: bytes kept per partition (default 0: no limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_bytes: Option<u64>,
    /// How often partition leaders apply retention (default 5000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_check_interval_ms: Option<u64>,
    /// Refuse produce with DISK_FULL below this much free space on the data directory's
    /// filesystem (default 268435456; 0: never).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_free_min_bytes: Option<u64>,
    /// Forget an idempotent producer idle for this long, per partition (default 86400000,
    /// one day; Kafka's producer.id.expiration.ms).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_expiry_ms: Option<u64>,
    /// Idempotent producers one partition remembers at most (default 10000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    partition_producers_max: Option<u32>,
    /// Quota: batch bytes per second one client id may produce to this node (default 0:
    /// no limit; per client id in the file's `[quotas."ID"]`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_produce_bytes_per_sec: Option<u64>,
    /// Quota: batch bytes per second one client id may fetch from this node (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_fetch_bytes_per_sec: Option<u64>,
    /// Quota: produce and fetch requests per second one client id may make to this node
    /// (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_requests_per_sec: Option<u64>,
    /// Check every client and admin request against the cluster's ACLs (default
    /// false; docs/security.md).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization: Option<bool>,
    /// Principals allowed everything, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    superusers: Vec<String>,
    /// Create this user at the first start if the cluster has none of that name, with
    /// the password in FLOTILLA_BOOTSTRAP_PASSWORD.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap_user: Option<String>,
}

/// The node's configuration: the defaults, then the file (`--config`), then
/// `FLOTILLA_*` environment variables naming a key, then the flags given, each layer
/// overriding the one before (figment). Without a data directory from any of them, node
/// `N` keeps its data in `./.flotilla/node-N`.
pub fn load_config(args: &NodeArgs) -> anyhow::Result<NodeConfig> {
    load_config_from(args, "FLOTILLA_")
}

/// [`load_config`] reading environment variables with `prefix`.
fn load_config_from(args: &NodeArgs, prefix: &str) -> anyhow::Result<NodeConfig> {
    use figment::Figment;
    use figment::providers::{Env, Format, Serialized, Toml};

    let defaults = NodeConfig::default();
    let keys: std::collections::BTreeSet<String> = match serde_json::to_value(&defaults)? {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        _ => Default::default(),
    };
    let mut figment = Figment::from(Serialized::defaults(&defaults));
    if let Some(path) = &args.config {
        if !path.exists() {
            bail!("configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only variables that name a key: others (FLOTILLA_BOOTSTRAP, for the client) are
    // not the node's.
    let env = Env::prefixed(prefix).filter_map(move |k| {
        let key = k.as_str().to_ascii_lowercase().replace('_', "-");
        keys.contains(&key).then(|| key.into())
    });
    figment = figment.merge(env).merge(Serialized::defaults(args));
    let mut config: NodeConfig = figment.extract().map_err(|e| {
        let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
        anyhow::anyhow!("invalid configuration ({source}): {e}")
    })?;
    if config.data_dir == defaults.data_dir && config.id != defaults.id {
        config.data_dir = PathBuf::from(format!("./.flotilla/node-{}", config.id));
    }
    config.fill_rpc_listen().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if config.peers.is_empty() {
        // A single-node cluster of itself.
        config.peers = vec![format!("{}={}", config.id, config.rpc_advertised())];
    }
    if let Err(e) = config.validate() {
        bail!("invalid configuration: {e}");
    }
    Ok(config)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (time, level, message, fields, spans).
    Json,
}

/// The log filter when `RUST_LOG` is not set. openraft warns of every message to a peer
/// that fails (each heartbeat, append and vote request of every group): at 10,000
/// partitions with one node killed, a survivor wrote 13,000 such lines a second, about
/// 2 MB/s, for as long as the node stayed down. The node says itself which peers are
/// down and back (`node liveness`, "node answers again"), so those openraft modules log
/// errors only; `RUST_LOG=info,openraft=warn` shows them again.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::core::heartbeat=error,openraft::replication=error,\
     openraft::engine::handler::replication_handler=error,openraft::core::raft_core=error";

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
    };
}

/// How long a node starting on an empty data directory waits for each peer's answer.
const IDENTITY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a node starting on an empty data directory learned about its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// The cluster does not know it: a new node (or a new cluster forming).
    New,
    /// It is being replaced and may start: the first group id it may initialise.
    Replacement(GroupId),
    /// No one answered: it cannot tell yet.
    Unanswered,
}

/// Asks whether the cluster knows this node, which starts on an empty data directory: its
/// peers (over the node-to-node listener), or for a node that joins the node it joins
/// through (over the client API). A registered node that lost its data must not vote
/// again with the votes it forgot, so that is an error, naming what to do; so is a
/// replacement that is not ready yet.
async fn check_identity(
    config: &NodeConfig,
    transport: &GrpcTransport,
    addresses: &AddressBook,
) -> anyhow::Result<Identity> {
    match &config.join {
        None => identity_from_peers(config, transport, addresses).await,
        Some(via) => identity_via(config, via).await,
    }
}

/// [`check_identity`] through the peers. A node with no peer but itself is new.
async fn identity_from_peers(
    config: &NodeConfig,
    transport: &GrpcTransport,
    addresses: &AddressBook,
) -> anyhow::Result<Identity> {
    let peers = config.peer_map().map_err(|e| anyhow::anyhow!(e))?;
    let asked: Vec<u64> = peers.keys().copied().filter(|p| *p != config.id).collect();
    for (id, addr) in peers {
        addresses.set(id, addr);
    }
    if asked.is_empty() {
        return Ok(Identity::New);
    }
    let answers = futures::future::join_all(
        asked.iter().map(|p| flotilla_raft::registered_at(transport, *p, IDENTITY_CHECK_TIMEOUT)),
    )
    .await;
    let mut identity = Identity::Unanswered;
    for (peer, answer) in asked.iter().zip(answers) {
        match answer {
            Ok(Registration::Registered) => return Err(forgotten_identity(config, &format!("node {peer}"))),
            Ok(Registration::Replacing { groups_left }) => {
                return Err(replacement_not_ready(config, &format!("node {peer}"), groups_left));
            }
            Ok(Registration::Replaceable { first_new_group }) => {
                tracing::info!(peer, "this node is being replaced: it starts empty and rejoins every group");
                identity = Identity::Replacement(first_new_group);
            }
            Ok(Registration::Unknown) => {
                tracing::debug!(peer, "not registered there: a new node");
                if identity == Identity::Unanswered {
                    identity = Identity::New;
                }
            }
            Err(e) => tracing::debug!(peer, error = %e, "no answer about this node's registration"),
        }
    }
    Ok(identity)
}

/// [`check_identity`] for a node that joins (`--join`), which knows no peer's
/// node-to-node address: it asks the node it joins through, over the client API, with
/// the credentials it joins with.
async fn identity_via(config: &NodeConfig, via: &str) -> anyhow::Result<Identity> {
    let id = config.id;
    let asked = async {
        let client = flotilla_client::Client::connect_with(via, join_client_config(config)).await?;
        let cluster = client.describe_cluster().await?;
        if !cluster.brokers.iter().any(|b| b.id == id) {
            return Ok(None);
        }
        client.replace_node(id, true).await.map(Some)
    };
    match tokio::time::timeout(IDENTITY_CHECK_TIMEOUT * 5, asked).await {
        Ok(Ok(None)) => Ok(Identity::New),
        Ok(Ok(Some(r))) => match r.state.as_str() {
            "ready" => {
                tracing::info!(via, "this node is being replaced: it starts empty and rejoins every group");
                Ok(Identity::Replacement(r.first_new_group))
            }
            "removing" => Err(replacement_not_ready(config, via, r.groups_left.len() as u64)),
            _ => Err(forgotten_identity(config, via)),
        },
        Ok(Err(e)) => {
            tracing::debug!(via, error = %e, "no answer about this node's registration");
            Ok(Identity::Unanswered)
        }
        Err(_) => {
            tracing::debug!(via, "no answer about this node's registration in time");
            Ok(Identity::Unanswered)
        }
    }
}

/// How often a node that could not tell whether the cluster knows it asks again.
const IDENTITY_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// For a node started with `identity_unconfirmed`: asks again until someone answers.
/// Once the answer is that the cluster does not know it, the node takes part from then
/// on (`Node::confirm_identity`) and this never returns; otherwise it returns why the
/// node must stop.
async fn confirm_identity(node: Node<GrpcTransport>, transport: GrpcTransport, addresses: AddressBook) -> String {
    let config = node.config().clone();
    if !config.identity_unconfirmed {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(IDENTITY_RETRY).await;
        match check_identity(&config, &transport, &addresses).await {
            Ok(Identity::Unanswered) => continue,
            Ok(Identity::New) => break,
            Ok(Identity::Replacement(_)) => {
                return format!(
                    "node {} is being replaced and its replacement is ready: start it again, and it rejoins \
                     as the replacement",
                    config.id
                );
            }
            Err(e) => return format!("{e:#}"),
        }
    }
    if let Err(e) = node.confirm_identity().await {
        return e;
    }
    if let Err(e) = std::fs::remove_file(config.data_dir.join(UNCONFIRMED_FILE)) {
        tracing::warn!(error = %e, "cannot remove the identity marker");
    }
    tracing::info!("a peer answered that the cluster does not know this node: it takes part from now on");
    std::future::pending().await
}

/// `data-dir/unconfirmed`: written when a node starts on an empty data directory and no
/// one answers whether the cluster knows it, removed once someone does. While it exists
/// the node counts as starting empty, whatever its storage holds.
const UNCONFIRMED_FILE: &str = "unconfirmed";

/// Why a node on an empty data directory must not start under an id `who` knows.
fn forgotten_identity(config: &NodeConfig, who: &str) -> anyhow::Error {
    let (id, dir) = (config.id, config.data_dir.display());
    anyhow::anyhow!(
        "{who} knows node {id} as a registered broker, and this node's data directory {dir} is empty: the data \
         it had (its Raft votes among them) is gone, and it must not vote again with what it forgot. Replace it \
         under its id (`flotilla cluster replace-node {id}`, then start it again), start it with a new id, or \
         restore its data directory (docs/operating.md, \"A node whose storage is corrupt\")"
    )
}

/// Why a node being replaced must wait: `who` says its old replica is still in groups.
fn replacement_not_ready(config: &NodeConfig, who: &str, groups_left: u64) -> anyhow::Error {
    let id = config.id;
    anyhow::anyhow!(
        "node {id} is being replaced, but {who} says its old replica is still in {groups_left} groups: start it \
         once `flotilla cluster replace-node {id} --status` says ready"
    )
}

/// `data-dir/replaced`: written when a node starts empty as its own replacement, with the
/// first group id it may initialise (`NodeConfig::replaced_below`); read at every start.
const REPLACED_FILE: &str = "replaced";

/// Records durably that this node replaces itself from group `first` on.
fn mark_replaced(data_dir: &std::path::Path, first: GroupId) -> anyhow::Result<()> {
    write_durably(data_dir, REPLACED_FILE, &format!("{first}\n"))
}

/// Writes `text` to `data_dir/name` and syncs it and the directory.
fn write_durably(data_dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = data_dir.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// The first group id this node may initialise, when it replaced itself.
fn replaced_below(data_dir: &std::path::Path) -> anyhow::Result<Option<GroupId>> {
    let path = data_dir.join(REPLACED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let first = text.trim().parse().with_context(|| format!("{} holds no group id", path.display()))?;
            Ok(Some(first))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The bootstrap user and its password (`FLOTILLA_BOOTSTRAP_PASSWORD`), when the
/// configuration names one.
fn bootstrap_user(config: &NodeConfig) -> anyhow::Result<Option<(String, String)>> {
    let Some(name) = &config.bootstrap_user else { return Ok(None) };
    let password = std::env::var("FLOTILLA_BOOTSTRAP_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .with_context(|| format!("bootstrap-user '{name}' needs its password in FLOTILLA_BOOTSTRAP_PASSWORD"))?;
    Ok(Some((name.clone(), password)))
}

/// Creates the bootstrap user once the metadata group takes writes, unless the cluster
/// has a user of that name already (whose password it then leaves alone).
async fn create_user(node: Node<GrpcTransport>, name: String, password: String) {
    let credential = flotilla_rpc::auth::credential(&password);
    while node.user_credential(&name).is_none() {
        match node.put_user(&name, credential.clone(), true).await {
            Ok(()) => tracing::info!(user = %name, "bootstrap user in place"),
            Err(e) => tracing::debug!(user = %name, error = %e.message, "bootstrap user not created yet"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let mut config = load_config(&args)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let unconfirmed = config.data_dir.join(UNCONFIRMED_FILE);
    let fresh = !config.data_dir.join("db").exists() || unconfirmed.exists();
    let tls = node_tls(&config)?;
    let addresses = AddressBook::new();
    let transport = match &tls {
        Some(tls) => GrpcTransport::with_tls(config.id, addresses.clone(), tls.clone()),
        None => GrpcTransport::new(config.id, addresses.clone()),
    };
    if fresh {
        match check_identity(&config, &transport, &addresses).await? {
            Identity::New => {}
            Identity::Replacement(first) => mark_replaced(&config.data_dir, first)?,
            Identity::Unanswered => {
                tracing::info!(
                    "this node starts on an empty data directory and none of its peers answered whether the \
                     cluster knows it (as at a new cluster's first start): it takes part in no group until one does"
                );
                write_durably(&config.data_dir, UNCONFIRMED_FILE, "")?;
                config.identity_unconfirmed = true;
            }
        }
        if !config.identity_unconfirmed && unconfirmed.exists() {
            std::fs::remove_file(&unconfirmed).with_context(|| format!("removing {}", unconfirmed.display()))?;
        }
    }
    config.replaced_below = replaced_below(&config.data_dir)?;
    let engine = match RocksEngine::open(config.data_dir.join("db")) {
        Ok(engine) => engine,
        // Starting without writes it had made durable (its Raft votes among them) could let
        // the node vote twice or lead without entries a quorum committed.
        Err(flotilla_storage::StorageError::Corruption(why)) => bail!(
            "the storage in data directory {} is corrupt ({why}); this node will not start, since \
             it would run without writes it had made durable. Rebuild it from its peers: see \
             docs/operating.md, \"A node whose storage is corrupt\"",
            config.data_dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening storage in {}", config.data_dir.display())),
    };
    let engine: Arc<dyn flotilla_storage::Engine> = Arc::new(engine);
    let client_tls = client_tls(&config)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let rpc_addr = config.rpc_listen.clone().context("rpc-listen is set by load_config")?;
    let rpc_listener = tokio::net::TcpListener::bind(&rpc_addr)
        .await
        .with_context(|| format!("listening for other nodes on {rpc_addr}"))?;
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?,
        ),
        None => None,
    };
    let identity_transport = transport.clone();
    let node = Node::start(config.clone(), engine.clone(), transport, addresses.clone(), Arc::new(SystemClock))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(flotilla_rpc::serve(node.clone(), listener, client_tls, stopped(stop_rx.clone())));
    let rpc_server = tokio::spawn(flotilla_rpc::serve_nodes(node.clone(), rpc_listener, tls, stopped(stop_rx)));
    let metrics = metrics_listener.map(|l| {
        let node = node.clone();
        let ready = node.clone();
        let console = node.clone();
        let endpoints = flotilla_rpc::Endpoints {
            metrics: Box::new(move || node.render_metrics()),
            ready: Box::new(move || ready.readiness()),
            console: Box::new(move || {
                serde_json::to_string(&console.console_view()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            }),
        };
        tokio::spawn(flotilla_rpc::serve_metrics(l, endpoints))
    });
    // Both write into the cluster in this node's name: not before it knows the cluster
    // does not know it from before (a registration would be the answer it hears next).
    let joining = config.join.clone().map(|via| {
        let node = node.clone();
        let config = config.clone();
        tokio::spawn(async move {
            node.identity_confirmed().await;
            join(via, config).await
        })
    });
    let bootstrapping = bootstrap_user(&config)?.map(|(name, password)| {
        let node = node.clone();
        tokio::spawn(async move {
            node.identity_confirmed().await;
            create_user(node, name, password).await
        })
    });
    // A node whose metadata replica stopped (a fatal storage error) cannot serve at all:
    // it stops, with an error, rather than answer from a state that no longer moves. A
    // node short of disk space refuses writes until retention frees some.
    let fatal = {
        let node = node.clone();
        let data_dir = config.data_dir.clone();
        let min_free = config.disk_free_min_bytes;
        async move {
            loop {
                // One look at the filesystem a second, for the metrics and the refusal.
                let space = disk_space(&data_dir);
                if let Some((total, free)) = space {
                    node.metrics().set_disk_space(total, free);
                }
                node.set_disk_full(disk_short(&data_dir, space.map(|(_, free)| free), min_free));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if let Some(why) = node.fatal() {
                    return why;
                }
            }
        }
    };
    let fatal = tokio::select! {
        signal = wait_for_signal() => {
            tracing::info!(signal, "shutting down");
            None
        }
        why = fatal => {
            tracing::error!(reason = %why, "this node cannot serve: shutting down");
            Some(why)
        }
        why = confirm_identity(node.clone(), identity_transport, addresses) => {
            tracing::error!(reason = %why, "this node must not take part under its id: shutting down");
            Some(why)
        }
    };
    for task in joining.iter().chain(&metrics).chain(&bootstrapping) {
        task.abort();
    }
    let _ = stop_tx.send(true);
    node.shutdown().await;
    for server in [server, rpc_server] {
        match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
            Err(_) => tracing::warn!("server did not stop within 5 s"),
            _ => {}
        }
    }
    // Make everything durable before exiting.
    let (tx, rx) = std::sync::mpsc::channel();
    engine.on_durable(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    if let Ok(Err(e)) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
        tracing::error!(error = %e, "final sync failed");
    }
    drop(node);
    tracing::info!("stopped");
    match fatal {
        Some(why) => anyhow::bail!("node stopped: {why}; see docs/operating.md to rebuild it from its peers"),
        None => Ok(()),
    }
}

/// The node-to-node TLS material, when the configuration names it. The cluster id in the
/// node's certificate is recorded in the data directory (`cluster-id`) at the first start
/// with TLS; a later start with a certificate of another cluster is refused, since the
/// directory holds that cluster's data and votes.
fn node_tls(config: &NodeConfig) -> anyhow::Result<Option<flotilla_rpc::NodeTls>> {
    let (Some(ca), Some(cert), Some(key)) = (&config.rpc_tls_ca, &config.rpc_tls_cert, &config.rpc_tls_key) else {
        tracing::warn!(
            "node-to-node traffic is not authenticated (no rpc-tls-ca, rpc-tls-cert, rpc-tls-key): any process \
             that reaches the rpc-listen port can speak as a node; see docs/security.md"
        );
        return Ok(None);
    };
    let tls =
        flotilla_rpc::NodeTls::load(config.id, ca, cert, key).map_err(|e| anyhow::anyhow!("node-to-node TLS: {e}"))?;
    let file = config.data_dir.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(recorded) if recorded.trim() == tls.cluster() => {}
        Ok(recorded) => bail!(
            "data directory {} belongs to cluster {}, and this node's certificate ({}) is for cluster {}: \
             a node never joins another cluster with its data",
            config.data_dir.display(),
            recorded.trim(),
            cert.display(),
            tls.cluster()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&file, format!("{}\n", tls.cluster()))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    tracing::info!(cluster = tls.cluster(), "node-to-node traffic is mutual TLS");
    Ok(Some(tls))
}

/// The client listener's TLS, when the configuration names a certificate.
fn client_tls(config: &NodeConfig) -> anyhow::Result<Option<flotilla_rpc::tls::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("client TLS: reading {}", p.display()));
    let ca = config.tls_client_ca.as_deref().map(read).transpose()?;
    tracing::info!(client_certificates = ca.is_some(), "clients connect over TLS");
    Ok(Some(flotilla_rpc::tls::client_listener(&read(cert)?, &read(key)?, ca.as_deref())))
}

/// The file in a data directory naming the cluster it belongs to.
pub const CLUSTER_ID_FILE: &str = "cluster-id";

/// The first wait between attempts to join, doubling up to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(200);
const JOIN_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// How a joining node reaches the cluster's client listeners: over TLS when its own
/// client listener uses TLS (checking theirs against the cluster's authority,
/// `rpc-tls-ca`, and presenting its node certificate, for nodes that require client
/// certificates), as the user in `FLOTILLA_USER` / `FLOTILLA_PASSWORD` when set (with
/// authorization on, one allowed `alter` on the cluster).
fn join_client_config(config: &NodeConfig) -> flotilla_client::ClientConfig {
    let tls = match (&config.tls_cert, &config.rpc_tls_ca) {
        (Some(_), Some(ca)) => {
            let identity = config.rpc_tls_cert.as_deref().zip(config.rpc_tls_key.as_deref());
            match flotilla_client::ClientTls::from_files(ca, identity) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    tracing::warn!(error = %e, "joining without TLS");
                    None
                }
            }
        }
        _ => None,
    };
    let credentials = std::env::var("FLOTILLA_USER")
        .ok()
        .zip(std::env::var("FLOTILLA_PASSWORD").ok())
        .map(|(user, password)| flotilla_client::Credentials::new(user, password));
    flotilla_client::ClientConfig { tls, credentials, ..flotilla_client::ClientConfig::default() }
}

/// Registers this node with the cluster through `via` (AddNode with its id, advertised
/// address and labels), retrying with backoff until it succeeds. The metadata leader
/// then adds it to the metadata group and gives it replicas.
async fn join(via: String, config: NodeConfig) {
    let labels =
        flotilla_client::Labels { region: config.region.clone(), zone: config.zone.clone(), rack: config.rack.clone() };
    let mut backoff = JOIN_BACKOFF_INITIAL;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let attempt = async {
            let client = flotilla_client::Client::connect_with(&via, join_client_config(&config)).await?;
            client.add_node(config.id, config.advertised(), &config.rpc_advertised(), &labels).await
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(via, node = config.id, addr = config.advertised(), attempts, "joined the cluster");
                return;
            }
            // Refused (a removed id, bad labels): an operator must act. Keep trying in
            // case the cause is fixed, but say so loudly.
            Err(e) if e.code().is_some_and(|c| !c.is_retriable() && c.is_definite()) => {
                tracing::error!(via, error = %e, attempts, "the cluster refused this node; retrying");
            }
            Err(e) => tracing::warn!(via, error = %e, attempts, "could not join yet; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
    }
}

pub async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Why the filesystem holding `dir`, with `free` bytes available to this user (`None`:
/// not known), is too full to accept writes (less than `min_free`), or `None`.
/// `min_free` 0 never refuses.
pub(crate) fn disk_short(dir: &std::path::Path, free: Option<u64>, min_free: u64) -> Option<String> {
    if min_free == 0 {
        return None;
    }
    let free = free?;
    (free < min_free).then(|| format!("{free} bytes free on {}, below disk-free-min-bytes {min_free}", dir.display()))
}

/// The size of the filesystem holding `dir` and the bytes on it available to
/// unprivileged users.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some(((st.f_blocks as u64).saturating_mul(frsize), (st.f_bavail as u64).saturating_mul(frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default filter parses, keeps openraft's warnings but the per-message ones,
    /// and keeps their errors.
    #[test]
    fn the_default_log_filter_leaves_out_only_openrafts_per_message_warnings() {
        let filter = tracing_subscriber::EnvFilter::try_new(DEFAULT_LOG_FILTER).unwrap();
        let text = filter.to_string();
        for directive in ["openraft=warn", "openraft::core::heartbeat=error", "openraft::replication=error"] {
            assert!(text.contains(directive), "{directive} in {text}");
        }
        assert!(!DEFAULT_LOG_FILTER.contains(' '), "no whitespace inside a directive: {DEFAULT_LOG_FILTER}");
    }

    fn args() -> NodeArgs {
        NodeArgs {
            config: None,
            log_format: LogFormat::Text,
            id: None,
            listen: None,
            advertise: None,
            rpc_listen: None,
            rpc_advertise: None,
            rpc_tls_ca: None,
            rpc_tls_cert: None,
            rpc_tls_key: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            data_dir: None,
            peers: vec![],
            controllers: vec![],
            region: None,
            zone: None,
            rack: None,
            join: None,
            suspect_after_ms: None,
            dead_after_ms: None,
            auto_balance: None,
            max_concurrent_moves: None,
            move_bytes_per_sec: None,
            metrics_listen: None,
            quiesce_after_ms: None,
            quiesce_keepalive_ms: None,
            replica_lag_time_max_ms: None,
            retention_ms: None,
            retention_bytes: None,
            retention_check_interval_ms: None,
            disk_free_min_bytes: None,
            producer_expiry_ms: None,
            partition_producers_max: None,
            quota_produce_bytes_per_sec: None,
            quota_fetch_bytes_per_sec: None,
            quota_requests_per_sec: None,
            authorization: None,
            superusers: Vec::new(),
            bootstrap_user: None,
        }
    }

    #[test]
    fn toml_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            r#"
id = 2
listen = "127.0.0.1:7071"
data-dir = "/var/lib/flotilla"
peers = ["1=127.0.0.1:7170", "2=127.0.0.1:7171", "3=127.0.0.1:7172"]
zone = "b"
produce-timeout-ms = 5000
"#,
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let c = load_config(&a).unwrap();
        assert_eq!((c.id, c.zone.as_str(), c.produce_timeout_ms), (2, "b", 5000));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/flotilla"));
        a.zone = Some("c".into());
        assert_eq!(load_config(&a).unwrap().zone, "c");
    }

    #[test]
    fn environment_between_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.1:7071\"\nzone = \"file\"\nregion = \"file\"\nretention-ms = 1\n",
        )
        .unwrap();
        let prefix = "FLOTILLA_TEST_ENV_";
        let vars = [
            ("ZONE", "env"),
            ("RETENTION_MS", "60000"),
            ("PEERS", "1=127.0.0.1:7170, 2=127.0.0.1:7171,3=127.0.0.1:7172"),
            ("CONTROLLERS", "1,2"),
            ("AUTO_BALANCE", "false"),
            ("NOT_A_KEY", "ignored"),
        ];
        for (k, v) in vars {
            // SAFETY: the variables have a prefix no other test reads.
            unsafe { std::env::set_var(format!("{prefix}{k}"), v) };
        }
        let mut a = args();
        a.config = Some(path);
        let c = load_config_from(&a, prefix).unwrap();
        assert_eq!((c.id, c.region.as_str(), c.zone.as_str()), (2, "file", "env"), "the environment over the file");
        assert_eq!(c.retention_ms, 60_000);
        assert_eq!(c.peers.len(), 3, "a comma-separated list: {:?}", c.peers);
        assert_eq!(c.controllers, vec![1, 2]);
        assert!(!c.auto_balance);
        assert_eq!(c.data_dir, PathBuf::from("./.flotilla/node-2"), "node N's own directory by default");
        a.zone = Some("flag".into());
        assert_eq!(load_config_from(&a, prefix).unwrap().zone, "flag", "flags over the environment");
        // SAFETY: as above.
        unsafe { std::env::set_var(format!("{prefix}RETENTION_MS"), "soon") };
        let e = format!("{:#}", load_config_from(&a, prefix).unwrap_err());
        assert!(e.to_lowercase().contains("retention-ms"), "the error names the key: {e}");
        for (k, _) in vars {
            // SAFETY: as above.
            unsafe { std::env::remove_var(format!("{prefix}{k}")) };
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "id = 1\nlisten-addr = \"x\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        let e = format!("{:#}", load_config(&a).unwrap_err());
        assert!(e.contains("listen-addr"), "{e}");
        let mut a = args();
        a.id = Some(0);
        assert!(format!("{:#}", load_config(&a).unwrap_err()).contains("node ids start at 1"));
        // A keepalive shorter than the heartbeat it stands in for.
        let mut a = args();
        a.quiesce_keepalive_ms = Some(100);
        let e = format!("{:#}", load_config(&a).unwrap_err());
        assert!(e.contains("quiesce-keepalive-ms (100) must be at least partition-heartbeat-ms (1000)"), "{e}");
        a.quiesce_keepalive_ms = Some(2000);
        assert_eq!(load_config(&a).unwrap().quiesce_keepalive_ms, 2000);
    }

    #[test]
    fn cluster_flags_override_the_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("node").chain(args.iter().copied())).unwrap();
            load_config(&cli.node)
        };
        let c = parse(&[
            "--id",
            "4",
            "--listen",
            "127.0.0.1:7073",
            "--join",
            "127.0.0.1:7070",
            "--suspect-after-ms",
            "500",
            "--dead-after-ms",
            "3000",
            "--auto-balance",
            "false",
            "--max-concurrent-moves",
            "2",
            "--move-bytes-per-sec",
            "1048576",
            "--metrics-listen",
            "127.0.0.1:8073",
        ])
        .unwrap();
        assert_eq!(c.join.as_deref(), Some("127.0.0.1:7070"));
        assert_eq!((c.suspect_after_ms, c.dead_after_ms, c.auto_balance), (500, 3000, false));
        assert_eq!((c.max_concurrent_moves, c.move_bytes_per_sec), (2, 1 << 20));
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:8073"));
        assert_eq!(c.initial_metadata_voters().unwrap(), None, "a joining node waits to be added");
        assert!(parse(&["--auto-balance"]).unwrap().auto_balance);
        // Other nodes get their own listener: the client port + 100 unless said.
        assert_eq!(c.rpc_listen.as_deref(), Some("127.0.0.1:7173"));
        assert_eq!(c.rpc_advertised(), "127.0.0.1:7173");
        let c = parse(&["--listen", "0.0.0.0:7070", "--advertise", "n1:7070", "--rpc-listen", "0.0.0.0:9000"]).unwrap();
        assert_eq!(c.rpc_advertised(), "n1:9000");
        assert_eq!(c.peer_map().unwrap()[&1], "n1:9000", "a single node lists itself at its rpc address");
        let e = format!("{:#}", parse(&["--rpc-tls-ca", "ca.pem"]).unwrap_err());
        assert!(e.contains("go together"), "{e}");
        let e = format!("{:#}", parse(&["--join", "nowhere"]).unwrap_err());
        assert!(e.contains("join"), "{e}");
    }
}
