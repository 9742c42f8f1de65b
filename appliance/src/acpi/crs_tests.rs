//! Tests of the `_CRS` reader over AML built here from the ACPI 6.5 encodings (§20.2 AML
//! grammar, §6.4 resource descriptors), in the shapes OpenVMM and Hyper-V emit
//! (`vm/acpi/src/dsdt.rs`: `\_SB.VMOD` with `_HID "ACPI0004"` and the low/high gaps as
//! QWordMemory, `\_SB.VMOD.VMBS` or `\_SB.PCI0.VMBS` with `_HID "VMBus"`).

use super::*;
use std::string::ToString;
use std::vec::Vec;

/// AML builders (test only; std available).
pub mod aml {
    /// PkgLength (§20.2.4) + `body`: the length counts the PkgLength bytes too.
    pub fn pkg(body: &[u8]) -> Vec<u8> {
        let n = body.len();
        let mut out = if n < 63 {
            vec![(n + 1) as u8]
        } else {
            let extra = if n + 2 < 1 << 12 {
                1
            } else if n + 3 < 1 << 20 {
                2
            } else {
                3
            };
            let len = n + 1 + extra;
            let mut v = vec![((extra as u8) << 6) | (len & 0x0f) as u8];
            for i in 0..extra {
                v.push((len >> (4 + 8 * i)) as u8);
            }
            v
        };
        out.extend_from_slice(body);
        out
    }

    /// NameString (§20.2.2) for `\_SB.VMOD`, `VMBS`, `^FOO`: 4-char segments, padded with `_`.
    pub fn name(path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = path;
        while let Some(r) = rest.strip_prefix('\\').or_else(|| rest.strip_prefix('^')) {
            out.push(path.as_bytes()[path.len() - rest.len()]);
            rest = r;
        }
        let segs: Vec<[u8; 4]> = rest
            .split('.')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut seg = [b'_'; 4];
                seg[..s.len()].copy_from_slice(s.as_bytes());
                seg
            })
            .collect();
        match segs.len() {
            0 => out.push(0),
            1 => {}
            2 => out.push(0x2e),
            n => out.extend_from_slice(&[0x2f, n as u8]),
        }
        for s in segs {
            out.extend_from_slice(&s);
        }
        out
    }

    pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// DefScope / DefDevice.
    pub fn scope(path: &str, body: &[u8]) -> Vec<u8> {
        cat(&[&[0x10], &pkg(&cat(&[&name(path), body]))])
    }
    pub fn device(path: &str, body: &[u8]) -> Vec<u8> {
        cat(&[&[0x5b, 0x82], &pkg(&cat(&[&name(path), body]))])
    }
    /// DefName with a string, a DWord integer, or raw data.
    pub fn name_str(n: &str, s: &str) -> Vec<u8> {
        cat(&[&[0x08], &name(n), &[0x0d], s.as_bytes(), &[0]])
    }
    pub fn name_int(n: &str, v: u32) -> Vec<u8> {
        cat(&[&[0x08], &name(n), &[0x0c], &v.to_le_bytes()])
    }
    pub fn name_data(n: &str, data: &[u8]) -> Vec<u8> {
        cat(&[&[0x08], &name(n), data])
    }
    /// DefMethod with `flags` and a body that is not run.
    pub fn method(n: &str, flags: u8, body: &[u8]) -> Vec<u8> {
        cat(&[&[0x14], &pkg(&cat(&[&name(n), &[flags], body]))])
    }
    /// Name(_CRS, ResourceTemplate() { items; EndTag }) with a WordPrefix BufferSize.
    pub fn crs(items: &[Vec<u8>]) -> Vec<u8> {
        let mut t = items.concat();
        t.extend_from_slice(&[0x79, 0x00]);
        let mut b = vec![0x0b];
        b.extend_from_slice(&(t.len() as u16).to_le_bytes());
        b.extend_from_slice(&t);
        name_data("_CRS", &cat(&[&[0x11], &pkg(&b)]))
    }
    /// QWord address space descriptor (§6.4.3.5.1), memory, MinFixed|MaxFixed, read-write.
    pub fn qword_mem(min: u64, max: u64) -> Vec<u8> {
        let mut d = vec![0x8a, 43, 0, 0x00, 0x0c, 0x03];
        for v in [0, min, max, 0, max - min + 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }
    /// DWord address space descriptor (§6.4.3.5.2) of resource type `ty` (0 memory, 1 I/O).
    pub fn dword(ty: u8, min: u32, max: u32) -> Vec<u8> {
        let mut d = vec![0x87, 23, 0, ty, 0x0c, 0x03];
        for v in [0, min, max, 0, max - min + 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }
    /// 32-bit fixed memory descriptor (§6.4.3.4).
    pub fn fixed_mem(base: u32, len: u32) -> Vec<u8> {
        cat(&[&[0x86, 9, 0, 1], &base.to_le_bytes(), &len.to_le_bytes()])
    }
    /// I/O port descriptor (§6.4.2.5) and an extended interrupt (§6.4.3.6).
    pub fn io(port: u16) -> Vec<u8> {
        cat(&[
            &[0x47, 1],
            &port.to_le_bytes(),
            &port.to_le_bytes(),
            &[1, 8],
        ])
    }
    pub fn irq(n: u32) -> Vec<u8> {
        cat(&[&[0x89, 6, 0, 0x03, 1], &n.to_le_bytes()])
    }
    /// A table: 36-byte header (signature, length, revision 2; checksum not read here).
    pub fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t[4..8].copy_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t[8] = 2;
        t.extend_from_slice(body);
        t
    }
}

