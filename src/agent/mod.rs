//! The agent: the tokio shell around the node core (wiring the store, the API, the runtimes and
//! the network to `Node::handle`).

pub mod config;
pub mod demo;

use std::path::Path;

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(args: config::AgentArgs) -> anyhow::Result<()> {
    let _ = args.resolve()?;
    anyhow::bail!("the agent shell is being written")
}

/// `shoal keygen`.
pub fn keygen(_out: Option<&Path>) -> anyhow::Result<()> {
    anyhow::bail!("keygen is being written")
}
