//! `flotilla user` and `flotilla acl`: the cluster's users and ACL entries
//! (docs/security.md).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use flotilla_client::{AclEntry, Client, Operation, PatternType, QuotaLimits, ResourceType};

use crate::client_cmds::{Output, one_line, show};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user, or set an existing user's password. The password comes from
    /// --new-password-file, else the first line of standard input.
    Create {
        /// The user's name.
        name: String,
        /// A file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Delete a user (its ACL entries stay until removed).
    Delete {
        /// The user's name.
        name: String,
    },
    /// List users (names and how their passwords are stored; never the passwords).
    List,
}

#[derive(Subcommand)]
pub enum AclCmd {
    /// Allow a principal operations on resources.
    Add(AclArgs),
    /// Remove entries added with the same arguments.
    Remove(AclArgs),
    /// List entries, all or one principal's.
    List {
        /// Only this principal's entries.
        #[arg(long)]
        principal: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Set a principal's quotas on every node (or the default for every principal
    /// without its own). Limits not given are unset: the node's or default's apply.
    Set {
        #[command(flatten)]
        who: QuotaWho,
        /// Batch bytes per second it may produce to one node's partitions (0: none).
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        /// Batch bytes per second it may fetch from one node (0: none).
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
        /// Produce and fetch requests per second to one node (0: none).
        #[arg(long)]
        requests_per_sec: Option<u64>,
    },
    /// Remove a principal's quotas (or the default's) set through the cluster.
    Delete {
        #[command(flatten)]
        who: QuotaWho,
    },
    /// List the quotas set through the cluster (a node's own configuration may set more).
    List,
}

/// Whose quotas.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct QuotaWho {
    /// A principal: a user, or a client id for clients that prove no user.
    #[arg(long)]
    principal: Option<String>,
    /// The default for every principal without its own.
    #[arg(long)]
    default: bool,
}

/// The entries to add or remove: one per operation, on the one resource named.
#[derive(Args)]
pub struct AclArgs {
    /// Who: a user name (or a client certificate's common name), `User:NAME`, or `*`
    /// for every principal.
    #[arg(long)]
    principal: String,
    /// What: all, read, write, create, delete, alter, describe (comma-separated or
    /// repeated).
    #[arg(long = "operation", value_delimiter = ',', required = true)]
    operations: Vec<Operation>,
    /// On a topic (its name, `*` for every topic, or a prefix with --prefix).
    #[arg(long, group = "resource", required_unless_present_any = ["group", "cluster"])]
    topic: Option<String>,
    /// On a consumer or share group (its name, `*`, or a prefix with --prefix).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// On the cluster: nodes, moves, controllers, users and ACLs.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The topic or group name is a prefix: every name that starts with it.
    #[arg(long, conflicts_with = "cluster")]
    prefix: bool,
}

impl AclArgs {
    fn entries(&self) -> Vec<AclEntry> {
        let principal = self.principal.strip_prefix("User:").unwrap_or(&self.principal).to_string();
        let (resource, name) = match (&self.topic, &self.group) {
            (Some(t), _) => (ResourceType::Topic, t.clone()),
            (None, Some(g)) => (ResourceType::Group, g.clone()),
            (None, None) => (ResourceType::Cluster, flotilla_types::acl::CLUSTER.to_string()),
        };
        let pattern = if self.prefix { PatternType::Prefix } else { PatternType::Literal };
        self.operations
            .iter()
            .map(|&operation| AclEntry {
                principal: principal.clone(),
                resource,
                pattern,
                name: name.clone(),
                operation,
            })
            .collect()
    }
}

/// The new user's password: the file's first line, else standard input's.
fn new_password(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let password = match file {
        Some(f) => crate::profile::read_password(f)?,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

pub async fn user(client: &Client, cmd: UserCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create { name, new_password_file } => {
            let password = new_password(new_password_file.as_ref())?;
            client.create_user(&name, &password).await.map_err(one_line)?;
            println!("User '{name}' saved.");
            Ok(())
        }
        UserCmd::Delete { name } => {
            client.delete_user(&name).await.map_err(one_line)?;
            println!("User '{name}' deleted.");
            Ok(())
        }
        UserCmd::List => {
            let users = client.list_users().await.map_err(one_line)?;
            show(output, &users, || {
                let mut out = format!("{:<32} {:<14} {:>10}\n", "USER", "MECHANISM", "ITERATIONS");
                for u in &users {
                    out.push_str(&format!("{:<32} {:<14} {:>10}\n", u.name, u.mechanism, u.iterations));
                }
                out
            })
        }
    }
}

pub async fn acl(client: &Client, cmd: AclCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Add(args) => {
            for e in args.entries() {
                client.add_acl(&e).await.map_err(one_line)?;
                println!("Added: {e}");
            }
            Ok(())
        }
        AclCmd::Remove(args) => {
            for e in args.entries() {
                client.remove_acl(&e).await.map_err(one_line)?;
                println!("Removed: {e}");
            }
            Ok(())
        }
        AclCmd::List { principal } => {
            let principal = principal.as_deref().map(|p| p.strip_prefix("User:").unwrap_or(p));
            let entries = client.list_acls(principal).await.map_err(one_line)?;
            show(output, &entries, || {
                let mut out =
                    format!("{:<24} {:<10} {:<9} {:<8} {}\n", "PRINCIPAL", "OPERATION", "RESOURCE", "PATTERN", "NAME");
                for e in &entries {
                    out.push_str(&format!(
                        "{:<24} {:<10} {:<9} {:<8} {}\n",
                        format!("User:{}", e.principal),
                        e.operation,
                        e.resource,
                        e.pattern,
                        e.name
                    ));
                }
                out
            })
        }
    }
}

pub async fn quota(client: &Client, cmd: QuotaCmd, output: Output) -> anyhow::Result<()> {
    let whose = |who: &QuotaWho| match &who.principal {
        Some(p) => format!("principal '{p}'"),
        None => "the default".to_string(),
    };
    match cmd {
        QuotaCmd::Set { who, produce_bytes_per_sec, fetch_bytes_per_sec, requests_per_sec } => {
            let limits = QuotaLimits { produce_bytes_per_sec, fetch_bytes_per_sec, requests_per_sec };
            anyhow::ensure!(!limits.is_empty(), "give at least one limit (or use `quota delete`)");
            client.set_quota(who.principal.as_deref(), limits).await.map_err(one_line)?;
            println!("Quotas of {} set.", whose(&who));
            Ok(())
        }
        QuotaCmd::Delete { who } => {
            client.set_quota(who.principal.as_deref(), QuotaLimits::default()).await.map_err(one_line)?;
            println!("Quotas of {} removed.", whose(&who));
            Ok(())
        }
        QuotaCmd::List => {
            let quotas = client.list_quotas().await.map_err(one_line)?;
            show(output, &quotas, || {
                let cell = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                let mut out = format!(
                    "{:<32} {:>22} {:>22} {:>18}\n",
                    "PRINCIPAL", "PRODUCE_BYTES_PER_SEC", "FETCH_BYTES_PER_SEC", "REQUESTS_PER_SEC"
                );
                for q in &quotas {
                    out.push_str(&format!(
                        "{:<32} {:>22} {:>22} {:>18}\n",
                        q.principal.as_deref().unwrap_or("(default)"),
                        cell(q.limits.produce_bytes_per_sec),
                        cell(q.limits.fetch_bytes_per_sec),
                        cell(q.limits.requests_per_sec)
                    ));
                }
                out
            })
        }
    }
}
