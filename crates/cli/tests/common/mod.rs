//! Helpers shared by the end-to-end tests: a cluster of real `flotilla node` processes on
//! RocksDB, talking gRPC, and a client that waits for it to be ready.

#![allow(clippy::disallowed_methods, reason = "test helpers wait in real time for real processes")]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientError, PartitionId, Record, StartAt};
use flotilla_testkit::ProcessCluster;

/// The end-to-end tests run one at a time: each starts three node processes, and
/// several clusters at once on two cores would starve their elections.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn cluster(nodes: u64) -> ProcessCluster {
    ProcessCluster::start(env!("CARGO_BIN_EXE_flotilla"), nodes)
}

/// Retries `f` until it succeeds or `within` passes.
pub async fn eventually<T, E: std::fmt::Display>(
    what: &str,
    within: Duration,
    mut f: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    let started = Instant::now();
    let mut last: Option<String> = None;
    let mut attempts = 0u32;
    loop {
        // An attempt that never returns fails the test at the deadline, never hangs it.
        let attempt_started = Instant::now();
        attempts += 1;
        let attempt = tokio::time::timeout_at(deadline.into(), f()).await;
        let Ok(attempt) = attempt else {
            // Say whether one attempt hung or many failed and the last was cut short.
            panic!(
                "{what}: attempt {attempts} still running after {:?} (it started {:?} in); the attempt before it: {}",
                attempt_started.elapsed(),
                attempt_started - started,
                last.as_deref().unwrap_or("none"),
            )
        };
        match attempt {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: still failing after {within:?}: {e}"),
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
}

/// A client connected once every node has registered and the metadata group has a leader.
pub async fn ready_client(c: &ProcessCluster, nodes: usize) -> Client {
    eventually("cluster ready", Duration::from_secs(60), async || {
        let client = Client::connect(&c.bootstrap()).await?;
        let info = client.describe_cluster().await?;
        if info.brokers.len() >= nodes && info.metadata_leader.is_some() {
            Ok(client)
        } else {
            Err(ClientError::Closed)
        }
    })
    .await
}

/// Creates a topic and waits until every partition has a leader.
pub async fn create_topic(client: &Client, name: &str, partitions: u32) {
    eventually("create topic", Duration::from_secs(30), async || {
        match client.create_topic(name, partitions, 3).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(flotilla_client::ErrorCode::TopicExists) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
    eventually("partition leaders", Duration::from_secs(30), async || {
        let t = client.describe_topic(name).await?;
        if t.partitions.len() == partitions as usize && t.partitions.iter().all(|p| p.leader.is_some()) {
            Ok(())
        } else {
            Err(ClientError::Closed)
        }
    })
    .await;
}

/// Reads every partition of `topic` from the beginning to its current high watermark:
/// partition → [(offset, value)].
pub async fn drain(client: &Client, topic: &str, partitions: u32) -> BTreeMap<PartitionId, Vec<(u64, String)>> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let (_, end) =
            eventually("list offsets", Duration::from_secs(30), async || client.list_offsets(topic, p).await).await;
        let mut consumer = eventually("consumer", Duration::from_secs(30), async || {
            client.consumer(topic, p, StartAt::Beginning).await
        })
        .await;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.position() < end {
            assert!(Instant::now() < deadline, "partition {p}: stuck at {} of {end}", consumer.position());
            match consumer.poll(Duration::from_millis(500)).await {
                Ok(records) => {
                    for r in records {
                        got.push((r.offset, String::from_utf8(r.record.value.to_vec()).expect("utf-8 values")));
                    }
                }
                Err(e) => {
                    assert!(e.code() != Some(flotilla_client::ErrorCode::CorruptBatch), "corrupt batch: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        out.insert(p, got);
    }
    out
}

pub fn keyed(key: &str, value: &str) -> Record {
    Record { key: Some(key.to_string().into()), value: value.to_string().into(), ..Record::default() }
}

/// The node leading the most partitions of `topic`.
pub async fn busiest_leader(client: &Client, topic: &str) -> u64 {
    let t = client.describe_topic(topic).await.expect("describe topic");
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for p in &t.partitions {
        if let Some(l) = p.leader {
            *count.entry(l).or_default() += 1;
        }
    }
    count.into_iter().max_by_key(|(id, n)| (*n, u64::MAX - id)).expect("some leader").0
}

/// Runs the `flotilla` binary with `args` against `bootstrap` (FLOTILLA_BOOTSTRAP) and
/// waits for it to finish (at most 60 s).
pub async fn cli(bootstrap: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(args).env("FLOTILLA_BOOTSTRAP", bootstrap).kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Ok(out) => out.expect("run flotilla"),
        Err(_) => panic!("flotilla {args:?} still running after 60 s"),
    }
}

/// [`cli`] with `input` on its standard input.
pub async fn cli_with_input(bootstrap: &str, args: &[&str], input: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(args)
        .env("FLOTILLA_BOOTSTRAP", bootstrap)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run flotilla");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write stdin");
    drop(stdin);
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(out) => out.expect("run flotilla"),
        Err(_) => panic!("flotilla {args:?} still running after 60 s"),
    }
}

/// The standard output of a command that must succeed.
pub async fn cli_ok(bootstrap: &str, args: &[&str]) -> String {
    let out = cli(bootstrap, args).await;
    assert!(
        out.status.success(),
        "flotilla {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A base port for `flotilla dev --nodes n --base-port P`: P..P+n (gRPC), P+100..P+100+n
/// (node-to-node) and P+1000..P+1000+n (metrics) were all free a moment ago. Below the
/// ephemeral range.
pub fn free_dev_base_port(n: u16) -> u16 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut candidate = 10_000 + ((seed ^ std::process::id().wrapping_mul(2_654_435_761)) % 20_000) as u16;
    for _ in 0..500 {
        let ports = (0..n).flat_map(|i| [candidate + i, candidate + 100 + i, candidate + 1000 + i]);
        let held: Vec<_> = ports.map(|p| std::net::TcpListener::bind(("127.0.0.1", p))).collect();
        if held.iter().all(Result::is_ok) {
            return candidate;
        }
        candidate = 10_000 + (candidate - 10_000 + 7919) % 20_000;
    }
    panic!("no free run of ports for a dev cluster")
}

/// A `flotilla dev` process in a process group of its own (its nodes inherit the group),
/// with its output read line by line. Dropping it kills the whole group.
pub struct Dev {
    child: tokio::process::Child,
    pid: i32,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line printed so far (stdout and stderr).
    pub output: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Dev {
    /// Starts `flotilla dev ARGS --dir <a temp dir>`.
    pub fn start(args: &[&str]) -> Dev {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::Builder::new().prefix("flotilla-dev-").tempdir().expect("temp dir");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("dev")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .env("RUST_LOG", "info,openraft=warn")
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start flotilla dev");
        let pid = child.id().expect("pid") as i32;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx.send(l);
            }
        });
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Dev { child, pid, lines, output: vec![], dir }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits (at most `within`) for a line containing `needle`; the line, or `None`.
    pub async fn wait_line(&mut self, needle: &str, within: Duration) -> Option<String> {
        if let Some(l) = self.output.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            self.output.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// Sends `signal` to the dev process only (not to its nodes).
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Its exit status, once it exits within `within`; the rest of its output is read.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let status = tokio::time::timeout(within, self.child.wait()).await.ok()?.ok();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(2), self.lines.recv()).await {
            self.output.push(line);
        }
        status
    }

    /// Whether any process of its group (the dev process, a node) still runs, waiting up
    /// to `within` for them to go.
    pub async fn group_alive_after(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let alive = unsafe { libc::kill(-self.pid, 0) } == 0;
            if !alive || Instant::now() > deadline {
                return alive;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything printed so far, for failure messages.
    pub fn transcript(&self) -> String {
        self.output.join("\n")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }
}

/// A raw client of node `id`'s client API, taking answers up to 64 MiB.
pub async fn raw(
    cluster: &ProcessCluster,
    id: u64,
) -> flotilla_proto::v1::flotilla_client::FlotillaClient<tonic::transport::Channel> {
    flotilla_proto::v1::flotilla_client::FlotillaClient::connect(format!("http://{}", cluster.addr(id)))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// One HTTP GET over a plain TCP connection; the whole answer, headers included.
fn http_answer(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// One HTTP GET that must answer 200; the whole answer, headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    let out = http_answer(addr, path).expect("GET from the metrics endpoint");
    assert!(out.starts_with("HTTP/1.1 200"), "{}", &out[..out.len().min(200)]);
    out
}

/// One HTTP GET: the status code and the body (none: no answer).
pub fn http_status(addr: &str, path: &str) -> Option<(u16, String)> {
    let out = http_answer(addr, path).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n")?.1.to_string()))
}
