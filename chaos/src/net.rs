//! The network a cluster runs on: one network namespace per node, each joined by a veth
//! pair to a bridge in a namespace of its own (the hub), plus one veth pair from the
//! runner's namespace to the same bridge so that the client reaches every node.
//!
//! ```text
//!   runner ns: <tag>h 10.213.K.254 ──┐
//!   <tag>-n1:  eth0   10.213.K.1  ───┤ br0 in <tag>-hub
//!   <tag>-n2:  eth0   10.213.K.2  ───┤
//!   ...                              ┘
//! ```
//!
//! Faults are iptables DROP rules inside the node namespaces, so a partition is packets
//! really dropped by the kernel (TCP retransmits into the void, no RST). The bridge lives
//! in its own namespace so that the host's firewall (a FORWARD policy of DROP, say) never
//! sees its traffic. Deleting the namespaces removes the veths, the bridge and every rule:
//! [`Net::drop`] does that, and the registry does it after a signal.

use std::process::Command;

use anyhow::{Context, bail};

use crate::registry::{self, PREFIX};

/// A cluster's network.
pub struct Net {
    /// `flch<tag>`: the prefix of this network's namespaces and links.
    name: String,
    hub: String,
    nodes: Vec<String>,
    subnet: u8,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

impl Net {
    /// Creates the namespaces, bridge and links for `nodes` nodes. `tag` tells this run's
    /// names apart (at most 6 characters, so that link names fit in 15); `subnet` is K in
    /// 10.213.K.0/24.
    pub fn create(tag: &str, subnet: u8, nodes: u64) -> anyhow::Result<Net> {
        assert!(tag.len() <= 6, "tag {tag:?} makes link names longer than 15 characters");
        assert!((1..=250).contains(&nodes));
        let name = format!("{PREFIX}{tag}");
        let mut net = Net { hub: format!("{name}-hub"), nodes: Vec::new(), name, subnet };
        // Registered before it exists: a failure half-way still removes it.
        registry::add_netns(&net.hub);
        ip(&["netns", "add", &net.hub])?;
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.hub, "link", "set", "br0", "up"])?;
        for i in 1..=nodes {
            let ns = format!("{}-n{i}", net.name);
            registry::add_netns(&ns);
            net.nodes.push(ns.clone());
            let outer = format!("{}v{i}", net.name);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &outer, "netns", &net.hub])?;
            ip(&["-n", &net.hub, "link", "set", &outer, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.node_ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let host = format!("{}h", net.name);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", "up0", "netns", &net.hub])?;
        ip(&["-n", &net.hub, "link", "set", "up0", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        Ok(net)
    }

    /// Node `id`'s address (ids from 1).
    pub fn node_ip(&self, id: u64) -> String {
        format!("10.213.{}.{id}", self.subnet)
    }

    /// The runner's address on the bridge: where the client's packets come from.
    pub fn host_ip(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    /// How many node namespaces the network has.
    pub fn nodes(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// The namespace of node `id`.
    pub fn netns(&self, id: u64) -> &str {
        &self.nodes[(id - 1) as usize]
    }

    fn iptables(&self, id: u64, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", self.netns(id), "iptables", "-w"]).args(args))
    }

    /// Node `a` and node `b` no longer hear each other (both directions).
    pub fn cut(&self, a: u64, b: u64) -> anyhow::Result<()> {
        self.drop_from(a, b)?;
        self.drop_from(b, a)
    }

    /// Packets from node `from` to node `to` are dropped on arrival; the other way works.
    pub fn drop_from(&self, from: u64, to: u64) -> anyhow::Result<()> {
        self.iptables(to, &["-A", "INPUT", "-s", &self.node_ip(from), "-j", "DROP"])
    }

    /// Every node of `side` and every node of `other` no longer hear each other.
    pub fn split(&self, side: &[u64], other: &[u64]) -> anyhow::Result<()> {
        for a in side {
            for b in other {
                self.cut(*a, *b)?;
            }
        }
        Ok(())
    }

    /// The runner (the client) and node `id` no longer hear each other.
    pub fn cut_client(&self, id: u64) -> anyhow::Result<()> {
        self.iptables(id, &["-A", "INPUT", "-s", &self.host_ip(), "-j", "DROP"])?;
        self.iptables(id, &["-A", "OUTPUT", "-d", &self.host_ip(), "-j", "DROP"])
    }

    /// Sends node `id`'s TCP connections to `to_ip:to_port` to `via_ip:via_port` instead
    /// (DNAT in its namespace's nat table; [`Net::heal`] leaves it in place).
    pub fn dnat(&self, id: u64, to_ip: &str, to_port: u16, via_ip: &str, via_port: u16) -> anyhow::Result<()> {
        let (port, via) = (to_port.to_string(), format!("{via_ip}:{via_port}"));
        let rule = ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", to_ip, "--dport", &port, "-j", "DNAT"];
        self.iptables(id, &[&rule[..], &["--to-destination", &via]].concat())
    }

    /// Removes every rule of every node.
    pub fn heal(&self) -> anyhow::Result<()> {
        for id in 1..=self.nodes.len() as u64 {
            self.iptables(id, &["-F", "INPUT"])?;
            self.iptables(id, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// The rules in force, one line per node that has any (for the report).
    pub fn rules(&self) -> String {
        let mut lines = vec![];
        for (i, ns) in self.nodes.iter().enumerate() {
            let out = Command::new("ip").args(["netns", "exec", ns, "iptables", "-w", "-S"]).output();
            let rules: Vec<String> = out
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.starts_with("-A"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if !rules.is_empty() {
                lines.push(format!("n{}: {}", i + 1, rules.join("; ")));
            }
        }
        lines.join("\n")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.hub]) {
            registry::delete_netns(ns);
            registry::remove_netns(ns);
        }
        // The host end goes with its peer in the hub; this is for a half-made network.
        let _ = Command::new("ip").args(["link", "del", &format!("{}h", self.name)]).output();
    }
}
