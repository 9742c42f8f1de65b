//! The canary under QEMU TCG on arm64 (`virt`, cortex-a57): direct boot (`-kernel` ELF) and
//! UEFI (AAVMF), with a real `host-collector serve` storing its record.
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap_or("").trim_start_matches("0x"), 16).unwrap_or(u64::MAX)
}

/// arm64 register order in the record: x0..x30, PSTATE, ESR_EL1, FAR_EL1.
fn assert_arm64_registers(rec: &Value) {
    let gpr = rec["registers"]["gpr"].as_array().expect("registers.gpr");
    assert_eq!(gpr.len(), 34, "x0-x30, pstate, esr, far: {rec:#}");
    // PSTATE: EL1 (CurrentEL field, bits 3:2 = 1), IRQs masked in the panic path.
    let pstate = hex(&gpr[31]);
    assert_eq!((pstate >> 2) & 3, 1, "pstate {pstate:#x} is not EL1");
    // SP and the frame pointer are in RAM (QEMU virt: from 0x4000_0000).
    for k in ["sp", "fp"] {
        assert!(hex(&rec["registers"][k]) >= 0x4000_0000, "{k}: {rec:#}");
    }
}

/// The built image of `boot`.
fn image(boot: &str) -> std::path::PathBuf {
    build_image("aarch64", boot)
}

/// A QEMU run this file starts itself (for machine options `scripts/qemu-run` does not
/// offer): `qemu-system-aarch64 -machine MACHINE` with user networking, `boot_args` (firmware
/// and disk, or `-kernel`), TCG, under `timeout`. Returns the exit status, the console, and
/// when (after spawning QEMU) the console said "canary: ready".
struct QemuRun {
    status: Option<i32>,
    serial: String,
    ready_after: Option<std::time::Duration>,
}

fn qemu_direct(machine: &str, boot_args: &[std::ffi::OsString], timeout_s: u32) -> QemuRun {
    qemu_with_nic(machine, "virtio-net-device", boot_args, timeout_s)
}

