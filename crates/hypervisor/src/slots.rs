//! Where NICs go in the guest's PCI tree.
//!
//! Root bus, fixed: 0x02 the PCI bridge (pc), 0x03 virtio-serial, 0x04 the vsock device, 0x05
//! the virtio-fs device, 0x06.. cold-plugged NICs (at most 10), 0x10.. PCIe root ports for hotplug (q35, at most 14),
//! 0x1e the guest image's disk when it is not an NVDIMM.
//! On q35 a hotplugged NIC sits alone behind its root port (path `<port slot>/00`); on pc it sits
//! in a slot of the bridge (path `02/<slot>`).

use network::PciPath;

use crate::config::MachineType;
use crate::error::{Error, Result};

pub(crate) const BRIDGE_SLOT: u8 = 0x02;
pub(crate) const SERIAL_SLOT: u8 = 0x03;
pub(crate) const VSOCK_SLOT: u8 = 0x04;
pub(crate) const FS_SLOT: u8 = 0x05;
pub(crate) const FIRST_COLD_NIC_SLOT: u8 = 0x06;
pub(crate) const MAX_COLD_NICS: usize = 10;
pub(crate) const FIRST_ROOT_PORT_SLOT: u8 = 0x10;
/// The guest image as a virtio-blk disk (`disable_image_nvdimm`), after the last root port.
pub(crate) const ROOT_DISK_SLOT: u8 = 0x1e;

/// A place for one hotplugged NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub index: usize,
    /// `bus` for device_add.
    pub bus: String,
    /// `addr` for device_add.
    pub addr: String,
    pub path: PciPath,
}

/// The hotplug slots of a VM and which NIC holds each.
#[derive(Debug)]
pub(crate) struct Slots {
    machine: MachineType,
    holders: Vec<Option<String>>,
}

impl Slots {
    pub fn new(machine: MachineType, count: usize) -> Self {
        Self { machine, holders: vec![None; count] }
    }

    fn slot(&self, index: usize) -> Slot {
        match self.machine {
            MachineType::Q35 => {
                let port = FIRST_ROOT_PORT_SLOT + index as u8;
                Slot {
                    index,
                    bus: format!("rp{index}"),
                    addr: "0x0".into(),
                    path: PciPath::new(vec![port, 0]).expect("slots are below 0x20"),
                }
            }
            MachineType::Pc => {
                let s = index as u8 + 1;
                Slot {
                    index,
                    bus: "pci-bridge-0".into(),
                    addr: format!("{s:#x}"),
                    path: PciPath::new(vec![BRIDGE_SLOT, s]).expect("slots are below 0x20"),
                }
            }
        }
    }

    /// Take the first free slot for `holder`.
    pub(crate) fn alloc(&mut self, holder: &str) -> Result<Slot> {
        let i = self.holders.iter().position(Option::is_none).ok_or(Error::NoFreeSlot(self.holders.len()))?;
        self.holders[i] = Some(holder.to_owned());
        Ok(self.slot(i))
    }

    pub fn free(&mut self, index: usize) {
        if let Some(h) = self.holders.get_mut(index) {
            *h = None;
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        self.holders.iter().filter(|h| h.is_some()).count()
    }

    /// The devices that make the slots, for the command line.
    pub fn devices(&self) -> Vec<String> {
        match self.machine {
            MachineType::Q35 => (0..self.holders.len())
                .map(|i| {
                    let port = FIRST_ROOT_PORT_SLOT as usize + i;
                    format!("pcie-root-port,id=rp{i},bus=pcie.0,chassis={},slot={},addr={port:#x}", i + 1, i + 1)
                })
                .collect(),
            MachineType::Pc if self.holders.is_empty() => vec![],
            MachineType::Pc => {
                vec![format!("pci-bridge,bus=pci.0,id=pci-bridge-0,chassis_nr=1,shpc=off,addr={BRIDGE_SLOT:#x}")]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q35_ports_and_pc_bridge_slots() {
        let mut q = Slots::new(MachineType::Q35, 2);
        let a = q.alloc("n1").unwrap();
        assert_eq!((a.bus.as_str(), a.addr.as_str(), a.path.to_string().as_str()), ("rp0", "0x0", "10/00"));
        let b = q.alloc("n2").unwrap();
        assert_eq!(b.path.to_string(), "11/00");
        assert!(matches!(q.alloc("n3"), Err(Error::NoFreeSlot(2))));
        q.free(a.index);
        assert_eq!(q.alloc("n4").unwrap().path.to_string(), "10/00");
        assert_eq!(q.devices()[1], "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2,addr=0x11");

        let mut p = Slots::new(MachineType::Pc, 30);
        let s = p.alloc("n1").unwrap();
        assert_eq!((s.bus.as_str(), s.addr.as_str(), s.path.to_string().as_str()), ("pci-bridge-0", "0x1", "02/01"));
        assert_eq!(p.devices(), vec!["pci-bridge,bus=pci.0,id=pci-bridge-0,chassis_nr=1,shpc=off,addr=0x2"]);
    }
}
