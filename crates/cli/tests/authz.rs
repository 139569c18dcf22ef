//! Users and ACLs over real node processes (docs/security.md, "Users and ACLs"): with
//! authorization on, a user without `write` on a topic cannot produce to it, one
//! without `read` cannot fetch, one without `alter` on the cluster cannot drain a node;
//! each refusal has its code and changes nothing, and the allowed users' traffic goes
//! on. Users and entries are made with the `flotilla user` and `flotilla acl` commands.

mod common;

use std::time::Duration;

use common::*;
use flotilla_client::{Client, ClientConfig, ClientTls, Credentials, ErrorCode, ProducerConfig, Record};
use flotilla_testkit::{ClusterOptions, ProcessCluster};

const ADMIN_PASSWORD: &str = "admin-secret";

fn as_user(user: &str, password: &str) -> ClientConfig {
    ClientConfig {
        credentials: Some(Credentials::new(user, password)),
        retry_deadline: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

async fn connect(cluster: &ProcessCluster, config: ClientConfig) -> Client {
    Client::connect_with(&cluster.bootstrap(), config).await.expect("connect")
}

/// The code of a refused call.
fn code<T: std::fmt::Debug>(r: flotilla_client::Result<T>) -> Option<ErrorCode> {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.code(),
    }
}

/// Runs `flotilla ARGS` as `user` (FLOTILLA_USER, FLOTILLA_PASSWORD) with `input`.
async fn cli_as(cluster: &ProcessCluster, user: &str, password: &str, args: &[&str], input: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_BOOTSTRAP", cluster.bootstrap())
        .env("FLOTILLA_USER", user)
        .env("FLOTILLA_PASSWORD", password)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run flotilla");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write stdin");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("in time").unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn admin_cli(cluster: &ProcessCluster, args: &[&str], input: &str) -> String {
    let (ok, out) = cli_as(cluster, "admin", ADMIN_PASSWORD, args, input).await;
    assert!(ok, "flotilla {args:?} as admin: {out}");
    out
}

/// z10: the bootstrap superuser makes users and ACL entries with the CLI; each user can
/// do what its entries allow and nothing else, each refusal with its code and no effect,
/// while the allowed traffic is all acknowledged and read back; entries and users taken
/// away take effect; passwords never show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z10_acls_decide_who_produces_fetches_and_drains() {
    let _serial = serial().await;
    let options = ClusterOptions {
        node_args: ["--authorization", "--superusers", "admin", "--bootstrap-user", "admin"].map(String::from).to_vec(),
        node_env: vec![("FLOTILLA_BOOTSTRAP_PASSWORD".into(), ADMIN_PASSWORD.into())],
        metrics: true,
        ..ClusterOptions::default()
    };
    let cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);

    // Nobody in particular gets nothing; the bootstrap user is in place once the
    // metadata group takes writes.
    let admin = eventually("the bootstrap user and three live nodes", Duration::from_secs(60), async || {
        let c = Client::connect_with(&cluster.bootstrap(), as_user("admin", ADMIN_PASSWORD))
            .await
            .map_err(|e| e.to_string())?;
        let info = c.describe_cluster().await.map_err(|e| e.to_string())?;
        let alive = info.brokers.iter().filter(|b| b.state == "alive").count();
        if info.metadata_leader.is_some() && alive == 3 { Ok(c) } else { Err(format!("{info:?}")) }
    })
    .await;
    let anonymous = ClientConfig { retry_deadline: Duration::from_secs(5), ..Default::default() };
    for (who, config) in [
        ("anonymous", anonymous),
        ("a wrong password", as_user("admin", "not-it")),
        ("an unknown user", as_user("nobody", "x")),
    ] {
        match Client::connect_with(&cluster.bootstrap(), config).await {
            Ok(c) => assert_eq!(code(c.list_topics().await), Some(ErrorCode::NotAuthenticated), "{who}"),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::NotAuthenticated), "{who}: {e}"),
        }
    }

    create_topic(&admin, "orders", 3).await;
    create_topic(&admin, "audit", 1).await;

    // Users and entries, by the CLI; the password comes from standard input.
    for user in ["writer", "reader", "ops"] {
        let out = admin_cli(&cluster, &["user", "create", user], &format!("{user}-pw\n")).await;
        assert!(out.contains(&format!("User '{user}' saved")), "{out}");
    }
    let users = admin_cli(&cluster, &["user", "list"], "").await;
    for user in ["admin", "writer", "reader", "ops"] {
        assert!(users.contains(user), "{users}");
    }
    assert!(users.contains("SCRAM-SHA-256") && !users.contains("-pw"), "{users}");
    admin_cli(&cluster, &["acl", "add", "--principal", "writer", "--operation", "write", "--topic", "orders"], "")
        .await;
    admin_cli(
        &cluster,
        &["acl", "add", "--principal", "User:reader", "--operation", "read", "--topic", "ord", "--prefix"],
        "",
    )
    .await;
    admin_cli(&cluster, &["acl", "add", "--principal", "ops", "--operation", "alter", "--cluster"], "").await;
    let acls = admin_cli(&cluster, &["acl", "list"], "").await;
    assert_eq!(acls.lines().count(), 4, "a header and three entries: {acls}");
    assert!(acls.contains("User:reader") && acls.contains("prefix"), "{acls}");

    // writer: produces to orders, and nothing else.
    let writer = connect(&cluster, as_user("writer", "writer-pw")).await;
    let producer = writer.producer("orders", ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..200 {
        acked.push(producer.enqueue(keyed(&format!("k{}", i % 5), &format!("v{i}"))).await.expect("enqueue"));
    }
    let audit = writer.producer("audit", ProducerConfig::default());
    assert_eq!(code(audit.send(Record::value("sneaky")).await), Some(ErrorCode::NotAuthorized));
    // Write implies describe (its offsets), not read.
    let mut consumer = writer.consumer("orders", 0, flotilla_client::StartAt::Beginning).await.expect("offsets");
    assert_eq!(code(consumer.poll(Duration::from_millis(200)).await), Some(ErrorCode::NotAuthorized));
    for a in acked {
        a.await.expect("writer's records are acknowledged");
    }

    // reader: reads orders (a prefix entry), writes nothing.
    let reader = connect(&cluster, as_user("reader", "reader-pw")).await;
    let read = drain(&reader, "orders", 3).await;
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), 200, "every acknowledged record read back");
    let reader_producer = reader.producer("orders", ProducerConfig::default());
    assert_eq!(code(reader_producer.send(Record::value("nope")).await), Some(ErrorCode::NotAuthorized));
    // The topics each may see.
    let seen: Vec<String> = reader.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(seen, ["orders"]);

    // Nothing refused was written.
    assert_eq!(admin.list_offsets("audit", 0).await.unwrap().1, 0, "the refused produce wrote nothing");
    let total: u64 = {
        let mut n = 0;
        for p in 0..3 {
            n += admin.list_offsets("orders", p).await.unwrap().1;
        }
        n
    };
    assert_eq!(total, 200, "the reader's refused produce wrote nothing");

    // Draining a node takes alter on the cluster.
    let (ok, out) = cli_as(&cluster, "writer", "writer-pw", &["cluster", "drain", "3"], "").await;
    assert!(!ok && out.contains("NOT_AUTHORIZED"), "{out}");
    let info = admin.describe_cluster().await.unwrap();
    assert!(info.brokers.iter().all(|b| b.state == "alive"), "the refused drain changed nothing: {info:?}");
    let (ok, out) = cli_as(&cluster, "ops", "ops-pw", &["cluster", "drain", "3"], "").await;
    assert!(ok, "ops drains: {out}");
    let (ok, out) = cli_as(&cluster, "ops", "ops-pw", &["cluster", "drain", "3", "--undo"], "").await;
    assert!(ok, "ops undrains: {out}");
    // ops may alter the cluster, not read its topics.
    let ops = connect(&cluster, as_user("ops", "ops-pw")).await;
    assert_eq!(code(ops.describe_topic("orders").await), Some(ErrorCode::NotAuthorized));

    // Taking the entry away takes the right away; so does deleting the user.
    admin_cli(&cluster, &["acl", "remove", "--principal", "writer", "--operation", "write", "--topic", "orders"], "")
        .await;
    eventually("writer loses write", Duration::from_secs(10), async || {
        match producer.send(Record::value("late")).await {
            Err(e) if e.code() == Some(ErrorCode::NotAuthorized) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    admin_cli(&cluster, &["user", "delete", "reader"], "").await;
    eventually("reader is gone", Duration::from_secs(10), async || match reader.list_topics().await {
        Err(e) if e.code() == Some(ErrorCode::NotAuthenticated) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;

    // Every refusal was counted.
    let mut refused = 0.0;
    for id in cluster.ids() {
        let text = http_get(&cluster.metrics_addr(id).unwrap(), "/metrics");
        for line in text.lines().filter(|l| l.starts_with("flotilla_requests_refused_total{reason=\"unauthorized\"}")) {
            refused += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        }
    }
    assert!(refused >= 4.0, "{refused} refusals counted");
}

/// A client of a cluster with client certificates required: certificate `name`
/// (`flotilla certs client --name NAME`), and credentials when given.
async fn cert_client(cluster: &ProcessCluster, name: &str, credentials: Option<Credentials>) -> Client {
    let (cert, key) = cluster.client_cert(name);
    let tls = ClientTls::from_files(&cluster.certs_dir().join("ca.pem"), Some((&cert, &key))).expect("certificates");
    let config = ClientConfig {
        tls: Some(tls),
        credentials,
        retry_deadline: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    connect(cluster, config).await
}

/// A client configuration for `cluster` with certificate `app`.
fn app_config(cluster: &ProcessCluster) -> ClientConfig {
    let (cert, key) = cluster.client_cert("app");
    let tls = ClientTls::from_files(&cluster.certs_dir().join("ca.pem"), Some((&cert, &key))).expect("certificates");
    ClientConfig { tls: Some(tls), retry_deadline: Duration::from_secs(5), ..ClientConfig::default() }
}

/// z11: with client certificates, a certificate's common name is its principal (a
/// superuser named in the configuration, or a user ACL entries name); a password sent
/// over such a connection proves its own user instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z11_a_client_certificate_is_a_principal() {
    let _serial = serial().await;
    let options = ClusterOptions {
        client_tls: true,
        client_certs: true,
        node_args: ["--authorization", "--superusers", "boss"].map(String::from).to_vec(),
        ..ClusterOptions::default()
    };
    let cluster = ProcessCluster::start_with(env!("CARGO_BIN_EXE_flotilla"), 3, options);
    let boss = cert_client(&cluster, "boss", None).await;
    eventually("three live nodes", Duration::from_secs(60), async || {
        let info = boss.describe_cluster().await.map_err(|e| e.to_string())?;
        let alive = info.brokers.iter().filter(|b| b.state == "alive").count();
        if info.metadata_leader.is_some() && alive == 3 { Ok(()) } else { Err(format!("{info:?}")) }
    })
    .await;
    create_topic(&boss, "t", 1).await;
    let app = cert_client(&cluster, "app", None).await;
    let app_producer = app.producer("t", ProducerConfig::default());
    assert_eq!(code(app_producer.send(Record::value("before")).await), Some(ErrorCode::NotAuthorized));
    let write = flotilla_client::AclEntry {
        principal: "app".into(),
        resource: flotilla_client::ResourceType::Topic,
        pattern: flotilla_client::PatternType::Literal,
        name: "t".into(),
        operation: flotilla_client::Operation::Write,
    };
    boss.add_acl(&write).await.expect("the superuser adds an entry");
    eventually("app may write", Duration::from_secs(10), async || app_producer.send(Record::value("after")).await)
        .await;
    // The certificate named app, the password alice's: the request is alice's, and
    // alice may do nothing.
    boss.create_user("alice", "alice-pw").await.expect("the superuser creates a user");
    // Every node knows the new user a moment after the write commits.
    eventually("alice is known everywhere", Duration::from_secs(10), async || {
        for id in cluster.ids() {
            let mut one = app_config(&cluster);
            one.credentials = Some(Credentials::new("alice", "alice-pw"));
            // Bootstrapped from node `id` alone: its metadata answer is the one checked.
            let c = Client::connect_with(&cluster.addr(id), one).await.map_err(|e| format!("node {id}: {e}"))?;
            let p = c.producer("t", ProducerConfig::default());
            match p.send(Record::value("as alice")).await {
                Err(e) if e.code() == Some(ErrorCode::NotAuthorized) => {}
                other => return Err(format!("node {id}: {other:?}")),
            }
        }
        Ok(())
    })
    .await;
    let mut wrong = app_config(&cluster);
    wrong.credentials = Some(Credentials::new("alice", "nope"));
    let refused = Client::connect_with(&cluster.addr(1), wrong).await.map(drop);
    assert_eq!(refused.err().and_then(|e| e.code()), Some(ErrorCode::NotAuthenticated));
    assert_eq!(boss.list_offsets("t", 0).await.unwrap().1, 1, "only app's permitted record was written");
}
