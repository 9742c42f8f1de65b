//! A small checked reader for flattened device trees (Devicetree Specification v0.4, chapter 5
//! "Flattened Devicetree (DTB) Format"): header, structure block tokens, strings block.
//!
//! It reads only what the canary needs (`/chosen/bootargs`, `/memory`, the PL011, PL031,
//! PSCI, virtio-mmio and generic-ECAM nodes) in one pass. Every offset and length is checked
//! against the blob; a malformed tree gives an [`FdtError`], never a panic or an
//! out-of-bounds read.

use heapless::Vec;

/// FDT header magic (spec 5.2).
const MAGIC: u32 = 0xd00d_feed;
/// Structure block tokens (spec 5.4.1).
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// The header is 40 bytes (version 17).
const HEADER_LEN: usize = 40;
/// Refuse blobs larger than this (QEMU's are a few KiB, at most 1 MiB).
pub const MAX_SIZE: usize = 2 << 20;
/// Deepest node nesting we follow.
const MAX_DEPTH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FdtError {
    #[error("no FDT magic (found {0:#x})")]
    BadMagic(u32),
    #[error("FDT total size {0} is out of range")]
    BadSize(usize),
    #[error("FDT block at {off} + {len} lies outside the blob")]
    BadBlock { off: usize, len: usize },
    #[error("FDT structure block truncated at {0}")]
    Truncated(usize),
    #[error("FDT unknown token {token:#x} at {off}")]
    BadToken { token: u32, off: usize },
    #[error("FDT property name offset {0} outside the strings block")]
    BadName(usize),
    #[error("FDT nodes nested deeper than 16")]
    TooDeep,
    #[error("FDT unbalanced END_NODE at {0}")]
    Unbalanced(usize),
}

/// A `reg` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    pub base: u64,
    pub len: u64,
}

/// PSCI conduit (DT binding `arm,psci`: `method = "hvc" | "smc"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    Hvc,
    Smc,
}

/// A PCI host bridge memory window (`ranges` entry, IEEE 1275 PCI binding: the child
/// address's first cell carries the space code in bits 24-25, 0b10 = 32-bit memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    pub pci: u64,
    pub cpu: u64,
    pub size: u64,
}

/// What the canary takes from the device tree.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub bootargs: Option<&'a str>,
    pub memory: Vec<Reg, 8>,
    pub pl011: Option<Reg>,
    pub pl031: Option<Reg>,
    pub psci: Option<PsciMethod>,
    pub virtio_mmio: Vec<Reg, 32>,
    pub ecam: Option<Reg>,
    /// The generic ECAM host bridge's 32-bit memory window (for BARs firmware left unset).
    pub pci_mem32: Option<PciWindow>,
    /// The interrupt controller: GIC version (2 or 3), distributor, and for GICv3 the
    /// redistributor region (`arm,gic-v3`; `arm,cortex-a15-gic` / `arm,gic-400` are v2).
    pub gic: Option<(u8, Reg, Option<Reg>)>,
    /// `reg` entries that did not fit the lists above.
    pub dropped: usize,
}

/// A validated blob.
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn block(data: &[u8], off: u32, len: u32) -> Result<&[u8], FdtError> {
    let (off, len) = (off as usize, len as usize);
    off.checked_add(len)
        .and_then(|end| data.get(off..end))
        .ok_or(FdtError::BadBlock { off, len })
}

/// A NUL-terminated string at the start of `b` (without the NUL), if there is a NUL.
fn cstr(b: &[u8]) -> Option<&[u8]> {
    b.iter().position(|&c| c == 0).map(|n| &b[..n])
}

/// Whether a `compatible` string list contains `want`.
fn compatible_has(list: &[u8], want: &str) -> bool {
    list.split(|&c| c == 0).any(|s| s == want.as_bytes())
}

