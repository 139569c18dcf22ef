//! Mutual TLS between nodes (docs/security.md, "The cluster's own traffic").
//!
//! Every node holds a certificate signed by its cluster's certificate authority and
//! naming it `node-ID.CLUSTER.flotilla` (a DNS subject alternative name; `flotilla
//! certs` and `flotilla dev` make them). The node-to-node listener takes only
//! connections that present a certificate the authority signed; a node dialling a peer
//! checks that the peer's certificate names the node it meant to reach; and a message
//! is served only if the sender it claims (`RaftRequest::from_node`) is the node its
//! connection's certificate names. So a process without a certificate cannot speak to
//! the cluster's Raft groups at all, and one with node 2's certificate cannot speak as
//! node 3 or as a node of another cluster.

use std::path::Path;
use std::time::Duration;

use flotilla_types::{NodeId, limits};
use rustls_pki_types::{CertificateDer, ServerName};
pub use tonic::transport::ServerTlsConfig;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The DNS name in node `node`'s certificate in cluster `cluster`.
pub fn node_name(cluster: &str, node: NodeId) -> String {
    format!("node-{node}.{cluster}.flotilla")
}

/// Longest cluster id (a DNS label).
pub const CLUSTER_ID_BYTES_MAX: usize = 63;

/// A cluster id is one DNS label: 1 to 63 lowercase letters, digits and inner hyphens.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= CLUSTER_ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster id '{id}' must be 1 to {CLUSTER_ID_BYTES_MAX} lowercase letters, digits and inner hyphens"
        ))
    }
}

/// The (cluster, node) a certificate's DNS names make it: the first name of the form
/// `node-ID.CLUSTER.flotilla`.
pub fn identity_of(cert_der: &[u8]) -> Result<(String, NodeId), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(name) => parse_node_name(name),
            _ => None,
        })
        .ok_or_else(|| "the certificate names no node (a DNS name node-ID.CLUSTER.flotilla)".to_string())
}

/// The common name of a certificate (DER), if it has one that is UTF-8.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

fn parse_node_name(name: &str) -> Option<(String, NodeId)> {
    let rest = name.strip_prefix("node-")?.strip_suffix(".flotilla")?;
    let (id, cluster) = rest.split_once('.')?;
    let id: NodeId = id.parse().ok().filter(|id| *id > 0)?;
    check_cluster_id(cluster).ok()?;
    Some((cluster.to_string(), id))
}

/// The first certificate of a PEM file, as DER.
fn first_cert_der(pem: &[u8], what: &str) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("{what}: not a PEM certificate: {e}"))?;
    Ok(pem.contents)
}

/// TLS for the client listener: the node's certificate for clients (it must name the
/// host they dial), and, with `client_ca_pem`, a certificate signed by that authority
/// required of every client.
pub fn client_listener(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: Option<&[u8]>) -> ServerTlsConfig {
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(Duration::from_millis(limits::CONNECTION_GREETING_MS));
    match client_ca_pem {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

/// The common name of cluster `cluster`'s certificate authority.
fn ca_common_name(cluster: &str) -> String {
    format!("flotilla cluster {cluster}")
}

/// A new certificate authority for a new cluster `cluster`: its certificate and private
/// key, PEM. The cluster id is in the authority's common name, and in every node
/// certificate it signs.
pub fn make_ca(cluster: &str) -> Result<(String, String), String> {
    check_cluster_id(cluster)?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, ca_common_name(cluster));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The cluster id in an authority's certificate (PEM) made by [`make_ca`].
pub fn ca_cluster(ca_pem: &[u8]) -> Result<String, String> {
    let der = first_cert_der(ca_pem, "the certificate authority")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default();
    let cluster = cn
        .strip_prefix("flotilla cluster ")
        .ok_or_else(|| format!("the authority's common name '{cn}' is not 'flotilla cluster CLUSTER-ID'"))?;
    check_cluster_id(cluster)?;
    Ok(cluster.to_string())
}

/// A certificate for node `node`, signed by the authority (certificate and key, PEM):
/// the node's certificate and private key, PEM, naming it `node-ID.CLUSTER.flotilla`,
/// good for both ends of a node-to-node connection. `extra_names` are further DNS
/// names or IP addresses it may be reached at (informational: peers check the node
/// name).
pub fn make_node_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    node: NodeId,
    extra_names: &[String],
) -> Result<(String, String), String> {
    if node == 0 {
        return Err("node ids start at 1".into());
    }
    let cluster = ca_cluster(ca_pem.as_bytes())?;
    let issuer = issuer(ca_pem, ca_key_pem)?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut names = vec![node_name(&cluster, node)];
    names.extend(extra_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node_name(&cluster, node));
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The authority (certificate and key, PEM) as the signer of new certificates.
fn issuer(ca_pem: &str, ca_key_pem: &str) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, String> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| format!("the authority's key: {e}"))?;
    rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|e| format!("the authority's certificate: {e}"))
}

/// A client's certificate signed by the authority (certificate and key, PEM): common
/// name `name`, good for TLS client authentication only, naming no node (so the
/// node-to-node listener serves it nothing).
pub fn make_client_cert(ca_pem: &str, ca_key_pem: &str, name: &str) -> Result<(String, String), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > CLUSTER_ID_BYTES_MAX || !name.chars().all(ok_char) || name.starts_with('.') {
        return Err(format!(
            "client name '{name}' must be 1 to {CLUSTER_ID_BYTES_MAX} letters, digits, '-', '_' or '.' (not first)"
        ));
    }
    let issuer = issuer(ca_pem, ca_key_pem)?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// One node's TLS material for node-to-node traffic.
