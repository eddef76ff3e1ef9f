//! Shoal: a masterless container orchestrator for edge fleets.
//!
//! The crate is one library (used by the `shoal` binary, the tests and the simulator) with a
//! sans-IO core (`membership`, `state`, `placement`, `reconcile`, `node`) and an IO shell around
//! it (`agent`, `net`, `store`, `runtime`, `api`, `cli`). See `ARCHITECTURE.md`.
//!
//! Test-only code is compiled only with the `testing` feature, which every test and bench turns
//! on (the package dev-depends on itself with it): the simulator (`sim`), the in-memory runtime
//! driver (`runtime::fake`), the runtime conformance suite (`runtime::conformance`), the one
//! fleet harness of real agents (`harness`) and the SVG writer of reports (`plot`). The
//! shipped `shoal` binary is built without it.

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
#[cfg(feature = "testing")]
pub mod plot;
pub mod reconcile;
pub mod runtime;
#[cfg(feature = "testing")]
pub mod sim;
pub mod spec;
pub mod state;
pub mod store;
pub mod wire;
