//! containerd-shim-kata-v2 and the `kata-runtime` operator command.

pub mod cli;
pub mod config;
pub mod ipvs;
pub mod logging;
pub mod mgmt;
pub mod netdoc;
pub mod sandbox;
pub mod task;
