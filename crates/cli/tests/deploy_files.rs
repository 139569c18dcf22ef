//! The deployment files under `deploy/` name only what the `flotilla` binary reads, and
//! `deploy/node.toml` names everything it reads.
//!
//! - `deploy/node.toml` is parsed with the node's own parser (`NodeConfig`, which refuses
//!   unknown keys) and must name every key `NodeConfig` has, with its default stated in
//!   the comment above it; the keys it derives come from serialising the default
//!   configuration, so a new key fails this test until it is documented.
//! - The compose files, the Kubernetes manifests and the systemd unit are parsed (YAML,
//!   TOML, the unit's lines); every flag they pass to `flotilla node` must be one that
//!   `flotilla node --help` lists, every node configuration file in them must parse and
//!   validate, and every command line they run (node, health checks, probes) must be
//!   accepted by the binary's own argument parser.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_node::NodeConfig;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn flotilla() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// Every key the node's configuration has, with its default: the default configuration
/// serialised (an unset `Option` is `null`, so it is listed too).
fn config_keys() -> BTreeMap<String, Json> {
    match serde_json::to_value(NodeConfig::default()).unwrap() {
        Json::Object(m) => m.into_iter().collect(),
        other => panic!("NodeConfig serialises to {other}"),
    }
}

/// The flags `flotilla node` takes, from its own `--help`.
fn node_flags() -> BTreeSet<String> {
    let out = flotilla().args(["node", "--help"]).output().unwrap();
    assert!(out.status.success(), "flotilla node --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: BTreeSet<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())
        .filter(|w| !w.is_empty())
        .map(|w| format!("--{w}"))
        .collect();
    assert!(flags.contains("--config") && flags.contains("--peers"), "{flags:?}");
    flags
}

/// Checks `args` (a command line without the binary) with the binary's own parser:
/// `flotilla ARGS --help` fails on an unknown subcommand or flag and succeeds otherwise.
fn assert_cli_accepts(args: &[String], what: &str) {
    let out = flotilla().args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{what}: flotilla refuses `{}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every flag of a `flotilla node` command line is one the binary takes.
fn assert_node_flags(args: &[String], flags: &BTreeSet<String>, what: &str) {
    assert_eq!(args.first().map(String::as_str), Some("node"), "{what}: not a `flotilla node` command: {args:?}");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(flags.contains(flag), "{what}: `flotilla node` has no flag {flag} (it has {flags:?})");
    }
    assert_cli_accepts(args, what);
}

/// Parses a node configuration file as `flotilla node --config` does (a node with no
/// peers forms a cluster of itself) and validates it.
fn node_config(text: &str, what: &str) -> NodeConfig {
    let mut c: NodeConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    c.fill_rpc_listen().unwrap_or_else(|e| panic!("{what}: {e}"));
    if c.peers.is_empty() {
        c.peers = vec![format!("{}={}", c.id, c.rpc_advertised())];
    }
    c.validate().unwrap_or_else(|e| panic!("{what}: invalid: {e}"));
    c
}

/// A default as the comments of deploy/node.toml state it.
fn stated(default: &Json) -> String {
    match default {
        Json::Null => "unset".into(),
        Json::Array(a) if a.is_empty() => "[]".into(),
        // A JSON string of plain text is written as TOML writes it.
        other => other.to_string(),
    }
}

/// The value of `flag` in a command line.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap_or_else(|| panic!("{addr} is not HOST:PORT")).1
}

fn strings(v: &Yaml, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: not a list: {v:?}"))
        .iter()
        .map(|s| match s {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            other => panic!("{what}: {other:?} is not a string"),
        })
        .collect()
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut v = <Yaml as serde::Deserialize>::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
            v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// deploy/node.toml: every key the node reads, each with its default in the comment
/// above it; the values it leaves alone are the defaults; it parses and validates, and so
/// does every key it leaves commented out, once uncommented.
#[test]
fn t10_node_toml_names_every_key_with_its_default() {
    let text = read("deploy/node.toml");
    let parsed = serde_json::to_value(node_config(&text, "deploy/node.toml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let key_line = |key: &str| {
        lines.iter().position(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let mut problems = vec![];
    let mut uncommented = text.clone();
    for (key, default) in config_keys() {
        let Some(at) = key_line(&key) else {
            problems.push(format!("{key}: missing"));
            continue;
        };
        let comment: Vec<&str> =
            lines[..at].iter().rev().take_while(|l| l.starts_with('#')).map(|l| l.trim_start_matches('#')).collect();
        let comment = comment.join(" ").to_lowercase();
        let want = format!("default: {}", stated(&default)).to_lowercase();
        let states_it = comment.match_indices(&want).any(|(i, m)| {
            comment[i + m.len()..].chars().next().is_none_or(|c| c == ' ' || c == '(' || c == ';' || c == ',')
        });
        if !states_it {
            problems.push(format!("{key}: its comment does not say `{want}`"));
        }
        if lines[at].starts_with('#') {
            assert!(default.is_null(), "{key}: commented out, but it has a default to state as its value");
            uncommented = uncommented.replace(lines[at], lines[at].trim_start_matches('#').trim_start());
        } else if !comment.contains("example") && parsed[&key] != default {
            problems.push(format!("{key}: {} is not the default {default} (say \"example\" if meant)", parsed[&key]));
        }
    }
    assert!(problems.is_empty(), "deploy/node.toml:\n{}", problems.join("\n"));
    let all = serde_json::to_value(toml::from_str::<NodeConfig>(&uncommented).expect("uncommented node.toml")).unwrap();
    for (key, _) in config_keys() {
        assert!(!all[&key].is_null(), "{key}: not set even once uncommented");
    }
}

/// The compose files: every node's command line uses flags `flotilla node` takes and
/// is accepted whole; its health check runs a command the binary accepts against the
/// node's own address; its peers name it at its address; its data volume is its data
/// directory; the six-node file spreads its nodes over three zones, two each, its first
/// three (the metadata voters) one in each.
#[test]
fn t20_compose_files_pass_only_what_the_node_reads() {
    let flags = node_flags();
    for (file, nodes) in [("deploy/compose/three-nodes.yml", 3), ("deploy/compose/six-nodes-three-zones.yml", 6)] {
        let docs = yaml_docs(file);
        assert_eq!(docs.len(), 1, "{file}");
        let services = docs[0]["services"].as_mapping().unwrap_or_else(|| panic!("{file}: no services"));
        assert_eq!(services.len(), nodes + 1, "{file}: the nodes and `certs`");
        // The one-shot service that makes the node-to-node certificates.
        let certs = strings(&docs[0]["services"]["certs"]["command"], file);
        assert_eq!(certs[..2], ["certs".to_string(), "init".to_string()], "{file}: {certs:?}");
        assert_cli_accepts(&certs, file);
        let tls_dir = flag_value(&certs, "--dir").expect("--dir");
        let certified: BTreeSet<u64> =
            flag_value(&certs, "--nodes").expect("--nodes").split(',').map(|n| n.parse().unwrap()).collect();
        let mut zones: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut ports = BTreeSet::new();
        for (name, s) in services.iter().filter(|(name, _)| name.as_str() != Some("certs")) {
            let what = format!("{file}: {}", name.as_str().unwrap());
            let args = strings(&s["command"], &what);
            assert_node_flags(&args, &flags, &what);
            let id: u64 = flag_value(&args, "--id").expect("--id").parse().unwrap();
            // Node-to-node TLS with the certificate `certs` made for it, from its volume.
            assert!(certified.contains(&id), "{what}: `certs` makes no certificate for node {id}");
            assert_eq!(flag_value(&args, "--rpc-tls-ca"), Some(format!("{tls_dir}/ca.pem").as_str()), "{what}");
            assert_eq!(
                flag_value(&args, "--rpc-tls-cert"),
                Some(format!("{tls_dir}/node-{id}.pem").as_str()),
                "{what}"
            );
            assert_eq!(flag_value(&args, "--rpc-tls-key"), Some(format!("{tls_dir}/node-{id}.key").as_str()), "{what}");
            assert!(
                strings(&s["volumes"], &what).iter().any(|v| v.ends_with(&format!(":{tls_dir}:ro"))),
                "{what}: the certificates' volume is not mounted read-only at {tls_dir}"
            );
            assert_eq!(
                s["depends_on"]["certs"]["condition"].as_str(),
                Some("service_completed_successfully"),
                "{what}: starts before its certificate exists"
            );
            let listen = flag_value(&args, "--listen").expect("--listen");
            let peers = flag_value(&args, "--peers").expect("--peers");
            assert_eq!(peers.split(',').count(), nodes, "{what}: every node is a peer");
            let (host, client_port) = listen.rsplit_once(':').unwrap();
            let rpc = flag_value(&args, "--rpc-listen").map(str::to_string).unwrap_or_else(|| {
                format!("{host}:{}", client_port.parse::<u16>().unwrap() + flotilla_node::config::RPC_PORT_OFFSET)
            });
            assert!(peers.split(',').any(|p| p == format!("{id}={rpc}")), "{what}: peers do not list {id}={rpc}");
            assert!(ports.insert(port(&rpc).to_string()), "{what}: port {rpc} used twice");
            assert!(ports.insert(port(listen).to_string()), "{what}: port {listen} used twice");
            let metrics = flag_value(&args, "--metrics-listen").expect("--metrics-listen");
            assert!(ports.insert(port(metrics).to_string()), "{what}: port {metrics} used twice");
            let test = strings(&s["healthcheck"]["test"], &what);
            assert_eq!(test[..2], ["CMD".to_string(), "/usr/local/bin/flotilla".to_string()], "{what}: {test:?}");
            assert_cli_accepts(&test[2..], &what);
            assert_eq!(flag_value(&test, "--bootstrap"), Some(listen), "{what}: the check asks another node");
            let data_dir = flag_value(&args, "--data-dir").expect("--data-dir");
            let volumes = strings(&s["volumes"], &what);
            assert!(volumes.iter().any(|v| v.ends_with(&format!(":{data_dir}"))), "{what}: no volume at {data_dir}");
            zones.entry(flag_value(&args, "--zone").unwrap_or_default().to_string()).or_default().push(id);
            assert_eq!(s["network_mode"].as_str(), Some("host"), "{what}: advertised addresses need the host's");
        }
        if nodes == 6 {
            assert_eq!(zones.len(), 3, "{file}: {zones:?}");
            for (zone, ids) in &zones {
                assert_eq!(ids.len(), 2, "{file}: zone {zone}: {ids:?}");
                assert_eq!(ids.iter().filter(|&&i| i <= 3).count(), 1, "{file}: zone {zone} has one voter");
            }
        }
    }
}

/// The Kubernetes manifests: a StatefulSet whose pods read the ConfigMap's file named
/// after them, each a configuration the node accepts, advertising the pod's stable name
/// under the headless service on the ports the pod declares; probes that the binary and
/// the pod serve; volume claims mounted at the data directory; a PodDisruptionBudget
/// over the same pods; and a kustomization that lists every manifest.
#[test]
fn t30_kubernetes_manifests_are_whole_and_name_only_what_the_node_reads() {
    let flags = node_flags();
    let dir = repo().join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    let kustomization = &yaml_docs("deploy/k8s/kustomization.yaml")[0];
    let mut listed = strings(&kustomization["resources"], "kustomization.yaml");
    listed.sort();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
    let mut by_kind: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for f in &files {
        for doc in yaml_docs(&format!("deploy/k8s/{f}")) {
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{f}: a document without kind")).to_string();
            by_kind.entry(kind).or_default().push(doc);
        }
    }
    let sts = &by_kind["StatefulSet"][0];
    let spec = &sts["spec"];
    let name = sts["metadata"]["name"].as_str().unwrap();
    let service_name = spec["serviceName"].as_str().unwrap();
    let replicas = spec["replicas"].as_u64().unwrap();
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);

    let headless = by_kind["Service"]
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(service_name))
        .unwrap_or_else(|| panic!("no service {service_name}"));
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"), "{service_name} is headless");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"].as_bool(), Some(true));
    assert_eq!(&headless["spec"]["selector"], pod_labels);
    let pdb = &by_kind["PodDisruptionBudget"][0];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], pod_labels);

    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"], "the StatefulSet's args");
    assert_node_flags(&args, &flags, "the StatefulSet's args");
    let config_path = flag_value(&args, "--config").expect("--config");
    let (config_dir, config_file) = config_path.rsplit_once('/').unwrap();
    assert_eq!(config_file, "$(POD_NAME).toml");
    let env = container["env"].as_sequence().unwrap();
    assert!(
        env.iter().any(|e| e["name"].as_str() == Some("POD_NAME")
            && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("metadata.name")),
        "POD_NAME comes from the pod's name"
    );
    let port_named = |n: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(n))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {n}"))
            .to_string()
    };
    let (grpc, metrics) = (port_named("grpc"), port_named("metrics"));
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
            .to_string()
    };
    let claim = spec["volumeClaimTemplates"][0]["metadata"]["name"].as_str().expect("a volume claim template");
    let data_mount = mount_of(claim);
    let config_volume =
        pod["volumes"].as_sequence().unwrap().iter().find(|v| !v["configMap"].is_null()).expect("a ConfigMap volume");
    assert_eq!(mount_of(config_volume["name"].as_str().unwrap()), config_dir);
    let config_map = by_kind["ConfigMap"]
        .iter()
        .find(|c| c["metadata"]["name"] == config_volume["configMap"]["name"])
        .expect("the ConfigMap the pods mount");

    // Every file of the ConfigMap is a configuration the node accepts, for the pod it is
    // named after; every pod of the StatefulSet has one.
    let mut ids = BTreeSet::new();
    let mut founders = vec![];
    for (file, text) in config_map["data"].as_mapping().unwrap() {
        let file = file.as_str().unwrap();
        let what = format!("ConfigMap {file}");
        let pod_name = file.strip_suffix(".toml").unwrap_or_else(|| panic!("{what}: not a .toml file"));
        let ordinal: u64 = pod_name.strip_prefix(&format!("{name}-")).unwrap().parse().unwrap();
        let c = node_config(text.as_str().unwrap(), &what);
        assert!(ids.insert(c.id), "{what}: id {} used twice", c.id);
        assert_eq!(c.advertised(), format!("{pod_name}.{service_name}:{grpc}"), "{what}");
        assert_eq!(port(&c.listen), grpc, "{what}: listen");
        assert_eq!(c.metrics_listen.as_deref().map(port), Some(metrics.as_str()), "{what}: metrics-listen");
        assert_eq!(c.data_dir, PathBuf::from(&data_mount), "{what}: data-dir");
        if c.join.is_none() {
            founders.push((ordinal, c));
        }
    }
    for ordinal in 0..replicas {
        assert!(config_map["data"][format!("{name}-{ordinal}.toml")].is_string(), "no file for pod {ordinal}");
    }
    let advertised: BTreeSet<String> =
        founders.iter().map(|(_, c)| format!("{}={}", c.id, c.rpc_advertised())).collect();
    for (ordinal, c) in &founders {
        assert!(*ordinal < replicas, "pod {ordinal} forms the cluster but is not started");
        assert_eq!(c.peers.iter().cloned().collect::<BTreeSet<_>>(), advertised, "pod {ordinal}'s peers");
    }

    // The paths the node's HTTP listener serves (`flotilla_rpc::metrics_http`).
    let readiness = &container["readinessProbe"]["httpGet"];
    assert_eq!(readiness["path"].as_str(), Some("/ready"));
    assert_eq!(readiness["port"].as_str(), Some("metrics"));
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"].as_str(), Some("/healthz"));
    assert_eq!(liveness["port"].as_str(), Some("metrics"));
}

/// The systemd unit runs `flotilla node` with flags it takes, from a configuration
/// whose data directory is the unit's state directory, as a user of its own.
#[test]
fn t40_systemd_unit_runs_the_node_as_configured() {
    let flags = node_flags();
    let unit = read("deploy/systemd/flotilla.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("flotilla.service has no {key}="))
            .to_string()
    };
    let exec: Vec<String> = value("ExecStart").split_whitespace().map(String::from).collect();
    assert_eq!(exec[0], "/usr/local/bin/flotilla");
    assert_node_flags(&exec[1..], &flags, "ExecStart");
    assert_ne!(value("User"), "root");
    let state = format!("/var/lib/{}", value("StateDirectory"));
    let config = node_config(&read("deploy/node.toml"), "deploy/node.toml");
    assert_eq!(config.data_dir, PathBuf::from(state), "node.toml's data-dir is the unit's StateDirectory");
}
