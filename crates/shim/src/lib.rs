//! containerd-shim-kata-v2: the shim process (`shim_process`), the containers of the shim
//! whatever protocol asks (`containers`), containerd's Task API as glue to them (`task`), the
//! sandbox and its operations (`sandbox`), the workload in the
//! VM (`workload`), the management service's glue (`mgmt_server`), the configuration, and the
//! one error type with its mapping to ttrpc codes (`error`).

pub mod bootstrap;
pub mod config;
pub(crate) mod containers;
pub mod error;
pub mod failpoint;
pub(crate) mod kata_compat;
pub(crate) mod lifecycle;
pub mod logging;
pub mod mgmt_server;
pub mod sandbox;
pub mod shim_process;
pub mod spawn;
pub mod task;
pub mod workload;

pub use error::{Error, Result};
