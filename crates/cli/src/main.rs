//! `flotilla`: the one binary. Runs a node (`node`), a local cluster (`dev`), and the
//! client and admin commands (`topic`, `produce`, `consume`, `cluster`, `bench`).

#![allow(clippy::disallowed_methods, reason = "the binary: real processes, real time")]

mod bench;
mod certs;
mod client_cmds;
mod dev;
mod group_cmds;
mod node_cmd;
mod profile;
mod progress;
mod security_cmds;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};

use crate::client_cmds::{ClientCommand, Output};

/// Where client commands look for the cluster without `--bootstrap` or
/// `FLOTILLA_BOOTSTRAP`: the nodes `flotilla dev` (and `make run`) start by default.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072";

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Flotilla: a replicated message broker")]
struct Cli {
    /// Nodes of the cluster (host:port, comma-separated); the client tries each in turn
    /// until one answers. Default: the profile's `bootstrap`, else the three nodes of
    /// `flotilla dev` (127.0.0.1:7070-7072).
    #[arg(long, short = 'b', global = true, env = "FLOTILLA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// The profile to use from the CLI's profile file (see `flotilla profile`).
    #[arg(long, global = true, env = "FLOTILLA_PROFILE")]
    profile: Option<String>,
    /// Output format of describe and list commands.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
    /// Who this client is to the cluster's quotas (Kafka's client.id); clients with one
    /// id share its quota.
    #[arg(long, global = true, env = "FLOTILLA_CLIENT_ID", default_value = "")]
    client_id: String,
    /// Connect to the nodes over TLS, checking their certificates against this
    /// authority (PEM); for clusters whose nodes set tls-cert (docs/security.md).
    #[arg(long, global = true, env = "FLOTILLA_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: this client's certificate (PEM), for nodes that require one.
    #[arg(long, global = true, env = "FLOTILLA_TLS_CLIENT_CERT", value_name = "FILE", requires = "tls_ca")]
    tls_client_cert: Option<std::path::PathBuf>,
    /// With --tls-client-cert: its private key (PEM).
    #[arg(long, global = true, env = "FLOTILLA_TLS_CLIENT_KEY", value_name = "FILE", requires = "tls_client_cert")]
    tls_client_key: Option<std::path::PathBuf>,
    /// The user to act as (docs/security.md); its password from FLOTILLA_PASSWORD,
    /// --password-file or the profile.
    #[arg(long, global = true, env = "FLOTILLA_USER")]
    user: Option<String>,
    /// A file whose first line is --user's password.
    #[arg(long, global = true, env = "FLOTILLA_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Node(node_cmd::NodeArgs),
    /// Run a local cluster of node processes.
    Dev(dev::DevArgs),
    /// Make the certificates of node-to-node mutual TLS (docs/security.md).
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Print a shell completion script: `flotilla completion bash > /etc/bash_completion.d/flotilla`,
    /// or `source <(flotilla completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show the CLI's profile file and the profile in use (bootstrap addresses).
    Profile,
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Completion { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "flotilla", &mut script);
        // A reader that stops early (`| head`) is not an error.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => node_cmd::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Certs(cmd) => certs::run(cmd),
            Command::Completion { .. } => unreachable!("answered before the runtime starts"),
            Command::Profile => profile::show(cli.profile.as_deref(), cli.bootstrap.as_deref()),
            Command::Client(cmd) => {
                let profile = profile::selected(cli.profile.as_deref(), cli.bootstrap)?;
                let cert = cli.tls_client_cert.or(profile.tls_client_cert.clone());
                let key = cli.tls_client_key.or(profile.tls_client_key.clone());
                let identity = match (&cert, &key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => anyhow::bail!("--tls-client-cert and --tls-client-key go together"),
                };
                let tls = match cli.tls_ca.or(profile.tls_ca.clone()) {
                    Some(ca) => Some(flotilla_client::ClientTls::from_files(&ca, identity)?),
                    None if identity.is_some() => anyhow::bail!("a client certificate needs --tls-ca"),
                    None => None,
                };
                let credentials = match cli.user.or(profile.user.clone()) {
                    Some(user) => {
                        let password = match (std::env::var("FLOTILLA_PASSWORD").ok(), &cli.password_file) {
                            (Some(p), _) => Some(p),
                            (None, Some(f)) => Some(profile::read_password(f)?),
                            (None, None) => profile.password()?,
                        };
                        let password = password.with_context(|| {
                            format!("user '{user}' needs a password: FLOTILLA_PASSWORD, --password-file or the profile")
                        })?;
                        Some(flotilla_client::Credentials::new(user, password))
                    }
                    None => None,
                };
                let conn = client_cmds::Connection {
                    bootstrap: profile.bootstrap.unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_string()),
                    client_id: cli.client_id,
                    tls,
                    credentials,
                };
                client_cmds::run(cmd, conn, cli.output).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