use aml::*;

const LOW: (u64, u64) = (0xf800_0000, 0xffff_ffff);
const HIGH: (u64, u64) = (0x10_0000_0000, 0x1f_ffff_ffff);

/// The VMBus device's body as OpenVMM writes it (`add_vmbus`, x86: no interrupt).
fn vmbs_body(hid: &str) -> Vec<u8> {
    cat(&[
        &cat(&[&[0x08], &name("STA"), &[0x0a, 0x0f]]),
        &name_int("_ADR", 0),
        &name_str("_DDN", "VMBUS"),
        &name_str("_HID", hid),
        &name_int("_UID", 0),
        // Method(_DIS) { And(STA, 0xD, STA) }
        &method(
            "_DIS",
            0,
            &cat(&[&[0x7b], &name("STA"), &[0x0a, 0x0d], &name("STA")]),
        ),
        // Method(_STA) { Return(STA) }
        &method("_STA", 0, &cat(&[&[0xa4], &name("STA")])),
        &name_int("_PS3", 0),
        &crs(&[]),
    ])
}

/// A DSDT in OpenVMM's shape without PCI: \_S5, APIC, a UART, VMOD with the gaps, VMBS as a
/// separate top-level device with a full path, RTC.
fn openvmm_dsdt(low: (u64, u64)) -> Vec<u8> {
    let body = cat(&[
        &name_data("\\_S5", &[0x12, 0x04, 0x02, 0x00, 0x00]),
        &device(
            "\\_SB.APIC",
            &cat(&[
                &name_data("_HID", &[0x0c, 0x41, 0xd0, 0x00, 0x03]),
                &crs(&[
                    fixed_mem(0xfee0_0000, 0x1000),
                    fixed_mem(0xfec0_0000, 0x1000),
                ]),
            ]),
        ),
        &device(
            "\\_SB.UAR1",
            &cat(&[&name_str("_DDN", "COM1"), &crs(&[io(0x3f8), irq(4)])]),
        ),
        &device(
            "\\_SB.VMOD",
            &cat(&[
                &name_str("_HID", "ACPI0004"),
                &name_int("_UID", 0),
                &crs(&[qword_mem(low.0, low.1), qword_mem(HIGH.0, HIGH.1)]),
            ]),
        ),
        &device("\\_SB.VMOD.VMBS", &vmbs_body("VMBus")),
        &device("\\_SB.RTC0", &crs(&[io(0x70), irq(8)])),
    ]);
    table(b"DSDT", &body)
}

fn path(p: &str) -> AmlPath {
    let mut a = AmlPath::ROOT;
    for s in p.trim_start_matches('\\').split('.') {
        let mut seg = [b'_'; 4];
        seg[..s.len()].copy_from_slice(s.as_bytes());
        assert!(a.push(seg));
    }
    a
}

fn range(start: u64, end: u64) -> MmioRange {
    MmioRange { start, end }
}

