//! A node's configuration: a TOML file (`flotilla node --config FILE`) or flags.
//! Keys are kebab-case; every key has a default; `validate` explains what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_metadata::Labels;
use flotilla_types::{NodeId, limits};
use serde::{Deserialize, Serialize};

/// How many of the first peers vote in the metadata group by default.
pub const DEFAULT_CONTROLLERS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// This node's id, 1 or more, unique in the cluster.
    pub id: NodeId,
    /// Address to listen on for clients and peers (host:port).
    pub listen: String,
    /// Address other nodes and clients use to reach this one; defaults to `listen`.
    pub advertise: Option<String>,
    /// Where this node keeps its data.
    pub data_dir: PathBuf,
    /// Every node of the initial cluster, this one included, as `ID=HOST:PORT`.
    pub peers: Vec<String>,
    /// The metadata group's voters; defaults to the first three peers by id.
    pub controllers: Vec<NodeId>,
    pub region: String,
    pub zone: String,
    pub rack: String,
    /// How long a produce may wait for its batch to commit before answering TIMEOUT.
    pub produce_timeout_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            listen: "127.0.0.1:7070".into(),
            advertise: None,
            data_dir: PathBuf::from("./.flotilla/node-1"),
            peers: Vec::new(),
            controllers: Vec::new(),
            region: "local".into(),
            zone: String::new(),
            rack: String::new(),
            produce_timeout_ms: 10_000,
        }
    }
}

impl NodeConfig {
    pub fn advertised(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
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
        out.entry(self.id).or_insert_with(|| self.advertised().to_string());
        Ok(out)
    }

    /// The metadata group's voters.
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
        let peers = self.peer_map()?;
        if let Some(a) = peers.get(&self.id)
            && a != self.advertised()
        {
            return Err(format!(
                "peers: this node ({}) is listed at {a} but advertises {}",
                self.id,
                self.advertised()
            ));
        }
        let controllers = self.controller_ids()?;
        if !controllers.contains(&self.id) {
            return Err(format!(
                "node {} is not a metadata voter ({controllers:?}); nodes beyond the controllers are not supported yet",
                self.id
            ));
        }
        for (name, l) in [("region", &self.region), ("zone", &self.zone), ("rack", &self.rack)] {
            if l.len() > limits::LABEL_BYTES_MAX {
                return Err(format!("{name}: over {} bytes", limits::LABEL_BYTES_MAX));
            }
        }
        if self.produce_timeout_ms == 0 {
            return Err("produce-timeout-ms must be positive".into());
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
        assert!(c.validate().unwrap_err().contains("advertises"));
    }
}
