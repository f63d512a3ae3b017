//! A physical NIC (or VF) moved into the namespace. Giving it to the VM means VFIO passthrough,
//! which is not built yet: it is detected, and attaching it is a clear error.

use crate::endpoint::Attached;
use crate::error::{Error, Result};
use crate::scan::Link;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalEndpoint {
    pub id: String,
    pub link: Link,
}

impl PhysicalEndpoint {
    pub fn attach(&self) -> Result<Attached> {
        Err(Error::Unsupported { name: self.link.name.to_string(), what: "VFIO passthrough of a physical NIC" })
    }
}
