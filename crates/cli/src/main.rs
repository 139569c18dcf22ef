//! `flotilla`: the one binary. Runs a node (`node`), a local cluster (`dev`), and the
//! client and admin commands (`topic`, `produce`, `consume`, `cluster`, `bench`).

#![allow(clippy::disallowed_methods, reason = "the binary: real processes, real time")]

mod bench;
mod client_cmds;
mod dev;
mod group_cmds;
mod node_cmd;

use clap::{Parser, Subcommand};

use crate::client_cmds::{ClientCommand, Output};

/// Where client commands look for the cluster without `--bootstrap` or
/// `FLOTILLA_BOOTSTRAP`: the nodes `flotilla dev` (and `make run`) start by default.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072";

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Flotilla: a replicated message broker")]
struct Cli {
    /// Nodes of the cluster (host:port, comma-separated); the client tries each in turn
    /// until one answers. The default is the three nodes of `flotilla dev`.
    #[arg(long, global = true, env = "FLOTILLA_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP)]
    bootstrap: String,
    /// Output format of describe and list commands.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
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
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => node_cmd::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Client(cmd) => client_cmds::run(cmd, &cli.bootstrap, cli.output).await,
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
