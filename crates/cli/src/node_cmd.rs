//! `flotilla node`: one node on RocksDB, serving gRPC (and, when asked, Prometheus
//! metrics over HTTP), until SIGTERM or Ctrl-C. With `--join` it registers itself with a
//! running cluster instead of forming one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use flotilla_node::{AddressBook, Node, NodeConfig};
use flotilla_rpc::GrpcTransport;
use flotilla_storage_rocksdb::RocksEngine;
use flotilla_types::SystemClock;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// A TOML file with the node's configuration (keys as in docs/configuration.md);
    /// flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (1 or more).
    #[arg(long)]
    id: Option<u64>,
    /// Address to listen on (host:port).
    #[arg(long)]
    listen: Option<String>,
    /// Address others reach this node at, if not --listen.
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The initial cluster, as ID=HOST:PORT, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// The metadata group's voters (default: the first three peers).
    #[arg(long, value_delimiter = ',')]
    controllers: Vec<u64>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    rack: Option<String>,
    /// Join a running cluster through this node (host:port): no static peers are needed;
    /// the node registers itself there, retrying until it succeeds.
    #[arg(long)]
    join: Option<String>,
    /// Controller: a node not heard from for this long is suspected.
    #[arg(long)]
    suspect_after_ms: Option<u64>,
    /// Controller: a node not heard from for this long is dead; its replicas are
    /// re-created elsewhere.
    #[arg(long)]
    dead_after_ms: Option<u64>,
    /// Controller: keep replicas and leaders balanced without being asked
    /// (`--auto-balance false` to turn off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    auto_balance: Option<bool>,
    /// Controller: partition moves in progress at once.
    #[arg(long)]
    max_concurrent_moves: Option<usize>,
    /// Log bytes per second this node sends to replicas catching up in moves.
    #[arg(long)]
    move_bytes_per_sec: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Quiesce a partition group idle this long (no heartbeats, no election timers); 0:
    /// never.
    #[arg(long)]
    quiesce_after_ms: Option<u64>,
    /// A quiesced group's leader heartbeats this often; a quiet follower that hears
    /// nothing for three of these starts its own timers.
    #[arg(long)]
    quiesce_keepalive_ms: Option<u64>,
    /// A replica silent toward its partition's leader for this long is out of sync
    /// (default 15000; at least twice quiesce-keepalive-ms).
    #[arg(long)]
    replica_lag_time_max_ms: Option<u64>,
    /// Retention for topics that set none: delete records older than this (default 7
    /// days; 0: keep forever).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Retention for topics that set none: bytes kept per partition (default 0: no limit).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// How often partition leaders apply retention (default 5000).
    #[arg(long)]
    retention_check_interval_ms: Option<u64>,
    /// Refuse produce with DISK_FULL below this much free space on the data directory's
    /// filesystem (default 268435456; 0: never).
    #[arg(long)]
    disk_free_min_bytes: Option<u64>,
    /// Forget an idempotent producer idle for this long, per partition (default 86400000,
    /// one day; Kafka's producer.id.expiration.ms).
    #[arg(long)]
    producer_expiry_ms: Option<u64>,
    /// Idempotent producers one partition remembers at most (default 10000).
    #[arg(long)]
    partition_producers_max: Option<u32>,
}