/// Reads a number of `cells` 32-bit cells (0..=2) from the start of `b`.
fn cells(b: &[u8], n: u32) -> Option<u64> {
    match n {
        0 => Some(0),
        1 => be32(b, 0).map(u64::from),
        2 => Some((u64::from(be32(b, 0)?) << 32) | u64::from(be32(b, 4)?)),
        _ => None,
    }
}

/// The node being read: its parent's cell sizes decode its `reg`; its own `#address-cells` /
/// `#size-cells` apply to its children.
#[derive(Clone, Copy, Default)]
struct Node<'a> {
    name: &'a [u8],
    parent_addr: u32,
    parent_size: u32,
    addr_cells: u32,
    size_cells: u32,
    compatible: &'a [u8],
    reg: &'a [u8],
    ranges: &'a [u8],
    device_type: &'a [u8],
    status: &'a [u8],
    method: &'a [u8],
    bootargs: &'a [u8],
}

impl<'a> Fdt<'a> {
    /// Checks the header and the block bounds.
    pub fn new(data: &'a [u8]) -> Result<Self, FdtError> {
        let magic = be32(data, 0).ok_or(FdtError::BadSize(data.len()))?;
        if magic != MAGIC {
            return Err(FdtError::BadMagic(magic));
        }
        let h = |i: usize| be32(data, i * 4).ok_or(FdtError::BadSize(data.len()));
        let total = h(1)? as usize;
        if !(HEADER_LEN..=data.len().min(MAX_SIZE)).contains(&total) {
            return Err(FdtError::BadSize(total));
        }
        let data = &data[..total];
        let structs = block(data, h(2)?, h(9)?)?;
        let strings = block(data, h(3)?, h(8)?)?;
        Ok(Fdt { structs, strings })
    }

