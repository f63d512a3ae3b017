//! containerd-shim-kata-v2 and the `kata-runtime` operator command.

pub mod cli;
