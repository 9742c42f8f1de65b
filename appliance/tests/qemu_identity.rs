//! Who crashed (issue 13), under QEMU TCG: the SMBIOS System Information QEMU is given
//! (`-smbios type=1,...`) is read by the canary (x86_64 direct boot: the BIOS-area entry
//! point qboot/SeaBIOS publish; UEFI: OVMF's and AAVMF's configuration table; arm64 direct
//! boot has no firmware tables and says so), shown on the console at
//! boot, and lands in the stored record (`show --json`'s `identity`). No Hyper-V here: the
//! KVP part says it was not read.

mod common;

use common::*;

const UUID: &str = "12345678-9abc-def0-1122-334455667788";

fn smbios_lands_in_the_record(arch: &str, boot: &str, boot_mode: &str, version: &str) {
    let spec = format!(
        "type=1,manufacturer=CanaryCorp,product=CanaryBox {boot},serial=SN-{boot}-4242,uuid={UUID}"
    );
    let (c, run) = run_acked(arch, boot, &["--smbios", &spec, "--panic-after", "0.2"]);
    assert!(
        run.serial.contains(&format!(
            "identity: smbios CanaryCorp CanaryBox {boot} serial \"SN-{boot}-4242\" uuid {UUID}"
        )),
        "{}",
        run.serial
    );
    let rec = c.show_latest();
    assert_eq!(rec["schema"], "1.2", "{rec:#}");
    assert_eq!(rec["boot_mode"], boot_mode);
    let s = &rec["identity"]["smbios"];
    assert_eq!(s["status"], "found", "{rec:#}");
    assert_eq!(s["manufacturer"], "CanaryCorp");
    assert_eq!(s["product"], format!("CanaryBox {boot}"));
    assert_eq!(s["serial"], format!("SN-{boot}-4242"));
    assert_eq!(
        s["uuid"], UUID,
        "the UUID in its text order (SMBIOS 2.6+ byte order undone)"
    );
    assert_eq!(
        rec["identity"]["kvp"]["status"], "not read",
        "no VMBus under plain QEMU"
    );
    let line = run
        .serial
        .lines()
        .find(|l| l.contains("identity:"))
        .unwrap_or("");
    assert_eq!(s["version"], version, "{arch} {boot}: {line}");
    println!(
        "{arch} {boot}: SMBIOS {} in the stored record",
        s["version"]
    );
}

#[test]
fn smbios_from_qemu_lands_in_the_record_direct_boot() {
    // qboot (scripts/qemu-run's default direct-boot firmware) publishes a 2.x entry point.
    smbios_lands_in_the_record("x86_64", "direct", "pvh", "2.8");
}

#[test]
fn smbios_from_qemu_lands_in_the_record_uefi() {
    smbios_lands_in_the_record("x86_64", "uefi", "uefi", "2.8");
}

#[test]
fn smbios_from_qemu_lands_in_the_record_aarch64_uefi() {
    // AAVMF publishes the 3.0 (64-bit) entry point.
    smbios_lands_in_the_record("aarch64", "uefi", "uefi", "3.0");
}

#[test]
fn aarch64_direct_boot_has_no_smbios_and_says_so() {
    let (c, run) = run_acked("aarch64", "direct", &["--panic-after", "0.2"]);
    assert!(
        run.serial
            .contains("identity: smbios (no SMBIOS entry point); kvp (not read)"),
        "{}",
        run.serial
    );
    let rec = c.show_latest();
    assert_eq!(
        rec["identity"]["smbios"]["status"], "no SMBIOS entry point",
        "{rec:#}"
    );
}