    /// A blob in memory, checked.
    ///
    /// # Safety
    /// `addr` must be readable for 8 bytes and, if it holds the FDT magic, for the header's
    /// total size (at most [`MAX_SIZE`]) and stay unchanged for the program's life.
    pub unsafe fn from_addr(addr: usize) -> Result<Fdt<'static>, FdtError> {
        if addr == 0 || !addr.is_multiple_of(8) {
            return Err(FdtError::BadMagic(0));
        }
        // SAFETY: the caller promises 8 readable bytes.
        let head = unsafe { core::slice::from_raw_parts(addr as *const u8, 8) };
        let magic = be32(head, 0).unwrap_or(0);
        if magic != MAGIC {
            return Err(FdtError::BadMagic(magic));
        }
        let total = be32(head, 4).unwrap_or(0) as usize;
        if !(HEADER_LEN..=MAX_SIZE).contains(&total) {
            return Err(FdtError::BadSize(total));
        }
        // SAFETY: the caller promises the whole blob is readable and stays.
        Fdt::new(unsafe { core::slice::from_raw_parts(addr as *const u8, total) })
    }

    /// One pass over the structure block.
    pub fn facts(&self) -> Result<Facts<'a>, FdtError> {
        let mut f = Facts::default();
        let mut stack: Vec<Node<'a>, MAX_DEPTH> = Vec::new();
        let s = self.structs;
        let mut off = 0usize;
        loop {
            let token = be32(s, off).ok_or(FdtError::Truncated(off))?;
            let at = off;
            off += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let name = cstr(s.get(off..).unwrap_or(&[])).ok_or(FdtError::Truncated(off))?;
                    off = (off + name.len() + 1 + 3) & !3;
                    // Defaults per spec 2.3.5: 2 address cells, 1 size cell.
                    let (pa, ps) = stack
                        .last()
                        .map_or((2, 1), |p| (p.addr_cells, p.size_cells));
                    let node = Node {
                        name,
                        parent_addr: pa,
                        parent_size: ps,
                        addr_cells: 2,
                        size_cells: 1,
                        ..Node::default()
                    };
                    stack.push(node).map_err(|_| FdtError::TooDeep)?;
                }
                FDT_END_NODE => {
                    let node = stack.pop().ok_or(FdtError::Unbalanced(at))?;
                    Self::take(&mut f, &node, stack.len());
                }
                FDT_PROP => {
                    let len = be32(s, off).ok_or(FdtError::Truncated(off))? as usize;
                    let nameoff = be32(s, off + 4).ok_or(FdtError::Truncated(off))? as usize;
                    off += 8;
                    let value = off
                        .checked_add(len)
                        .and_then(|end| s.get(off..end))
                        .ok_or(FdtError::Truncated(off))?;
                    off = (off + len + 3) & !3;
                    let pname = self
                        .strings
                        .get(nameoff..)
                        .and_then(cstr)
                        .ok_or(FdtError::BadName(nameoff))?;
                    let Some(node) = stack.last_mut() else {
                        continue; // a property outside any node: ignore
                    };
                    match pname {
                        b"#address-cells" => node.addr_cells = be32(value, 0).unwrap_or(2),
                        b"#size-cells" => node.size_cells = be32(value, 0).unwrap_or(1),
                        b"compatible" => node.compatible = value,
                        b"reg" => node.reg = value,
                        b"ranges" => node.ranges = value,
                        b"device_type" => node.device_type = value,
                        b"status" => node.status = value,
                        b"method" => node.method = value,
                        b"bootargs" => node.bootargs = value,
                        _ => {}
                    }
                }
                FDT_NOP => {}
                FDT_END => return Ok(f),
                token => return Err(FdtError::BadToken { token, off: at }),
            }
        }
    }

    /// The first 32-bit memory window of a PCI host bridge's `ranges`: child address 3 cells,
    /// parent address the parent's `#address-cells`, size the node's `#size-cells`.
    fn pci_mem32(n: &Node<'a>) -> Option<PciWindow> {
        let (ca, pa, sz) = (n.addr_cells, n.parent_addr, n.size_cells);
        if ca != 3 || !(1..=2).contains(&pa) || !(1..=2).contains(&sz) {
            return None;
        }
        let step = ((ca + pa + sz) * 4) as usize;
        n.ranges.chunks_exact(step).find_map(|e| {
            if (be32(e, 0)? >> 24) & 3 != 0b10 {
                return None;
            }
            Some(PciWindow {
                pci: cells(e.get(4..)?, 2)?,
                cpu: cells(e.get(12..)?, pa)?,
                size: cells(e.get(12 + pa as usize * 4..)?, sz)?,
            })
        })
    }

    /// Files a finished node's facts; `depth` is its depth (root = 0).
    fn take(f: &mut Facts<'a>, n: &Node<'a>, depth: usize) {
        let disabled = cstr(n.status).is_some_and(|s| s != b"okay" && s != b"ok");
        // UEFI firmware (AAVMF) marks the PL031 "disabled" because its runtime services own
        // it; reading the seconds register has no side effect, so the canary still uses it.
        if disabled && !compatible_has(n.compatible, "arm,pl031") {
            return;
        }
        if depth == 1 && n.name == b"chosen" {
            f.bootargs = cstr(n.bootargs).and_then(|b| core::str::from_utf8(b).ok());
        }
        let regs = || {
            let (pa, ps) = (n.parent_addr, n.parent_size);
            // Cell counts come from the blob: only 1..=2 address and 0..=2 size cells.
            let ok = (1..=2).contains(&pa) && ps <= 2;
            let step = if ok { ((pa + ps) * 4) as usize } else { 1 };
            n.reg
                .chunks_exact(step)
                .filter(move |_| ok)
                .filter_map(move |c| {
                    Some(Reg {
                        base: cells(c, pa)?,
                        len: cells(c.get(pa as usize * 4..)?, ps)?,
                    })
                })
        };
        let is_memory = cstr(n.device_type) == Some(b"memory".as_slice())
            || (depth == 1 && (n.name == b"memory" || n.name.starts_with(b"memory@")));
        if is_memory {
            for r in regs() {
                if f.memory.push(r).is_err() {
                    f.dropped += 1;
                }
            }
        }
        let c = n.compatible;
        if compatible_has(c, "arm,pl011") && f.pl011.is_none() {
            f.pl011 = regs().next();
        }
        if compatible_has(c, "arm,pl031") && f.pl031.is_none() {
            f.pl031 = regs().next();
        }
        if compatible_has(c, "arm,psci")
            || compatible_has(c, "arm,psci-0.2")
            || compatible_has(c, "arm,psci-1.0")
        {
            f.psci = match cstr(n.method) {
                Some(b"smc") => Some(PsciMethod::Smc),
                Some(b"hvc") => Some(PsciMethod::Hvc),
                _ => f.psci,
            };
        }
        if compatible_has(c, "virtio,mmio") {
            if let Some(r) = regs().next() {
                if f.virtio_mmio.push(r).is_err() {
                    f.dropped += 1;
                }
            }
        }
        if f.gic.is_none() {
            if compatible_has(c, "arm,gic-v3") {
                let mut r = regs();
                f.gic = r.next().map(|d| (3, d, r.next()));
            } else if compatible_has(c, "arm,cortex-a15-gic") || compatible_has(c, "arm,gic-400") {
                f.gic = regs().next().map(|d| (2, d, None));
            }
        }
        if compatible_has(c, "pci-host-ecam-generic") && f.ecam.is_none() {
            f.ecam = regs().next();
            f.pci_mem32 = Self::pci_mem32(n);
        }
    }
}

