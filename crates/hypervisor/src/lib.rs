//! QEMU for sandbox VMs: configuration in kata's keys, the command line with cold-plugged NICs
//! (fds passed at the numbers the command line names), a small QMP client, and NIC hotplug and
//! unplug (the `network` crate's `NicHotplug`).

pub mod accel;
pub mod caplog;
pub mod cmdline;
pub mod config;
pub mod error;
pub mod nic;
pub mod qmp;
pub mod slots;
pub mod vm;

pub use accel::Accel;
pub use config::{AgentChannel, AgentChannelChoice, QemuConfig, SharedFs, SHARED_FS_TAG};
pub use error::{Error, Result};
pub use vm::{Vm, VmSpec};
