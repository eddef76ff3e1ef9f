//! `shoal demo`: a 3-node local fleet on 127.0.0.1 with temporary data dirs.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo is being written")
}