/// Host tests (`cargo test -p appliance`): a device tree QEMU `virt` generates, and damaged
/// copies of it.
#[cfg(all(test, not(kernel)))]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::vec::Vec;

    /// `qemu-system-aarch64 -machine virt,dumpdtb=FILE` with the options `scripts/qemu-run`
    /// uses, so the test reads what the canary reads at boot.
    fn qemu_virt_dtb() -> &'static [u8] {
        static DTB: OnceLock<Vec<u8>> = OnceLock::new();
        DTB.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("canary-fdt-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("virt.dtb");
            let st = std::process::Command::new("timeout")
                .args(["20", "qemu-system-aarch64", "-machine"])
                .arg(format!("virt,dumpdtb={}", file.display()))
                .args([
                    "-cpu",
                    "cortex-a57",
                    "-m",
                    "128M",
                    "-nodefaults",
                    "-display",
                    "none",
                ])
                .args(["-device", "virtio-net-device"])
                .status()
                .expect("run qemu-system-aarch64");
            assert!(st.success(), "qemu dumpdtb failed");
            let b = std::fs::read(&file).unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            b
        })
    }

    #[test]
    fn reads_bootargs_memory_and_devices_of_qemu_virt() {
        let dt = Fdt::new(qemu_virt_dtb()).unwrap();
        let f = dt.facts().unwrap();
        // /chosen/bootargs comes with -kernel/-append only (checked by the QEMU boot tests,
        // whose options reach the canary through it).
        assert_eq!(f.bootargs, None);
        assert_eq!(
            f.memory.as_slice(),
            &[Reg {
                base: 0x4000_0000,
                len: 128 << 20
            }]
        );
        assert_eq!(f.pl011.map(|r| r.base), Some(0x0900_0000));
        assert_eq!(f.pl031.map(|r| r.base), Some(0x0901_0000));
        assert_eq!(f.psci, Some(PsciMethod::Hvc));
        assert_eq!(f.virtio_mmio.len(), 32);
        let mut bases: Vec<u64> = f.virtio_mmio.iter().map(|r| r.base).collect();
        bases.sort();
        let want: Vec<u64> = (0..32).map(|i| 0x0a00_0000 + 0x200 * i).collect();
        assert_eq!(bases, want);
        assert!(f.virtio_mmio.iter().all(|r| r.len == 0x200));
        assert!(f.ecam.is_some_and(|r| r.len >= 1 << 20));
        // hw/arm/virt.c VIRT_PCIE_MMIO: 0x1000_0000, 0x2eff_0000 bytes, identity.
        assert_eq!(
            f.pci_mem32,
            Some(PciWindow {
                pci: 0x1000_0000,
                cpu: 0x1000_0000,
                size: 0x2eff_0000
            })
        );
        assert_eq!(f.dropped, 0);
        // hw/arm/virt.c VIRT_GIC_DIST; the default GIC is v2.
        assert_eq!(f.gic.map(|(v, d, _)| (v, d.base)), Some((2, 0x0800_0000)));
    }

    #[test]
    fn reads_the_gicv3_distributor_and_redistributor_region() {
        let dir = std::env::temp_dir().join(format!("canary-fdt-v3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("virt-gicv3.dtb");
        let st = std::process::Command::new("timeout")
            .args(["20", "qemu-system-aarch64", "-machine"])
            .arg(format!("virt,gic-version=3,dumpdtb={}", file.display()))
            .args([
                "-cpu",
                "cortex-a57",
                "-m",
                "128M",
                "-nodefaults",
                "-display",
                "none",
            ])
            .status()
            .expect("run qemu-system-aarch64");
        assert!(st.success());
        let b = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let f = Fdt::new(&b).unwrap().facts().unwrap();
        // hw/arm/virt.c VIRT_GIC_DIST 0x0800_0000, VIRT_GIC_REDIST 0x080a_0000.
        let (v, d, r) = f.gic.unwrap();
        assert_eq!((v, d.base), (3, 0x0800_0000));
        assert_eq!(r.map(|r| r.base), Some(0x080a_0000));
    }

    #[test]
    fn rejects_a_blob_without_the_magic() {
        let mut b = qemu_virt_dtb().to_vec();
        b[0] ^= 0xff;
        assert!(matches!(Fdt::new(&b), Err(FdtError::BadMagic(_))));
        assert!(matches!(Fdt::new(&[]), Err(FdtError::BadSize(0))));
    }

    #[test]
    fn rejects_a_total_size_beyond_the_buffer() {
        let b = qemu_virt_dtb();
        let total = u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize;
        assert!(matches!(
            Fdt::new(&b[..total - 1]),
            Err(FdtError::BadSize(_))
        ));
    }

    #[test]
    fn rejects_a_structure_block_outside_the_blob() {
        let mut b = qemu_virt_dtb().to_vec();
        b[8..12].copy_from_slice(&0xffff_fff0u32.to_be_bytes()); // off_dt_struct
        assert!(matches!(Fdt::new(&b), Err(FdtError::BadBlock { .. })));
    }

    #[test]
    fn reports_an_unknown_token() {
        let mut b = qemu_virt_dtb().to_vec();
        let off = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        b[off..off + 4].copy_from_slice(&7u32.to_be_bytes());
        let dt = Fdt::new(&b).unwrap();
        assert!(matches!(
            dt.facts(),
            Err(FdtError::BadToken { token: 7, off: 0 })
        ));
    }

    /// Random damage anywhere in the header and structure block: an error or facts, never a
    /// panic (the boot path runs this on what the VMM hands over).
    #[test]
    fn damaged_trees_give_errors_not_panics() {
        let orig = qemu_virt_dtb();
        let sz = u32::from_be_bytes(orig[36..40].try_into().unwrap()) as usize;
        let off = u32::from_be_bytes(orig[8..12].try_into().unwrap()) as usize;
        let stroff = u32::from_be_bytes(orig[12..16].try_into().unwrap()) as usize;
        let strsz = u32::from_be_bytes(orig[32..36].try_into().unwrap()) as usize;
        let span = (off + sz).max(stroff + strsz);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const ROUNDS: usize = 3000;
        let (mut ok, mut err) = (0, 0);
        for _ in 0..ROUNDS {
            let mut b = orig.to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % span;
                b[i] = next() as u8;
            }
            match Fdt::new(&b).and_then(|d| d.facts()) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        // Most single-byte damage lands in property values (still a valid tree); some in
        // tokens, lengths and offsets (errors). Both paths must have run.
        assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
    }
}
