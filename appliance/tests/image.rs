//! The deployable image: `scripts/build-image` packages the UEFI canary as a Hyper-V Gen2 disk
//! (GPT, FAT32 EFI system partition with `\EFI\BOOT\BOOT{X64,AA64}.EFI` and `\canary.cfg`),
//! converts it to VHDX, converts that back to raw and boots it under QEMU UEFI (TCG: OVMF on
//! q35 for x86_64, AAVMF on virt for aarch64) until the canary prints "ready" with the
//! collector from the image's own config file.
//!
//! Besides the script's own boot check, the test reads the disk it wrote with its own parsers:
//! the protective MBR, the GPT header and the ESP entry (UEFI spec 2.10 §5.3), the FAT32 boot
//! sector (Microsoft FAT specification, "BPB"), and the VHDX file identifier (MS-VHDX §2.2.1).
//!
//! Then, per arch, the whole pipeline from the disk: a disk whose `\canary.cfg` names a UDP
//! socket of this test boots under the firmware, panics, and ships its crash record, which the
//! test reassembles, checks (CRC, decode), and acks; the canary's exit status says it saw the
//! ack.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capture::chunk::RecordId;
use capture::record::{Arch, BootMode, CrashKind, CrashRecord};
use capture::wire::{self, AckRepr, AckStatus, Repr};

/// QEMU runs one at a time: the machine has two cores shared with every other test.
static QEMU: Mutex<()> = Mutex::new(());

/// Bounds the boot check inside the script (OVMF takes 5-6 s of TCG, the canary well under 1 s).
const CHECK_TIMEOUT_S: &str = "120";

