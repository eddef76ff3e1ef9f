//! Replicated desired state: the hybrid logical clock, the `Crdt` trait and its laws, and
//! `ClusterState` with its parts.
//!
//! Sans-IO: nothing here reads a clock, touches a file or socket, spawns a task or draws OS
//! randomness (checked by the tidy test in `tests/tidy.rs`).

pub mod cluster;
pub mod crdt;
pub mod hlc;

pub use cluster::{
    Claim, ClusterState, InstanceReport, InstanceState, NodeReport, Revision, RevisionBody,
    ServiceEntry,
};
pub use crdt::Crdt;
pub use hlc::{Hlc, HlcClock};
