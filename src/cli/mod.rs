//! The `shoal` command line: clap definitions and dispatch. Every command but `agent`, `demo`
//! and `keygen` is a client of the local agent's HTTP API (`commands.rs`).
//!
//! This file holds no logic beyond parsing and dispatch: `main` stays thin.

pub mod commands;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Shoal: a masterless container orchestrator for edge fleets.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Address of the agent's API (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        env = "SHOAL_API",
        default_value = "127.0.0.1:7800",
        alias = "addr"
    )]
    pub api: String,
    /// The agent's data dir, where the API token is read from (`<data-dir>/api-token`).
    #[arg(long, global = true, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API token (instead of reading it from the data dir).
    #[arg(long, global = true, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// JSON for scripts (a stable contract).
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent on this machine.
    Agent(Box<crate::agent::config::AgentArgs>),
    /// Deploy the services in a spec file (YAML or JSON, one service or a list).
    Deploy {
        /// The spec file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove a service (its instances stop everywhere).
    Rm {
        service: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Change a service's replica count.
    Scale {
        service: String,
        replicas: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List instances (slots) with their node, state and endpoint.
    Ps {
        service: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// This node's view: members, state digest, counters, unplaceable slots.
    Status {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The members of the fleet.
    Nodes {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A service's revisions, newest first.
    History {
        service: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Roll a service back to an earlier revision (the previous one by default).
    Rollback {
        service: String,
        /// The revision id (or its sequence number) from `shoal history`.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print an instance's log.
    Logs {
        service: String,
        /// The slot (default 0).
        #[arg(long, default_value_t = 0)]
        slot: u32,
        /// Keep streaming new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Move every instance off a node (each old instance stops after its replacement runs).
    Drain {
        /// The node id (or a unique prefix); this node when omitted.
        node: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Let a drained node take instances again.
    Undrain {
        node: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Write a new cluster key.
    Keygen {
        /// Where to write it (refuses to overwrite); stdout when omitted.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start a 3-node local fleet, deploy examples/hello.yaml, kill a node and watch the
    /// replicas move. Ctrl-C stops and cleans up everything.
    Demo(crate::agent::demo::DemoArgs),
    /// Internal: runs one `partition: majority` instance and kills it when this node's lease
    /// expires (started by the process driver; see src/runtime/lease.rs).
    #[command(hide = true)]
    LeaseRun {
        #[arg(long)]
        lease: PathBuf,
        #[arg(long, default_value_t = 30_000)]
        grace_ms: u64,
        #[arg(long)]
        arg0: Option<std::ffi::OsString>,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => crate::agent::run(*args),
        Command::Demo(args) => crate::agent::demo::run(args),
        Command::LeaseRun {
            lease,
            grace_ms,
            arg0,
            command,
        } => {
            let (program, args) = command.split_first().expect("clap requires the command");
            let code =
                crate::runtime::lease::lease_run(&lease, grace_ms, program, arg0.as_deref(), args)?;
            std::process::exit(code)
        }
        Command::Keygen { out } => crate::agent::keygen(out.as_deref()),
        Command::Deploy { file, client } => commands::deploy(&client, &file),
        Command::Rm { service, client } => commands::rm(&client, &service),
        Command::Scale {
            service,
            replicas,
            client,
        } => commands::scale(&client, &service, replicas),
        Command::Ps { service, client } => commands::ps(&client, service.as_deref()),
        Command::Status { client } => commands::status(&client),
        Command::Nodes { client } => commands::nodes(&client),
        Command::History { service, client } => commands::history(&client, &service),
        Command::Rollback {
            service,
            to,
            client,
        } => commands::rollback(&client, &service, to.as_deref()),
        Command::Logs {
            service,
            slot,
            follow,
            tail,
            client,
        } => commands::logs(&client, &service, slot, follow, tail),
        Command::Drain { node, client } => commands::drain(&client, node.as_deref(), true),
        Command::Undrain { node, client } => commands::drain(&client, node.as_deref(), false),
    }
}