pub fn load_config(args: &NodeArgs) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<NodeConfig>(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    if let Some(id) = args.id {
        config.id = id;
        if args.data_dir.is_none() && args.config.is_none() {
            config.data_dir = PathBuf::from(format!("./.flotilla/node-{id}"));
        }
    }
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    if let Some(a) = &args.advertise {
        config.advertise = Some(a.clone());
    }
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if !args.peers.is_empty() {
        config.peers = args.peers.clone();
    }
    if !args.controllers.is_empty() {
        config.controllers = args.controllers.clone();
    }
    if let Some(r) = &args.region {
        config.region = r.clone();
    }
    if let Some(z) = &args.zone {
        config.zone = z.clone();
    }
    if let Some(r) = &args.rack {
        config.rack = r.clone();
    }
    if let Some(j) = &args.join {
        config.join = Some(j.clone());
    }
    if let Some(ms) = args.suspect_after_ms {
        config.suspect_after_ms = ms;
    }
    if let Some(ms) = args.dead_after_ms {
        config.dead_after_ms = ms;
    }
    if let Some(b) = args.auto_balance {
        config.auto_balance = b;
    }
    if let Some(n) = args.max_concurrent_moves {
        config.max_concurrent_moves = n;
    }
    if let Some(n) = args.move_bytes_per_sec {
        config.move_bytes_per_sec = n;
    }
    if let Some(m) = &args.metrics_listen {
        config.metrics_listen = Some(m.clone());
    }
    if let Some(ms) = args.quiesce_after_ms {
        config.quiesce_after_ms = ms;
    }
    if let Some(ms) = args.quiesce_keepalive_ms {
        config.quiesce_keepalive_ms = ms;
    }
    if let Some(ms) = args.replica_lag_time_max_ms {
        config.replica_lag_time_max_ms = ms;
    }
    if let Some(ms) = args.retention_ms {
        config.retention_ms = ms;
    }
    if let Some(b) = args.retention_bytes {
        config.retention_bytes = b;
    }
    if let Some(ms) = args.retention_check_interval_ms {
        config.retention_check_interval_ms = ms;
    }
    if let Some(b) = args.disk_free_min_bytes {
        config.disk_free_min_bytes = b;
    }
    if let Some(ms) = args.producer_expiry_ms {
        config.producer_expiry_ms = ms;
    }
    if let Some(n) = args.partition_producers_max {
        config.partition_producers_max = n;
    }
    if config.peers.is_empty() {
        // A single-node cluster of itself.
        config.peers = vec![format!("{}={}", config.id, config.advertised())];
    }
    if let Err(e) = config.validate() {
        bail!("invalid configuration: {e}");
    }
    Ok(config)
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = load_config(&args)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
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
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?,
        ),
        None => None,
    };
    let addresses = AddressBook::new();
    let transport = GrpcTransport::new(config.id, addresses.clone());
    let node = Node::start(config.clone(), engine.clone(), transport, addresses, Arc::new(SystemClock))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flotilla_rpc::serve(node.clone(), listener, async move {
        let _ = stop_rx.await;
    }));
    let metrics = metrics_listener.map(|l| {
        let node = node.clone();
        let ready = node.clone();
        let endpoints = flotilla_rpc::Endpoints {
            metrics: Box::new(move || node.render_metrics()),
            ready: Box::new(move || ready.readiness()),
        };
        tokio::spawn(flotilla_rpc::serve_metrics(l, endpoints))
    });
    let joining = config.join.clone().map(|via| tokio::spawn(join(via, config.clone())));
    // A node whose metadata replica stopped (a fatal storage error) cannot serve at all:
    // it stops, with an error, rather than answer from a state that no longer moves. A
    // node short of disk space refuses writes until retention frees some.
    let fatal = {
        let node = node.clone();
        let data_dir = config.data_dir.clone();
        let min_free = config.disk_free_min_bytes;
        async move {
            loop {
                node.set_disk_full(disk_short(&data_dir, min_free));
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
    };
    for task in joining.iter().chain(&metrics) {
        task.abort();
    }
    let _ = stop_tx.send(());
    node.shutdown().await;
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
        Err(_) => tracing::warn!("server did not stop within 5 s"),
        _ => {}
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

/// The first wait between attempts to join, doubling up to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(200);
const JOIN_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

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
            let client = flotilla_client::Client::connect(&via).await?;
            client.add_node(config.id, config.advertised(), &labels).await
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

/// Why the filesystem holding `dir` is too full to accept writes (less than `min_free`
/// bytes available to this user), or `None`. `min_free` 0 never refuses.
pub(crate) fn disk_short(dir: &std::path::Path, min_free: u64) -> Option<String> {
    if min_free == 0 {
        return None;
    }
    let free = free_bytes(dir)?;
    (free < min_free).then(|| format!("{free} bytes free on {}, below disk-free-min-bytes {min_free}", dir.display()))
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NodeArgs {
        NodeArgs {
            config: None,
            id: None,
            listen: None,
            advertise: None,
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
peers = ["1=127.0.0.1:7070", "2=127.0.0.1:7071", "3=127.0.0.1:7072"]
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
        assert!(e.contains("quiesce-keepalive-ms (100) must be at least partition-heartbeat-ms (500)"), "{e}");
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
        let e = format!("{:#}", parse(&["--join", "nowhere"]).unwrap_err());
        assert!(e.contains("join"), "{e}");
    }
}
