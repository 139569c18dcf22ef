//! `flotilla`: the one binary. Runs a node (`node`), a local cluster (`dev`), and the
//! client and admin commands (`topic`, `produce`, `consume`, `cluster`, `bench`).

mod client_cmds;
mod dev;
mod node_cmd;

use clap::{Parser, Subcommand};

use crate::client_cmds::{ClientCommand, Output};

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Flotilla: a replicated message broker")]
struct Cli {
    /// Any node of the cluster (host:port).
    #[arg(long, global = true, env = "FLOTILLA_BOOTSTRAP", default_value = "127.0.0.1:7070")]
    bootstrap: String,
    /// Output format of describe and list commands.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

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
