//! The kata agent protocol as the shim speaks it.
//!
//! `types` holds the network messages of package `types` (Interface, Route, ARPNeighbor, ...)
//! with the protocol's field names as JSON keys, and `convert` builds them from the network
//! crate's scan model.

pub mod convert;
pub mod types;

pub use convert::{interfaces, neighbors, routes};
