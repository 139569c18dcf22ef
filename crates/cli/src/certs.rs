//! `flotilla certs`: the certificates of node-to-node mutual TLS (docs/security.md).
//! `certs ca` makes a new cluster's certificate authority, and with it its cluster id;
//! `certs node` signs one node's certificate with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

#[derive(clap::Subcommand, Debug)]
pub enum CertsCmd {
    /// Make a new cluster's certificate authority (DIR/ca.pem, DIR/ca.key) and its
    /// cluster id. Keep ca.key off the nodes: it signs node certificates.
    Ca {
        /// Where to write the authority.
        #[arg(long)]
        dir: PathBuf,
        /// The cluster id (a DNS label; default: 12 random hex digits).
        #[arg(long)]
        cluster_id: Option<String>,
    },
    /// Make what a cluster's nodes need, as far as it is missing: the authority (and a
    /// cluster id) in DIR, and DIR/node-ID.pem and .key for each node listed. Safe to
    /// run again: what exists is kept (a container's start, `deploy/compose`).
    Init {
        /// Where the authority and the certificates are.
        #[arg(long)]
        dir: PathBuf,
        /// The nodes' ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// The cluster id of a new authority (default: 12 random hex digits).
        #[arg(long)]
        cluster_id: Option<String>,
        /// Further names each node certificate is good for (client TLS; repeatable).
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
    },
    /// Sign a client's certificate (DIR/client-NAME.pem, .key), for nodes that require
    /// client certificates (tls-client-ca).
    Client {
        /// The client's name (the certificate's common name).
        #[arg(long)]
        name: String,
        /// Where the authority is (ca.pem, ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write the certificate and key (default: --ca-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Sign node ID's certificate (DIR/node-ID.pem, DIR/node-ID.key) with the authority
    /// in --ca-dir.
    Node {
        /// The node's id.
        #[arg(long)]
        id: u64,
        /// Where the authority is (ca.pem, ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write the node's certificate and key (default: --ca-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Further names the certificate is good for: the host (DNS name or IP address)
        /// clients dial, when the node uses it for client TLS too (repeatable).
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
    },
}

pub fn run(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Ca { dir, cluster_id } => {
            let cluster = match cluster_id {
                Some(c) => c,
                None => new_cluster_id()?,
            };
            make_ca(&dir, &cluster)?;
            println!("cluster {cluster}: certificate authority in {}", dir.join("ca.pem").display());
            Ok(())
        }
        CertsCmd::Init { dir, nodes, cluster_id, names } => {
            let made = init(&dir, &nodes, cluster_id.as_deref(), &names)?;
            let cluster =
                flotilla_rpc::tls::ca_cluster(&std::fs::read(dir.join("ca.pem"))?).map_err(|e| anyhow::anyhow!(e))?;
            println!("cluster {cluster} in {}: {} made, the rest kept", dir.display(), made.len());
            for m in made {
                println!("  {m}");
            }
            Ok(())
        }
        CertsCmd::Client { name, ca_dir, dir } => {
            let dir = dir.unwrap_or_else(|| ca_dir.clone());
            let (cert, key) = make_client(&ca_dir, &dir, &name)?;
            println!("client {name}: {} and {}", cert.display(), key.display());
            Ok(())
        }
        CertsCmd::Node { id, ca_dir, dir, names } => {
            let dir = dir.unwrap_or_else(|| ca_dir.clone());
            let (cert, key) = make_node(&ca_dir, &dir, id, &names)?;
            println!("node {id}: {} and {}", cert.display(), key.display());
            Ok(())
        }
    }
}

/// The authority in `dir` (made, with `cluster` or a new cluster id, when missing) and a
/// certificate for each of `nodes` (made when missing, good also for `names`); what it
/// made.
pub fn init(dir: &Path, nodes: &[u64], cluster: Option<&str>, names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut made = Vec::new();
    if !dir.join("ca.pem").exists() {
        let cluster = match cluster {
            Some(c) => c.to_string(),
            None => new_cluster_id()?,
        };
        make_ca(dir, &cluster)?;
        made.push(format!("the authority of cluster {cluster}"));
    }
    for &id in nodes {
        if !dir.join(format!("node-{id}.pem")).exists() {
            make_node(dir, dir, id, names)?;
            made.push(format!("node {id}'s certificate"));
        }
    }
    Ok(made)
}

/// 12 hex digits from the operating system's randomness.
pub fn new_cluster_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for a cluster id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a new authority for cluster `cluster` to `dir`; refuses to replace one.
pub fn make_ca(dir: &Path, cluster: &str) -> anyhow::Result<()> {
    if dir.join("ca.pem").exists() || dir.join("ca.key").exists() {
        bail!("{} already holds a certificate authority; a new one would be a new cluster", dir.display());
    }
    let (pem, key) = flotilla_rpc::tls::make_ca(cluster).map_err(|e| anyhow::anyhow!(e))?;
    write_pair(dir, "ca", &pem, &key)?;
    Ok(())
}

/// Signs node `id`'s certificate with the authority in `ca_dir`, into `dir`, good also
/// for `names` (hosts clients dial); returns the certificate's and the key's paths.
pub fn make_node(ca_dir: &Path, dir: &Path, id: u64, names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (ca_pem, ca_key) = read_ca(ca_dir)?;
    let (pem, key) = flotilla_rpc::tls::make_node_cert(&ca_pem, &ca_key, id, names).map_err(|e| anyhow::anyhow!(e))?;
    write_pair(dir, &format!("node-{id}"), &pem, &key)
}

/// Signs client `name`'s certificate with the authority in `ca_dir`, into `dir`.
pub fn make_client(ca_dir: &Path, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (ca_pem, ca_key) = read_ca(ca_dir)?;
    let (pem, key) = flotilla_rpc::tls::make_client_cert(&ca_pem, &ca_key, name).map_err(|e| anyhow::anyhow!(e))?;
    write_pair(dir, &format!("client-{name}"), &pem, &key)
}

/// The authority in `ca_dir`: its certificate and key (PEM).
fn read_ca(ca_dir: &Path) -> anyhow::Result<(String, String)> {
    let read = |name: &str| {
        let p = ca_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok((read("ca.pem")?, read("ca.key")?))
}

/// Writes `dir/STEM.key` (owner only) and `dir/STEM.pem`; returns their paths, the
/// certificate's first.
fn write_pair(dir: &Path, stem: &str, pem: &str, key: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_file, key_file) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    write_private(&key_file, key)?;
    std::fs::write(&cert_file, pem).with_context(|| format!("writing {}", cert_file.display()))?;
    Ok((cert_file, key_file))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_then_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), "c1").unwrap();
        let e = make_ca(dir.path(), "c2").unwrap_err().to_string();
        assert!(e.contains("already holds"), "{e}");
        let (cert, key) = make_node(dir.path(), &dir.path().join("n"), 3, &["127.0.0.1".into()]).unwrap();
        let tls = flotilla_rpc::NodeTls::load(3, &dir.path().join("ca.pem"), &cert, &key).unwrap();
        assert_eq!(tls.cluster(), "c1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let id = new_cluster_id().unwrap();
        assert_eq!(id.len(), 12);
        flotilla_rpc::tls::check_cluster_id(&id).unwrap();
    }
}