#[test]
fn openvmm_vmod_gives_the_low_and_high_gaps_and_vram_goes_low() {
    let t = openvmm_dsdt(LOW);
    let m = vmbus_mmio(&[&t]).unwrap();
    assert_eq!(m.device, path("_SB.VMOD.VMBS"));
    assert_eq!(m.source, path("_SB.VMOD"));
    assert_eq!(format!("{}", m.device), "\\_SB.VMOD.VMBS");
    // The low gap straddles the vTPM at 0xfed40000: cut there, as Linux does.
    assert_eq!(
        m.windows.as_slice(),
        &[range(0xf800_0000, VTPM_BASE - 1), range(HIGH.0, HIGH.1)]
    );
    // The APIC's registers are claims; the UART and RTC name only I/O and interrupts.
    assert_eq!(
        m.claims.as_slice(),
        &[
            range(0xfee0_0000, 0xfee0_0fff),
            range(0xfec0_0000, 0xfec0_0fff)
        ]
    );
    // 8 MiB (OpenVMM's offer) at the bottom of the low gap, below 4 GiB.
    assert_eq!(place_vram(&m, 8, 1 << 32), Ok(0xf800_0000));
}

#[test]
fn pci0_variant_takes_the_root_bridge_windows() {
    // OpenVMM with PCI (`add_pci`): PNP0A03, _OSC method, _PRT package, _CRS with a bus number
    // range, the config ports and the two gaps; VMBS under \_SB.PCI0.
    let bus = vec![0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let pci = device(
        "\\_SB.PCI0",
        &cat(&[
            &name_data("_HID", &[0x0c, 0x41, 0xd0, 0x0a, 0x03]),
            &method("_OSC", 4, &[0xa4, 0x11, 0x03, 0x0a, 0x00]),
            &name_data("_PRT", &[0x12, 0x02, 0x00]),
            &crs(&[
                bus,
                io(0xcf8),
                dword(1, 0x0d00, 0xffff),
                qword_mem(0xe000_0000, 0xfbff_ffff),
                qword_mem(HIGH.0, HIGH.1),
            ]),
        ]),
    );
    let t = table(
        b"DSDT",
        &cat(&[&pci, &device("\\_SB.PCI0.VMBS", &vmbs_body("VMBus"))]),
    );
    let m = vmbus_mmio(&[&t]).unwrap();
    assert_eq!(m.source, path("_SB.PCI0"));
    // The DWord I/O range is not a memory window.
    assert_eq!(
        m.windows.as_slice(),
        &[range(0xe000_0000, 0xfbff_ffff), range(HIGH.0, HIGH.1)]
    );
    assert_eq!(place_vram(&m, 8, 1 << 32), Ok(0xe000_0000));
}

#[test]
fn nested_declarations_and_ssdts_as_hyper_v_writes_them() {
    // Scope(\_SB) { Device(VMOD) { _HID, _CRS (DWord windows), Device(VMBS) { _HID "VMBUS" } } }
    // with an OperationRegion, a Field, a Mutex, an If and an External the reader steps over,
    // and the VMBus device in an SSDT under the DSDT's VMOD.
    let field = cat(&[
        &[0x5b, 0x81],
        &pkg(&cat(&[&name("GNVS"), &[0x00, b'F', b'L', b'G', b'1', 8]])),
    ]);
    let opregion = cat(&[
        &[0x5b, 0x80],
        &name("GNVS"),
        &[0x00, 0x0c],
        &0xfed0_0000u32.to_le_bytes(),
        &[0x0a, 0x10],
    ]);
    let dsdt = table(
        b"DSDT",
        &cat(&[
            &opregion,
            &field,
            &cat(&[&[0x5b, 0x01], &name("MUTX"), &[0]]),
            &cat(&[&[0xa0], &pkg(&[0x01, 0x5b, 0x31])]), // If (One) { Debug }
            &scope(
                "\\_SB",
                &device(
                    "VMOD",
                    &cat(&[
                        &name_str("_HID", "ACPI0004"),
                        &crs(&[
                            dword(0, 0xc000_0000, 0xdfff_ffff),
                            // Adjacent to the first: merged.
                            dword(0, 0xe000_0000, 0xefff_ffff),
                            // Below 1 MiB: skipped.
                            dword(0, 0xa_0000, 0xb_ffff),
                        ]),
                    ]),
                ),
            ),
        ]),
    );
    let ssdt = table(
        b"SSDT",
        &cat(&[
            &cat(&[&[0x15], &name("\\_SB.VMOD"), &[0x06, 0x00]]),
            &scope("\\_SB.VMOD", &device("VMBS", &name_str("_HID", "VMBUS"))),
        ]),
    );
    let m = vmbus_mmio(&[&dsdt, &ssdt]).unwrap();
    assert_eq!(m.device, path("_SB.VMOD.VMBS"));
    assert_eq!(m.source, path("_SB.VMOD"));
    assert_eq!(m.windows.as_slice(), &[range(0xc000_0000, 0xefff_ffff)]);
    assert_eq!(place_vram(&m, 8, 1 << 32), Ok(0xc000_0000));
}

#[test]
fn qemu_without_a_vmbus_device_says_so() {
    let t = table(
        b"DSDT",
        &cat(&[
            &name_data("\\_S5", &[0x12, 0x04, 0x02, 0x00, 0x00]),
            &device("\\_SB.PCI0", &crs(&[qword_mem(0x8000_0000, 0xfebf_ffff)])),
        ]),
    );
    let e = vmbus_mmio(&[&t]).unwrap_err();
    assert_eq!(
        e,
        CrsError::NoVmbusDevice {
            stop: StopNote(None)
        }
    );
    assert_eq!(
        e.to_string(),
        "no device with _HID \"VMBus\" or \"VMBUS\" in the DSDT/SSDTs"
    );
}

#[test]
fn an_unknown_term_ends_its_body_and_is_named_in_the_error() {
    // Store(One, Local0) (0x70) at the top level, then the VMBus device: never reached.
    let t = table(
        b"DSDT",
        &cat(&[
            &[0x70, 0x01, 0x60],
            &device("\\_SB.VMBS", &name_str("_HID", "VMBus")),
        ]),
    );
    let e = vmbus_mmio(&[&t]).unwrap_err();
    assert_eq!(
        e,
        CrsError::NoVmbusDevice {
            stop: StopNote(Some(Stop {
                table: 0,
                error: AmlError::UnknownOpcode { op: 0x70, at: 0 }
            }))
        }
    );
    assert!(e.to_string().contains("opcode 0x70 at offset 0x0"), "{e}");
    // Inside a device body it ends only that body: the next device is still read.
    let t = table(
        b"DSDT",
        &cat(&[
            &device("\\_SB.ODD", &[0x70, 0x01, 0x60]),
            &openvmm_dsdt(LOW)[36..],
        ]),
    );
    assert_eq!(vmbus_mmio(&[&t]).unwrap().source, path("_SB.VMOD"));
}

#[test]
fn a_vmbus_device_without_ranges_or_with_a_crs_method_is_an_error() {
    let t = table(b"DSDT", &device("\\_SB.VMBS", &vmbs_body("VMBus")));
    let e = vmbus_mmio(&[&t]).unwrap_err();
    assert!(matches!(e, CrsError::NoRanges { vmbus, .. } if vmbus == path("_SB.VMBS")));
    let t = table(
        b"DSDT",
        &cat(&[
            &device("\\_SB.VMOD", &method("_CRS", 0, &[0xa4, 0x00])),
            &device("\\_SB.VMOD.VMBS", &name_str("_HID", "VMBus")),
        ]),
    );
    assert_eq!(
        vmbus_mmio(&[&t]).unwrap_err(),
        CrsError::CrsIsMethod {
            dev: path("_SB.VMOD")
        }
    );
}

#[test]
fn a_range_too_small_or_above_4_gib_or_claimed_gives_no_place() {
    // A 4 MiB low gap: 8 MiB do not fit below 4 GiB; the high gap is out of reach.
    let t = openvmm_dsdt((0xffc0_0000, 0xffff_ffff));
    let m = vmbus_mmio(&[&t]).unwrap();
    assert_eq!(
        place_vram(&m, 8, 1 << 32),
        Err(PlaceError::NoRoom {
            mib: 8,
            below: 1 << 32,
            windows: 2,
            claims: 2
        })
    );
    // Without the 4 GiB limit Linux's rule takes the high gap.
    assert_eq!(place_vram(&m, 8, u64::MAX), Ok(HIGH.0));
    assert_eq!(place_vram(&m, 0, u64::MAX), Err(PlaceError::ZeroSize));
    // A window whose start is not 1 MiB aligned and whose first MiB is claimed.
    let mut m = vmbus_mmio(&[&openvmm_dsdt(LOW)]).unwrap();
    m.windows[0] = range(0xf7f8_0000, 0xfbff_ffff);
    m.claims.push(range(0xf800_0000, 0xf800_0fff)).unwrap();
    assert_eq!(place_vram(&m, 8, 1 << 32), Ok(0xf810_0000));
    m.claims_dropped = 1;
    assert_eq!(place_vram(&m, 8, 1 << 32), Err(PlaceError::TooManyClaims));
}

#[test]
fn resource_templates_are_checked() {
    let mut seen = Vec::new();
    let mut f = |w: bool, r: MmioRange| seen.push((w, r));
    assert_eq!(resources(&[0x79, 0x00], &mut f), Ok(()));
    assert_eq!(
        resources(&qword_mem(0x1000_0000, 0x1fff_ffff), &mut f),
        Err(ResourceError::NoEndTag { len: 46 })
    );
    let mut short = qword_mem(0x1000_0000, 0x1fff_ffff);
    short[1] = 20;
    short.truncate(23);
    short.extend_from_slice(&[0x79, 0]);
    assert_eq!(
        resources(&short, &mut f),
        Err(ResourceError::Short {
            tag: 0x8a,
            at: 0,
            have: 20,
            need: 43
        })
    );
    assert_eq!(
        resources(&[0x8a, 0xff, 0xff, 0], &mut f),
        Err(ResourceError::Truncated { at: 0, len: 4 })
    );
    // A broken VMOD template is reported with its device.
    let mut t = openvmm_dsdt(LOW);
    let at = t.windows(3).position(|w| w == [0x8a, 43, 0]).unwrap();
    t[at + 1] = 50; // longer than the buffer holds
    assert!(matches!(
        vmbus_mmio(&[&t]).unwrap_err(),
        CrsError::BadTemplate { dev, .. } if dev == path("_SB.VMOD")
    ));
}

#[test]
fn truncated_tables_and_garbage_never_panic() {
    let t = openvmm_dsdt(LOW);
    for n in 0..t.len() {
        let mut c = t[..n].to_vec();
        if n >= 8 {
            c[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        }
        match vmbus_mmio(&[&c]) {
            // Cut after the VMBus device: the ranges are all there.
            Ok(m) => assert_eq!(m.windows.len(), 2, "cut at {n}"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    assert_eq!(vmbus_mmio(&[]), Err(CrsError::NoTables));
    assert_eq!(vmbus_mmio(&[b"FACP"]), Err(CrsError::BadTable { table: 0 }));
    let mut long = t.clone();
    long[4..8].copy_from_slice(&(t.len() as u32 + 1).to_le_bytes());
    assert_eq!(vmbus_mmio(&[&long]), Err(CrsError::BadTable { table: 0 }));
    // Pseudo-random bytes, and random bytes after each valid prefix.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    for round in 0..2000 {
        let keep = round % t.len().min(400);
        let mut body: Vec<u8> = t[36..36 + keep.min(t.len() - 36)].to_vec();
        body.extend((0..64).map(|_| next()));
        let c = table(b"DSDT", &body);
        if let Ok(m) = vmbus_mmio(&[&c]) {
            let _ = place_vram(&m, 8, 1 << 32);
        }
        let mut seen = 0;
        let _ = resources(&body, &mut |_, _| seen += 1);
    }
    // Deep nesting is refused, not recursed without bound.
    let mut d = device("VMBS", &name_str("_HID", "VMBus"));
    for _ in 0..40 {
        d = scope("\\", &d);
    }
    let e = vmbus_mmio(&[&table(b"DSDT", &d)]).unwrap_err();
    assert!(e.to_string().contains("nested deeper"), "{e}");
}

#[test]
fn the_builder_writes_pkglength_as_the_spec_says() {
    // §20.2.4: one byte up to 63, else the lead's low nibble then bytes of 8 bits.
    assert_eq!(pkg(&[0; 2])[0], 3);
    let p = pkg(&[0; 100]);
    assert_eq!((p[0], p[1]), (0x40 | (102 & 0xf), (102 >> 4) as u8));
    let p = pkg(&[0; 5000]);
    assert_eq!(p[0] >> 6, 2);
    assert_eq!(name("\\_SB.VMOD"), b"\\\x2e_SB_VMOD");
    assert_eq!(name("\\_SB.VMOD.VMBS"), b"\\\x2f\x03_SB_VMODVMBS");
}
