//! Who crashed (issue 13), under QEMU TCG: the SMBIOS System Information QEMU is given
//! (`-smbios type=1,...`) is read by the canary (x86_64 direct boot: the BIOS-area entry
//! point qboot/SeaBIOS publish; UEFI: OVMF's configuration table), shown on the console at
//! boot, and lands in the stored record (`show --json`'s `identity`). No Hyper-V here: the
//! KVP part says it was not read.

mod common;

use common::*;

const UUID: &str = "12345678-9abc-def0-1122-334455667788";

fn smbios_lands_in_the_record(boot: &str, boot_mode: &str) {
    let spec = format!(
        "type=1,manufacturer=CanaryCorp,product=CanaryBox {boot},serial=SN-{boot}-4242,uuid={UUID}"
    );
    let (c, run) = run_acked("x86_64", boot, &["--smbios", &spec, "--panic-after", "0.2"]);
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
    println!("{boot}: SMBIOS {} in the stored record", s["version"]);
}

#[test]
fn smbios_from_qemu_lands_in_the_record_direct_boot() {
    smbios_lands_in_the_record("direct", "pvh");
}

#[test]
fn smbios_from_qemu_lands_in_the_record_uefi() {
    smbios_lands_in_the_record("uefi", "uefi");
}