#[derive(Clone)]
pub struct NodeTls {
    cluster: String,
    node: NodeId,
    ca: Certificate,
    identity: Identity,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("cluster", &self.cluster).field("node", &self.node).finish()
    }
}

impl NodeTls {
    /// Reads the authority's certificate and node `node`'s certificate and key (PEM).
    /// Refuses a certificate that does not name this node.
    pub fn load(node: NodeId, ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        NodeTls::from_pem(node, &ca_pem, &cert_pem, &key_pem).map_err(|e| format!("{}: {e}", cert.display()))
    }

    pub fn from_pem(node: NodeId, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<NodeTls, String> {
        first_cert_der(ca_pem, "the certificate authority")?;
        let (cluster, named) = identity_of(&first_cert_der(cert_pem, "the node certificate")?)?;
        if named != node {
            return Err(format!("the certificate is node {named}'s (in cluster {cluster}), and this node is {node}"));
        }
        Ok(NodeTls {
            cluster,
            node,
            ca: Certificate::from_pem(ca_pem),
            identity: Identity::from_pem(cert_pem, key_pem),
        })
    }

    /// The cluster this node's certificate places it in.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The node-to-node listener's TLS: this node's certificate, and a certificate the
    /// authority signed required of every connection.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(Duration::from_millis(limits::CONNECTION_GREETING_MS))
    }

    /// TLS for a connection to node `target`: its certificate must name it, in this
    /// cluster; this node presents its own.
    pub fn client(&self, target: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_name(&self.cluster, target))
    }

    /// Whether the connection's peer certificate (the authority already checked its
    /// signature in the handshake) names node `from` of this cluster.
    pub fn check_sender(&self, peer: Option<&[CertificateDer<'static>]>, from: NodeId) -> Result<(), String> {
        let Some(cert) = peer.and_then(|chain| chain.first()) else {
            return Err("the connection presented no certificate".into());
        };
        let name = node_name(&self.cluster, from);
        let server_name = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
        let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable peer certificate: {e:?}"))?;
        cert.verify_is_valid_for_subject_name(&server_name)
            .map_err(|_| format!("the message says it is from node {from}, and the sender's certificate is not {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        pem: String,
        key: String,
    }

    fn ca() -> Ca {
        let (pem, key) = make_ca("c0ffee").unwrap();
        Ca { pem, key }
    }

    /// A certificate with just `name`, signed by `ca` (what an attacker holding the
    /// authority could not make, and a careless operator could).
    fn node_cert(ca: &Ca, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem, rcgen::KeyPair::from_pem(&ca.key).unwrap()).unwrap();
        (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn made_certificates_name_the_cluster_and_the_node() {
        let ca = ca();
        assert_eq!(ca_cluster(ca.pem.as_bytes()).unwrap(), "c0ffee");
        let (cert, key) = make_node_cert(&ca.pem, &ca.key, 7, &["10.0.0.7".into()]).unwrap();
        let tls = NodeTls::from_pem(7, ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(tls.cluster(), "c0ffee");
        assert!(make_node_cert(&ca.pem, &ca.key, 0, &[]).is_err());
        assert!(make_ca("Not A Label").is_err());
    }

    #[test]
    fn a_certificate_names_its_node_and_cluster() {
        let ca = ca();
        let (cert, key) = node_cert(&ca, "node-2.c0ffee.flotilla");
        let tls = NodeTls::from_pem(2, ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(tls.cluster(), "c0ffee");
        let e = NodeTls::from_pem(3, ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(e.contains("node 2's") && e.contains("this node is 3"), "{e}");

        let der = CertificateDer::from(first_cert_der(cert.as_bytes(), "cert").unwrap());
        let chain = [der];
        tls.check_sender(Some(&chain), 2).unwrap();
        let e = tls.check_sender(Some(&chain), 3).unwrap_err();
        assert!(e.contains("node-3.c0ffee.flotilla"), "{e}");
        assert!(tls.check_sender(None, 2).unwrap_err().contains("no certificate"));

        // Node 2 of another cluster is not node 2 of this one.
        let (other, _) = node_cert(&ca, "node-2.other.flotilla");
        let chain = [CertificateDer::from(first_cert_der(other.as_bytes(), "cert").unwrap())];
        assert!(tls.check_sender(Some(&chain), 2).is_err());
    }

    #[test]
    fn names_and_cluster_ids() {
        assert_eq!(parse_node_name("node-12.abc-1.flotilla"), Some(("abc-1".into(), 12)));
        for bad in ["node-0.a.flotilla", "node-x.a.flotilla", "node-1.A.flotilla", "node-1.a.example", "1.a.flotilla"] {
            assert_eq!(parse_node_name(bad), None, "{bad}");
        }
        check_cluster_id("f3a9c2").unwrap();
        for bad in ["", "-a", "a-", "a.b", "A", &"a".repeat(64)] {
            assert!(check_cluster_id(bad).is_err(), "{bad}");
        }
        let ca = ca();
        let (cert, key) = node_cert(&ca, "localhost");
        let e = NodeTls::from_pem(1, ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(e.contains("names no node"), "{e}");
    }
}