/// The collector address written into `\canary.cfg`; the ready line must name it, which shows
/// the canary read its options from the disk (the firmware passes no load options).
const COLLECTOR: &str = "10.0.2.2:7411";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn out_dir(arch: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("canary-image-test-{}-{arch}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Built {
    out: PathBuf,
    stderr: String,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

fn build_image(arch: &str) -> Built {
    let _q = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    run_build_image(arch, "boot", &["--collector", COLLECTOR, "--vhd"])
}

fn run_build_image(arch: &str, tag: &str, args: &[&str]) -> Built {
    let out = out_dir(&format!("{arch}-{tag}"));
    let o = Command::new(workspace().join("scripts/build-image"))
        .current_dir(workspace())
        .args(["--arch", arch])
        .args(args)
        .args(["--check-timeout", CHECK_TIMEOUT_S, "--out"])
        .arg(&out)
        .output()
        .expect("cannot run scripts/build-image");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "scripts/build-image --arch {arch} failed ({}):\n{stderr}",
        o.status
    );
    Built { out, stderr }
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The EFI system partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B in its on-disk
/// (mixed-endian) form (UEFI spec 2.10, Table 5.7 "Defined GPT Partition Entry - Partition
/// Type GUIDs").
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// Returns (first LBA, last LBA) of the ESP after checking the disk's partitioning.
fn check_gpt(disk: &[u8]) -> (u64, u64) {
    // Protective MBR: signature 0x55AA, one partition of type 0xEE from LBA 1 (UEFI §5.2.3).
    assert_eq!(&disk[510..512], &[0x55, 0xaa], "no MBR signature");
    assert_eq!(
        disk[446 + 4],
        0xee,
        "MBR partition 1 is not the GPT protective type"
    );
    assert_eq!(
        le32(disk, 446 + 8),
        1,
        "protective partition must start at LBA 1"
    );
    // GPT header at LBA 1 (UEFI §5.3.2): signature, revision 1.0, header CRC.
    let h = &disk[512..1024];
    assert_eq!(&h[0..8], b"EFI PART", "no GPT header at LBA 1");
    assert_eq!(le32(h, 8), 0x0001_0000, "GPT revision");
    let hsize = le32(h, 12) as usize;
    let mut hdr = h[..hsize].to_vec();
    hdr[16..20].fill(0);
    assert_eq!(crc32(&hdr), le32(h, 16), "GPT header CRC");
    let last_lba = (disk.len() / 512 - 1) as u64;
    assert_eq!(
        le64(h, 32),
        last_lba,
        "backup GPT header must be at the last LBA"
    );
    let entries_lba = le64(h, 72) as usize;
    let n = le32(h, 80) as usize;
    let esz = le32(h, 84) as usize;
    let table = &disk[entries_lba * 512..entries_lba * 512 + n * esz];
    assert_eq!(crc32(table), le32(h, 88), "GPT partition array CRC");
    // Exactly one partition: the ESP.
    let used: Vec<&[u8]> = table.chunks(esz).filter(|e| e[..16] != [0u8; 16]).collect();
    assert_eq!(used.len(), 1, "expected exactly one partition");
    let e = used[0];
    assert_eq!(
        e[..16],
        ESP_TYPE,
        "partition 1 is not an EFI system partition"
    );
    let (first, last) = (le64(e, 32), le64(e, 40));
    assert_eq!(first % 2048, 0, "ESP not 1 MiB aligned");
    assert!(last < last_lba - 32, "ESP overlaps the backup GPT");
    // The backup header really is there.
    let b = &disk[last_lba as usize * 512..];
    assert_eq!(&b[0..8], b"EFI PART", "no backup GPT header");
    (first, last)
}

/// FAT32 boot sector of the ESP (Microsoft "FAT: General Overview of On-Disk Format", BPB).
fn check_fat32(esp: &[u8], first_lba: u64) {
    assert_eq!(
        &esp[510..512],
        &[0x55, 0xaa],
        "no boot sector signature on the ESP"
    );
    assert_eq!(le16(esp, 11), 512, "BPB_BytsPerSec");
    assert_eq!(le16(esp, 17), 0, "BPB_RootEntCnt must be 0 on FAT32");
    assert_eq!(le16(esp, 22), 0, "BPB_FATSz16 must be 0 on FAT32");
    assert_eq!(&esp[82..90], b"FAT32   ", "BS_FilSysType");
    assert_eq!(
        le32(esp, 28) as u64,
        first_lba,
        "BPB_HiddSec must be the partition's LBA"
    );
    // FAT32 by cluster count, which is what decides the type (not the label).
    let tot = le32(esp, 32) as u64;
    let rsvd = le16(esp, 14) as u64;
    let fats = esp[16] as u64;
    let fatsz = le32(esp, 36) as u64;
    let spc = esp[13] as u64;
    let clusters = (tot - rsvd - fats * fatsz) / spc;
    assert!(
        clusters >= 65525,
        "{clusters} clusters is FAT12/16, not FAT32"
    );
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses), bitwise: no dependency for a test.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Finds a file's bytes on the FAT by reading it back with mtools (what the firmware sees).
fn read_fat_file(raw: &Path, first_lba: u64, path: &str) -> Vec<u8> {
    let o = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{}", raw.display(), first_lba * 512))
        .arg(format!("::{path}"))
        .output()
        .expect("cannot run mtype (mtools)");
    assert!(
        o.status.success(),
        "{path} is not on the ESP: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn check_image(arch: &str, efi_name: &str, pe_machine: u16) {
    let b = build_image(arch);
    assert!(
        b.stderr
            .contains(&format!("{arch}: booted to ready under QEMU UEFI")),
        "the script did not report the boot check:\n{}",
        b.stderr
    );
    assert!(
        b.stderr.contains(&format!("collector {COLLECTOR}")),
        "the ready line does not name the configured collector:\n{}",
        b.stderr
    );

    let raw_path = b.out.join(format!("canary-{arch}.raw"));
    let raw = std::fs::read(&raw_path).unwrap();
    assert_eq!(raw.len() % (1 << 20), 0, "disk size not a whole MiB");
    let (first, last) = check_gpt(&raw);
    let esp = &raw[first as usize * 512..(last as usize + 1) * 512];
    check_fat32(esp, first);

    let efi = read_fat_file(&raw_path, first, &format!("/EFI/BOOT/{efi_name}"));
    assert_eq!(&efi[..2], b"MZ", "{efi_name} is not a PE image");
    let pe = le32(&efi, 0x3c) as usize;
    assert_eq!(&efi[pe..pe + 4], b"PE\0\0");
    assert_eq!(
        le16(&efi, pe + 4),
        pe_machine,
        "{efi_name} is for the wrong machine"
    );
    // Optional header subsystem 10 = EFI application (PE/COFF spec, "Windows Subsystem").
    assert_eq!(
        le16(&efi, pe + 24 + 68),
        10,
        "{efi_name} is not an EFI application"
    );
    let cfg = String::from_utf8(read_fat_file(&raw_path, first, "/canary.cfg")).unwrap();
    assert!(
        cfg.lines()
            .any(|l| l.trim() == format!("collector={COLLECTOR}")),
        "canary.cfg lacks the collector:\n{cfg}"
    );

    // VHDX: the file type identifier "vhdxfile" at offset 0 (MS-VHDX §2.2.1); and the fixed
    // VHD for Azure: the "conectix" footer in the last 512 bytes, disk type 2 = fixed, and a
    // virtual size of whole MiB equal to the raw disk (Azure's rules for uploaded VHDs).
    let vhdx = std::fs::read(b.out.join(format!("canary-{arch}.vhdx"))).unwrap();
    assert_eq!(&vhdx[..8], b"vhdxfile", "not a VHDX file");
    let vhd = std::fs::read(b.out.join(format!("canary-{arch}.vhd"))).unwrap();
    assert_eq!(
        vhd.len(),
        raw.len() + 512,
        "fixed VHD = raw disk + 512-byte footer"
    );
    let footer = &vhd[vhd.len() - 512..];
    assert_eq!(&footer[..8], b"conectix", "no VHD footer");
    let be32 = |o: usize| u32::from_be_bytes(footer[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(footer[o..o + 8].try_into().unwrap());
    assert_eq!(be32(60), 2, "VHD disk type must be fixed (2)");
    assert_eq!(
        be64(48),
        raw.len() as u64,
        "VHD current size must equal the raw disk"
    );
    assert_eq!(
        &vhd[..raw.len()],
        &raw[..],
        "VHD data differs from the raw disk"
    );
}

#[test]
fn x86_64_vhdx_is_a_gen2_disk_that_boots_to_ready_under_ovmf() {
    // IMAGE_FILE_MACHINE_AMD64 (PE/COFF spec, "Machine Types").
    check_image("x86_64", "BOOTX64.EFI", 0x8664);
}

/// A minimal collector for the test: reassembles chunks by offset, checks the record CRC,
/// decodes the record and acks it as stored (capture's wire format, `capture/API.md`).
fn collect_one(sock: &UdpSocket, deadline: Instant) -> Option<(CrashRecord, usize)> {
    let mut parts: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 2048];
    let mut acked: Option<(CrashRecord, usize)> = None;
    while Instant::now() < deadline {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            if acked.is_some() {
                return acked; // quiet after the ack: no retransmits pending
            }
            continue;
        };
        let Ok(Repr::Chunk(c)) = wire::parse(&buf[..n], None) else {
            continue; // heartbeats and anything else
        };
        if !parts.iter().any(|(o, _)| *o == c.offset) {
            parts.push((c.offset, c.data.to_vec()));
        }
        parts.sort_by_key(|(o, _)| *o);
        let record: Vec<u8> = parts.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        if record.len() != c.record_len as usize {
            continue;
        }
        let id = RecordId::of(c.boot_id, c.seq, &record);
        assert_eq!(
            id.record_crc, c.record_crc,
            "record CRC mismatch after reassembly"
        );
        let rec = CrashRecord::decode(c.schema_major, c.schema_minor, &record)
            .expect("the shipped record does not decode");
        let mut out = [0u8; 128];
        let len = wire::emit(
            &Repr::Ack(AckRepr::for_record(&id, AckStatus::Stored)),
            None,
            &mut out,
        )
        .unwrap();
        sock.send_to(&out[..len], from).unwrap();
        acked = Some((rec, record.len()));
    }
    acked
}

/// Builds a disk whose `\canary.cfg` points at a socket of this test, boots it under the
/// arch's UEFI firmware, lets it panic, and collects and acks the record.
fn disk_image_ships_its_crash_record(arch: &str) {
    let _q = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let collector = format!("10.0.2.2:{port}");
    // No boot check in the script: this test is the boot, and a check run would panic into
    // our socket too. qemu_exit: the exit status says whether the ack arrived.
    let b = run_build_image(
        arch,
        "ship",
        &[
            "--collector",
            &collector,
            "--ip",
            "10.0.2.15/24",
            "--gw",
            "10.0.2.2",
            "--append",
            "panic_after=0.3 panic_action=poweroff qemu_exit=1",
            "--no-check",
        ],
    );
    let raw = b.out.join(format!("canary-{arch}.raw"));
    let vars = b.out.join("vars.fd");
    let console = b.out.join("console.log");
    let (qemu_bin, code, vars_src, machine): (&str, &str, &str, &[&str]) = if arch == "x86_64" {
        (
            "qemu-system-x86_64",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            &[
                "-machine",
                "q35",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
                "-device",
                "virtio-blk-pci,drive=d0,bootindex=0",
            ],
        )
    } else {
        (
            "qemu-system-aarch64",
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
            &[
                "-machine",
                "virt",
                "-cpu",
                "cortex-a57",
                "-semihosting-config",
                "enable=on,target=native",
                "-device",
                "virtio-net-device,netdev=n0",
                "-device",
                "virtio-blk-device,drive=d0",
            ],
        )
    };
    std::fs::copy(vars_src, &vars).unwrap();
    let mut qemu = Command::new("timeout")
        .args(["-k", "2", "120", qemu_bin])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-m", "128", "-no-reboot", "-netdev", "user,id=n0"])
        .args(machine)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={code}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("if=none,id=d0,format=raw,file={}", raw.display()))
        .args(["-boot", "menu=on,splash-time=0"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {qemu_bin}: {e}"));
    let got = collect_one(&sock, Instant::now() + Duration::from_secs(110));
    let status = qemu.wait().unwrap();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let (rec, len) = got.unwrap_or_else(|| panic!("no crash record arrived; console:\n{log}"));
    // 33: the canary's "panicked and the record was acked" exit (scripts/qemu-run --help).
    assert_eq!(status.code(), Some(33), "QEMU exit; console:\n{log}");
    assert!(
        log.contains("acked by the collector"),
        "console does not report the ack:\n{log}"
    );
    let want_arch = if arch == "x86_64" {
        Arch::X86_64
    } else {
        Arch::Aarch64
    };
    assert_eq!(rec.arch, want_arch);
    assert_eq!(rec.boot_mode, BootMode::Uefi, "booted some other way");
    assert_eq!(rec.kind, CrashKind::Panic);
    assert!(
        rec.message.contains("panic_after=0.300s"),
        "message: {}",
        rec.message
    );
    // The options came from \canary.cfg on the disk: the log tail has the command line.
    assert!(
        rec.log_tail.contains(&format!("collector={collector}")),
        "log tail lacks the configured collector:\n{}",
        rec.log_tail
    );
    assert!(!rec.build_id.is_empty() && len > 0);
    eprintln!(
        "{arch} disk image shipped a {len}-byte record: {:?} {} (build {})",
        rec.kind, rec.message, rec.build_id
    );
}

#[test]
fn x86_64_disk_image_ships_its_crash_record_to_a_collector_under_ovmf() {
    disk_image_ships_its_crash_record("x86_64");
}

#[test]
fn aarch64_vhdx_is_a_gen2_disk_that_boots_to_ready_under_aavmf() {
    // IMAGE_FILE_MACHINE_ARM64 (PE/COFF spec, "Machine Types").
    check_image("aarch64", "BOOTAA64.EFI", 0xaa64);
}

#[test]
fn aarch64_disk_image_ships_its_crash_record_to_a_collector_under_aavmf() {
    disk_image_ships_its_crash_record("aarch64");
}
