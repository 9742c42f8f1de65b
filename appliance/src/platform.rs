//! Boot sequence and the machine-wide statics the panic path reaches without blocking.
use crate::arch::{self, BootInfo};
use crate::config::Config;
use crate::hyperv::HyperV;
use crate::net::Net;
use crate::sync::{Once, TryLock};
use capture::record::BootMode;

pub static CONFIG: Once<Config> = Once::new();
pub static BOOT: Once<BootState> = Once::new();
/// The Hyper-V state; the panic path only ever `try_lock`s it.
pub static HYPERV: TryLock<Option<HyperV>> = TryLock::new(None);
/// The network; the panic path `try_lock`s it (and takes it over if the holder was
/// interrupted by the panic).
pub static NET: TryLock<Option<Net>> = TryLock::new(None);

pub const BUILD_ID: &str = env!("CANARY_BUILD_ID");

pub struct BootState {
    pub mode: BootMode,
    pub boot_id: [u8; 16],
}

pub fn config() -> &'static Config {
    static DEFAULT: Once<Config> = Once::new();
    CONFIG.get().unwrap_or_else(|| {
        DEFAULT.set(Config::default());
        DEFAULT.get().expect("just set")
    })
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The common kernel entry: every boot path (PVH, Linux boot, UEFI, arm64) ends here.
pub fn kmain(bi: BootInfo) -> ! {
    crate::stack::paint_all();
    arch::imp::serial::init();
    arch::imp::timer::init();
    arch::install_exceptions();
    let cfg = Config::parse(bi.cmdline);
    crate::klog::init(cfg.log_level);
    log::info!(
        "canary {} ({:?}, {:?}) booting",
        BUILD_ID,
        capture::record::Arch::current(),
        bi.mode
    );
    log::info!("cmdline: {}", bi.cmdline);
    #[cfg(target_arch = "x86_64")]
    if let Some(khz) = cfg.tsc_khz {
        arch::imp::timer::set(crate::clock::Choice {
            hz: khz.saturating_mul(1000),
            source: crate::clock::Source::Configured,
        });
    }
    #[cfg(target_arch = "x86_64")]
    if !arch::imp::timer_calibrated() {
        log::warn!("timer: no PIT and no CPUID frequency: assuming 1 GHz, timer self-check off (give tsc_khz=)");
    }
    #[cfg(target_arch = "x86_64")]
    log::info!(
        "timer: {} kHz counter (from {})",
        arch::imp::timer::counter_hz() / 1000,
        arch::imp::timer::source().name()
    );
    #[cfg(not(target_arch = "x86_64"))]
    log::info!(
        "timer: {} kHz counter",
        arch::imp::timer::counter_hz() / 1000
    );
    log::info!(
        "memory: {} regions{}, {} MiB usable",
        bi.regions.len(),
        if bi.regions_dropped > 0 {
            " (some dropped)"
        } else {
            ""
        },
        bi.usable_bytes() >> 20
    );
    if !cfg.warnings.is_empty() {
        log::warn!("config: {}", cfg.warnings);
    }
    crate::heap::init();
    #[cfg(target_arch = "x86_64")]
    arch::imp::acpi::init(bi.rsdp);
    // SMBIOS (issue 13): UEFI read it before ExitBootServices; direct boot scans the BIOS area.
    #[cfg(not(target_os = "uefi"))]
    crate::smbios::read_direct();
    let a = mix(arch::imp::entropy());
    let b = mix(a ^ arch::imp::entropy() ^ arch::now_us());
    let mut boot_id = [0u8; 16];
    boot_id[..8].copy_from_slice(&a.to_le_bytes());
    boot_id[8..].copy_from_slice(&b.to_le_bytes());
    BOOT.set(BootState {
        mode: bi.mode,
        boot_id,
    });
    CONFIG.set(cfg);
    let cfg = config();
    // Straight into the static: the Hyper-V state (two VMBus connections) is too large to
    // pass through kmain's frame, which stays on the boot stack under the panic path.
    crate::hyperv::init(cfg, &HYPERV);
    crate::identity::log_summary();
    // The NIC goes from the Hyper-V code to the network here (neither calls the other).
    Net::init(cfg, &NET, crate::hyperv::take_boot_nic());
    crate::canary::run(cfg)
}
