//! Shoal: a masterless container orchestrator for edge fleets.
//!
//! The crate is one library (used by the `shoal` binary, the tests and the simulator) with a
//! sans-IO core (`membership`, `state`, `placement`, `reconcile`, `node`) and an IO shell around
//! it (`agent`, `net`, `store`, `runtime`, `api`, `cli`). See `ARCHITECTURE.md`.

pub mod agent;
pub mod api;
pub mod cli;
#[cfg(feature = "testing")]
pub mod harness;
pub mod ids;
pub mod membership;
pub mod net;
pub mod node;
pub mod placement;
pub mod plot;
pub mod reconcile;
pub mod runtime;
pub mod sim;
pub mod spec;
pub mod state;
pub mod store;
pub mod wire;
