//! virtio-net-pci behind a generic ECAM host bridge (QEMU `virt`'s `pci-host-ecam-generic`,
//! or the ACPI MCFG one): what `qemu-system-aarch64 -M virt -nic user` gives by default.
//!
//! Under UEFI the firmware has assigned the BARs. A direct boot finds them unassigned (QEMU
//! does no PCI enumeration for `-kernel`): the canary then places memory BARs in the host
//! bridge's 32-bit memory window from the device tree, which on `virt` is identity-mapped
//! (PCI address = CPU address, inside the device-mapped first GiB).
use super::fdt::PciWindow;
use virtio_drivers::transport::pci::bus::{Cam, Command, DeviceFunction, MmioCam, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, SomeTransport};

/// ECAM space one bus needs (32 devices x 8 functions x 4 KiB; PCIe Base spec 7.2.2).
const ECAM_BUS: u64 = 1 << 20;

/// Gives unassigned memory BARs of `df` an address in `window` (identity windows only),
/// after every BAR already in the window; 32-bit BARs only below 4 GiB.
fn assign_bars(root: &mut PciRoot<MmioCam<'static>>, df: DeviceFunction, window: PciWindow) {
    if window.pci != window.cpu {
        log::warn!("PCI {df}: memory window is not identity-mapped; BARs left unassigned");
        return;
    }
    let end = window.pci.saturating_add(window.size);
    crate::pci::assign_bars(root, df, window.pci..end);
}

/// The first virtio-net function on bus 0 of the ECAM at `ecam` (`len` bytes, mapped as
/// device memory by the caller).
pub fn nic(ecam: u64, len: u64, window: Option<PciWindow>) -> Option<SomeTransport<'static>> {
    if len < ECAM_BUS || ecam == 0 || !ecam.is_multiple_of(4) || ecam > usize::MAX as u64 {
        return None;
    }
    // SAFETY: the firmware (device tree `reg` or ACPI MCFG) says an ECAM lives at `ecam`,
    // mapped as device memory for the program's life. Only bus 0 is touched, which lies in
    // the first MiB, inside the region even when it is smaller than the 256 MiB MmioCam
    // describes.
    let cam = unsafe { MmioCam::new(ecam as usize as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
    for (df, info) in root.enumerate_bus(0) {
        if virtio_device_type(&info) != Some(DeviceType::Network) {
            continue;
        }
        log::info!("virtio-net at PCI {df} (ECAM {ecam:#x})");
        if let Some(w) = window {
            assign_bars(&mut root, df, w);
        }
        // Memory decoding and bus mastering (firmware may turn DMA off at ExitBootServices).
        root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        match PciTransport::new::<crate::dma::Hal, _>(&mut root, df) {
            Ok(t) => return Some(t.into()),
            Err(e) => log::warn!("virtio-net at PCI {df}: {e:?}"),
        }
    }
    None
}
