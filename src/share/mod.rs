//! Sharing through an OCI registry (feature `remote`): the one room that knows registries.
//!
//! Owns: the wire record of a shared entry and the rule that accepts one (`share/record.rs`),
//! the registry client (`share/registry/`: OCI distribution, auth, the envelope format,
//! signatures), and the engine's one door to them (`share/lookup.rs`: `Session::lookup_remote`
//! and `Session::push_layer`, what a registry answered).
//!
//! Must never: touch the database except through the engine's ordinary lookup and put (a pulled
//! layer is recorded by a put of this machine's own walk), or let a registry failure fail a
//! lookup.

mod lookup;
mod record;
pub mod registry;

pub use lookup::{HitSource, PushOutcome, RemoteAnswer, RemoteFailure, RemoteLookup};
pub use record::*;