/// As [`qemu_direct`] with the NIC `nic` (`virtio-net-device` or `virtio-net-pci`).
fn qemu_with_nic(
    machine: &str,
    nic: &str,
    boot_args: &[std::ffi::OsString],
    timeout_s: u32,
) -> QemuRun {
    use std::process::{Command, Stdio};
    let _slot = qemu_slot();
    let t0 = std::time::Instant::now();
    let mut child = Command::new("timeout")
        .args(["-k", "2", &timeout_s.to_string(), "qemu-system-aarch64"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args([
            "-serial",
            "stdio",
            "-no-reboot",
            "-m",
            "128",
            "-cpu",
            "cortex-a57",
        ])
        .args(["-machine", machine])
        .args(["-netdev", "user,id=n0", "-device"])
        // No option ROM for the PCI NIC (the firmware would try to network-boot with it).
        .arg(if nic.ends_with("-pci") {
            format!("{nic},netdev=n0,romfile=")
        } else {
            format!("{nic},netdev=n0")
        })
        .args(boot_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start qemu-system-aarch64");
    let mut ready_after = None;
    let serial = console(&mut child, |line| {
        if ready_after.is_none() && line.contains("canary: ready") {
            ready_after = Some(t0.elapsed());
        }
    });
    QemuRun {
        status: child.wait().unwrap().code(),
        serial,
        ready_after,
    }
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(|a| a.into()).collect()
}

fn panic_on_purpose(boot: &str, boot_mode: &str) {
    let (rec, _run) = common::panic_on_purpose("aarch64", boot, boot_mode);
    assert_arm64_registers(&rec);
    // A frame-pointer backtrace, not just the pc: the panic handler's callers up to kmain.
    let bt = rec["backtrace"].as_array().unwrap();
    assert!(bt.len() >= 3, "short backtrace: {rec:#}");
}

#[test]
fn aarch64_direct_boot_panic_record_is_stored_by_the_collector() {
    panic_on_purpose("direct", "direct-aarch64");
}

#[test]
fn aarch64_uefi_boot_panic_record_is_stored_by_the_collector() {
    panic_on_purpose("uefi", "uefi");
}

fn bad_memory_access(boot: &str, boot_mode: &str) {
    // The address canary.rs reads lies above the identity map (ours: 1 TiB; AAVMF's: the
    // CPU's 44-bit PA range): a data abort taken at the same EL (ESR_EL1.EC = 0x25) with a
    // translation fault (DFSC 0b0001xx), FAR = the address.
    let rec = common::bad_memory_access("aarch64", boot, boot_mode);
    let esr = hex(&rec["kind_detail"]["vector"]);
    assert_eq!(esr >> 26, 0x25, "ESR {esr:#x}: {rec:#}");
    assert_eq!(
        esr & 0x3c,
        0x04,
        "ESR {esr:#x} is not a translation fault: {rec:#}"
    );
    assert!(
        rec["message"].as_str().unwrap().contains("data abort"),
        "{rec:#}"
    );
    assert_arm64_registers(&rec);
    let gpr = rec["registers"]["gpr"].as_array().unwrap();
    assert_eq!(hex(&gpr[32]), esr, "ESR_EL1 in the registers: {rec:#}");
    assert_eq!(
        hex(&gpr[33]),
        0x7fff_ffff_f000,
        "FAR_EL1 in the registers: {rec:#}"
    );
    // The backtrace starts at the faulting instruction (ELR_EL1).
    assert_eq!(rec["backtrace"][0], rec["registers"]["pc"], "{rec:#}");
}

#[test]
fn aarch64_direct_bad_memory_access_is_caught_by_the_vectors_and_shipped() {
    bad_memory_access("direct", "direct-aarch64");
}

/// After ExitBootServices the firmware's page tables stay, and our vectors replace its own.
#[test]
fn aarch64_uefi_bad_memory_access_is_caught_by_the_vectors_and_shipped() {
    bad_memory_access("uefi", "uefi");
}

#[test]
fn aarch64_panic_inside_the_panic_path_ends_through_the_nested_path() {
    let (c, run) = nested_panic("aarch64");
    let rec = c.show_latest();
    // The follow-up sent at the end of the ship step is the collector's (see qemu_x86_64.rs).
    assert_complete_record_steps(
        &rec,
        "aarch64",
        "direct-aarch64",
        "panic",
        &run.serial,
        &STEPS_NESTED,
    );
}

/// `panic_action=poweroff|reset` without the semihosting exit: the end step's PSCI
/// SYSTEM_OFF / SYSTEM_RESET (HVC on `virt`) must make QEMU leave (`-no-reboot`: a reset
/// ends QEMU too) with status 0, after the record was acknowledged; a missed PSCI call would
/// leave the CPU halted until the timeout (status 124).
fn ends_through_psci(action: &str, end_line: &str) {
    let c = Collector::start();
    let append = format!("qemu_exit=0 panic_action={action}");
    let run = run_canary(
        "aarch64",
        "direct",
        c.port,
        &["--panic-after", "0.05", "--append", &append],
        60,
        || {},
    );
    assert_eq!(run.code(), 0, "serial:\n{}", run.serial);
    assert!(
        run.serial.contains("acked by the collector"),
        "{}",
        run.serial
    );
    assert!(run.serial.contains(end_line), "{}", run.serial);
    assert_eq!(c.records(1, Duration::from_secs(5)).len(), 1);
}

#[test]
fn aarch64_a_forged_ack_from_another_endpoint_does_not_stop_retransmission() {
    common::peers::forged_ack_from_another_endpoint("aarch64");
}

#[test]
fn aarch64_with_a_key_unauthenticated_and_unchallenged_drills_do_nothing() {
    common::peers::unauthenticated_drills_do_nothing_with_a_key("aarch64");
}

#[test]
fn aarch64_keyed_drill_answers_the_canarys_challenge() {
    common::peers::keyed_drill_answers_the_challenge("aarch64");
}

#[test]
fn aarch64_poweroff_after_the_panic_uses_psci_system_off() {
    ends_through_psci("poweroff", "canary: end: power off");
}

#[test]
fn aarch64_reset_after_the_panic_uses_psci_system_reset() {
    ends_through_psci("reset", "canary: end: reset");
}

/// UEFI with the device tree: AAVMF installs QEMU's DTB in the configuration table only when
/// QEMU offers no ACPI (`virt,acpi=off`); `scripts/qemu-run` boots the default (ACPI), so
/// this test starts QEMU itself with the same firmware, ESP layout and network.
/// Firmware, variables and an ESP with the UEFI image and `canary.cfg` = `cfg`, in `dir`.
fn uefi_args(dir: &std::path::Path, cfg: &str) -> Vec<std::ffi::OsString> {
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::copy(image("uefi"), esp.join("EFI/BOOT/BOOTAA64.EFI")).unwrap();
    std::fs::write(esp.join("canary.cfg"), format!("{cfg}\n")).unwrap();
    let vars = dir.join("vars.fd");
    std::fs::copy("/usr/share/AAVMF/AAVMF_VARS.fd", &vars).unwrap();
    let mut args = os(&[
        "-semihosting-config",
        "enable=on,target=native",
        "-drive",
        "if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
        "-boot",
        "menu=on,splash-time=0",
    ]);
    args.push("-drive".into());
    args.push(format!("if=pflash,format=raw,file={}", vars.display()).into());
    args.push("-drive".into());
    args.push(format!("format=raw,file=fat:rw:{}", esp.display()).into());
    args
}

#[test]
fn aarch64_uefi_reads_the_device_tree_from_the_configuration_table() {
    let c = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("collector=10.0.2.2:{} qemu_exit=1 panic_after=0.1", c.port);
    let args = uefi_args(dir.path(), &cfg);
    let run = qemu_direct("virt,acpi=off", &args, 120);
    let serial = &run.serial;
    assert_eq!(run.status, Some(EXIT_ACKED), "serial:\n{serial}");
    // The console, virtio-mmio slots and PSCI conduit came from the DTB, not from ACPI or
    // the built-in virt map.
    assert!(
        serial.contains("device tree at 0x") && serial.contains("32 virtio-mmio slots"),
        "{serial}"
    );
    assert!(serial.contains("PSCI Some(Hvc)"), "{serial}");
    let rec = c.show_latest();
    assert_complete_record(&rec, "aarch64", "uefi", "panic", serial);
}

/// `virt,virtualization=on`: QEMU enters the kernel at EL2 and its PSCI conduit is SMC. The
/// entry drops to EL1 (the record's PSTATE says EL1), the device tree names the SMC conduit,
/// and the end step's SYSTEM_OFF goes through it (QEMU exits 0 instead of timing out).
#[test]
fn aarch64_direct_boot_at_el2_drops_to_el1_and_uses_the_smc_psci_conduit() {
    let image = image("direct");
    let c = Collector::start();
    let mut args = os(&["-kernel"]);
    args.push(image.into());
    args.push("-append".into());
    args.push(
        format!(
            "collector=10.0.2.2:{} panic_after=0.1 panic_action=poweroff",
            c.port
        )
        .into(),
    );
    let run = qemu_direct("virt,virtualization=on", &args, 60);
    let serial = &run.serial;
    assert_eq!(run.status, Some(0), "serial:\n{serial}");
    assert!(serial.contains("PSCI Some(Smc)"), "{serial}");
    assert!(serial.contains("canary: end: power off"), "{serial}");
    let rec = c.show_latest();
    assert_complete_record(&rec, "aarch64", "direct-aarch64", "panic", serial);
    assert_arm64_registers(&rec);
}

/// QEMU start to "canary: ready" (network up: the collector's next hop answered ARP) for
/// the direct boot under TCG. Measured on the 2-core development machine: 0.05-0.11 s
/// (median 0.07 s); the bound leaves room for a loaded CI machine while still catching a
/// boot that waits on something (a calibration loop, a DHCP round, a firmware).
#[test]
fn aarch64_direct_boot_is_ready_within_a_second_of_qemu_start() {
    // Both images first: no cargo build of another test competes for the CPU while this one
    // measures (QEMU runs themselves are serialised by the harness).
    build_image("aarch64", "uefi");
    let image = image("direct");
    let c = Collector::start();
    let mut args = os(&["-semihosting-config", "enable=on,target=native", "-kernel"]);
    args.push(image.into());
    args.push("-append".into());
    args.push(format!("collector=10.0.2.2:{} qemu_exit=1 panic_after=0", c.port).into());
    let run = qemu_direct("virt", &args, 60);
    assert_eq!(run.status, Some(EXIT_ACKED), "serial:\n{}", run.serial);
    assert!(
        run.serial.contains("canary: ready (network up)"),
        "{}",
        run.serial
    );
    let ready = run.ready_after.expect("ready line");
    eprintln!(
        "aarch64 direct boot: QEMU start to ready {:.3} s",
        ready.as_secs_f64()
    );
    assert!(
        ready < std::time::Duration::from_secs(1),
        "QEMU start to ready took {ready:?}:\n{}",
        run.serial
    );
}

/// AAVMF under `virtualization=on` runs at EL2 and leaves the UEFI application there: the
/// vectors go to VBAR_EL2 and read the _EL2 syndrome registers, so a fault is still ours
/// (not the firmware's "Synchronous Exception" hang).
#[test]
fn aarch64_uefi_at_el2_catches_a_bad_memory_access_and_ships_it() {
    let c = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("collector=10.0.2.2:{} qemu_exit=1 fault_after=0.1", c.port);
    let args = uefi_args(dir.path(), &cfg);
    let run = qemu_direct("virt,virtualization=on", &args, 120);
    assert_eq!(run.status, Some(EXIT_ACKED), "serial:\n{}", run.serial);
    let rec = c.show_latest();
    assert_complete_record(&rec, "aarch64", "uefi", "fault", &run.serial);
    assert_eq!(rec["kind_detail"]["addr"], "0x7ffffffff000", "{rec:#}");
    assert_eq!(hex(&rec["kind_detail"]["vector"]) >> 26, 0x25, "{rec:#}");
    // PSTATE (SPSR_EL2) says the fault came from EL2.
    let pstate = hex(&rec["registers"]["gpr"][31]);
    assert_eq!((pstate >> 2) & 3, 2, "{rec:#}");
}

/// `-device virtio-net-pci` (the NIC `-M virt -nic user` makes): found on bus 0 of the ECAM
/// the device tree names, its unassigned BARs placed in the host bridge's 32-bit window, and
/// the record shipped through it.
#[test]
fn aarch64_direct_boot_ships_through_virtio_net_pci_with_bars_it_assigned() {
    let c = Collector::start();
    let mut args = os(&["-semihosting-config", "enable=on,target=native", "-kernel"]);
    args.push(image("direct").into());
    args.push("-append".into());
    args.push(format!("collector=10.0.2.2:{} qemu_exit=1 panic_after=0.1", c.port).into());
    let run = qemu_with_nic("virt", "virtio-net-pci", &args, 60);
    let serial = &run.serial;
    assert_eq!(run.status, Some(EXIT_ACKED), "serial:\n{serial}");
    assert!(serial.contains("virtio-net at PCI 00:"), "{serial}");
    assert!(serial.contains("assigned at 0x1"), "{serial}");
    let rec = c.show_latest();
    assert_complete_record(&rec, "aarch64", "direct-aarch64", "panic", serial);
}

/// Under UEFI in ACPI mode the ECAM comes from MCFG and the firmware's BAR assignment stays.
#[test]
fn aarch64_uefi_ships_through_virtio_net_pci_found_through_mcfg() {
    let c = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("collector=10.0.2.2:{} qemu_exit=1 panic_after=0.1", c.port);
    let args = uefi_args(dir.path(), &cfg);
    let run = qemu_with_nic("virt", "virtio-net-pci", &args, 120);
    let serial = &run.serial;
    assert_eq!(run.status, Some(EXIT_ACKED), "serial:\n{serial}");
    assert!(serial.contains("virtio-net at PCI 00:"), "{serial}");
    assert!(!serial.contains("assigned at"), "{serial}");
    let rec = c.show_latest();
    assert_complete_record(&rec, "aarch64", "uefi", "panic", serial);
}

/// The GIC found from the device tree (v2: `virt`'s default; v3: `gic-version=3`, with the
/// redistributor of this CPU looked up by affinity, or the distributor while affinity
/// routing is off) can disable a PPI, as the Hyper-V cleanup needs: the boot check enables
/// PPI 27, disables it, and reads both states back.
#[test]
fn aarch64_gic_ppi_disable_works_on_gicv2_and_gicv3() {
    for (machine, want) in [
        (
            "virt",
            "gic: V2 { gicd: 8000000 }, PPI disable checked through the Distributor",
        ),
        (
            "virt,gic-version=3",
            "PPI disable checked through the Redistributor(80a0000)",
        ),
    ] {
        let c = Collector::start();
        let mut args = os(&["-semihosting-config", "enable=on,target=native", "-kernel"]);
        args.push(image("direct").into());
        args.push("-append".into());
        args.push(format!("collector=10.0.2.2:{} qemu_exit=1 panic_after=0", c.port).into());
        let run = qemu_direct(machine, &args, 60);
        let serial = &run.serial;
        assert_eq!(run.status, Some(EXIT_ACKED), "{machine}: serial:\n{serial}");
        assert!(serial.contains(want), "{machine}: {serial}");
        assert!(
            serial.contains("PPI disable checked"),
            "{machine}: {serial}"
        );
    }
}

/// Under UEFI with ACPI the GIC comes from the MADT (GICv3, the redistributor from the GICR
/// structure), and the firmware has affinity routing on: the redistributor path is taken.
#[test]
fn aarch64_uefi_gicv3_from_the_madt_disables_a_ppi() {
    let c = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("collector=10.0.2.2:{} qemu_exit=1 panic_after=0", c.port);
    let args = uefi_args(dir.path(), &cfg);
    let run = qemu_direct("virt,gic-version=3", &args, 120);
    let serial = &run.serial;
    assert_eq!(run.status, Some(EXIT_ACKED), "serial:\n{serial}");
    assert!(serial.contains("gic: V3"), "{serial}");
    assert!(
        serial.contains("PPI disable checked through the Redistributor(80a0000)"),
        "{serial}"
    );
}

#[test]
fn a_fault_inside_each_panic_step_ends_with_the_configured_action() {
    for (step, action) in common::fault_in::CASES {
        common::fault_in::fault_in_step_ends_with_the_action("aarch64", step, action);
    }
}
