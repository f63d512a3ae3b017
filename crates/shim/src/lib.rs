//! containerd-shim-kata-v2: the shim process (`shim_process`), the containerd Task service (`task`), the sandbox and its
//! operations (`sandbox`), the management service's glue (`mgmt_server`), the configuration,
//! and the one error type with its mapping to ttrpc codes (`error`).

pub mod config;
pub mod error;
pub mod failpoint;
pub mod logging;
pub mod mgmt_server;
pub mod sandbox;
pub mod shim_process;
pub mod task;
pub mod workload;

pub use error::{Error, Result};
