//! UEFI boot (Hyper-V Gen2 on x86_64 and arm64; OVMF/AAVMF under QEMU): read the command line
//! from the load options, or else from `\canary.cfg` on the boot volume (removable-media boot
//! passes no options), take the memory map, ExitBootServices, and enter the same kernel.
//! Firmware page tables stay: UEFI identity-maps all memory and MMIO.
use crate::arch::{BootInfo, MemRegion};
use capture::record::BootMode;
use uefi::mem::memory_map::MemoryMap;
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::media::file::{File, FileAttribute, FileMode};
use uefi::{boot, cstr16, Status};

static mut CMDLINE: [u8; 1024] = [0; 1024];

/// Load options (UCS-2) to ASCII, at most `out.len()` bytes; non-ASCII becomes '?'.
fn load_options(out: &mut [u8]) -> usize {
    let Ok(img) = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle()) else {
        return 0;
    };
    let Some(bytes) = img.load_options_as_bytes() else {
        return 0;
    };
    let mut n = 0;
    for pair in bytes.chunks_exact(2) {
        let c = u16::from_le_bytes([pair[0], pair[1]]);
        if c == 0 || n == out.len() {
            break;
        }
        out[n] = if c < 0x80 { c as u8 } else { b'?' };
        n += 1;
    }
    n
}

/// `\canary.cfg` on the volume we were loaded from.
fn config_file(out: &mut [u8]) -> usize {
    let Ok(mut fs) = boot::get_image_file_system(boot::image_handle()) else {
        return 0;
    };
    let Ok(mut root) = fs.open_volume() else {
        return 0;
    };
    let Ok(h) = root.open(
        cstr16!("canary.cfg"),
        FileMode::Read,
        FileAttribute::empty(),
    ) else {
        return 0;
    };
    let Some(mut f) = h.into_regular_file() else {
        return 0;
    };
    f.read(out).unwrap_or(0)
}

/// The GOP framebuffer, if there is one with a linear framebuffer: on Hyper-V Gen2 it is
/// synthvid's VRAM (`crate::hyperv::record_gop`; used only when synthvid is offered).
fn record_gop() {
    use uefi::proto::console::gop::{GraphicsOutput, PixelFormat};
    let Ok(handle) = boot::get_handle_for_protocol::<GraphicsOutput>() else {
        return;
    };
    let Ok(mut gop) = boot::open_protocol_exclusive::<GraphicsOutput>(handle) else {
        return;
    };
    let info = gop.current_mode_info();
    if info.pixel_format() == PixelFormat::BltOnly {
        return;
    }
    let (width, height) = info.resolution();
    let mut fb = gop.frame_buffer();
    crate::hyperv::record_gop(crate::hyperv::GopFramebuffer {
        base: fb.as_mut_ptr() as u64,
        size: fb.size(),
        width: width as u32,
        height: height as u32,
    });
}

#[uefi::entry]
fn efi_main() -> Status {
    crate::arch::imp::serial::init();
    crate::arch::serial_write(b"canary: UEFI entry\n");
    // SAFETY: boot runs on one CPU; nothing else references CMDLINE yet.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(CMDLINE) };
    let mut n = load_options(buf);
    // The shell passes the image name as the first word; the boot manager may pass nothing.
    if core::str::from_utf8(&buf[..n]).map_or(true, |s| !s.contains('=')) {
        n = config_file(buf);
    }
    // Config files may have several lines and comments.
    let mut in_comment = false;
    for b in buf[..n].iter_mut() {
        match *b {
            b'#' => {
                in_comment = true;
                *b = b' ';
            }
            b'\n' | b'\r' => {
                in_comment = false;
                *b = b' ';
            }
            _ if in_comment => *b = b' ',
            _ => {}
        }
    }
    let cmdline = core::str::from_utf8(&buf[..n]).unwrap_or("");
    let mut bi = BootInfo::new(BootMode::Uefi);
    bi.cmdline = cmdline;
    // arm64: the device tree from the UEFI configuration table (console, RTC, PSCI conduit,
    // virtio-mmio slots), read while boot services still run.
    #[cfg(target_arch = "aarch64")]
    {
        bi.dtb = crate::arch::imp::uefi_device_tree();
    }
    record_gop();
    // The SMBIOS tables through the configuration table, while boot services still run.
    crate::smbios::read_uefi();
    // SAFETY: after this no boot services are used; the memory map is ours.
    let mm = unsafe { boot::exit_boot_services(None) };
    for d in mm.entries() {
        use uefi::mem::memory_map::MemoryType as T;
        let usable = matches!(
            d.ty,
            T::CONVENTIONAL
                | T::BOOT_SERVICES_CODE
                | T::BOOT_SERVICES_DATA
                | T::LOADER_CODE
                | T::LOADER_DATA
        );
        bi.add_region(MemRegion {
            base: d.phys_start,
            len: d.page_count * 4096,
            usable,
        });
    }
    // Onto our own stack (x86_64: with a guard page; the firmware's has none), whose size we
    // know: its high-water mark is reported and the backtrace walk is bounded by it.
    crate::arch::imp::uefi_stack::enter(bi)
}
