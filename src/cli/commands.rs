//! Client commands (placeholder until the API client lands).
use std::path::Path;

use super::ClientOpts;

pub fn deploy(_c: &ClientOpts, _file: &Path) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn rm(_c: &ClientOpts, _s: &str) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn scale(_c: &ClientOpts, _s: &str, _n: u32) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn ps(_c: &ClientOpts, _s: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn status(_c: &ClientOpts) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn nodes(_c: &ClientOpts) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn history(_c: &ClientOpts, _s: &str) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn rollback(_c: &ClientOpts, _s: &str, _to: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn logs(
    _c: &ClientOpts,
    _s: &str,
    _slot: u32,
    _f: bool,
    _t: Option<usize>,
) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn drain(_c: &ClientOpts, _n: Option<&str>, _on: bool) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
