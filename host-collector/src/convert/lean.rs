//! `serve`'s reader of a record body: it checks every byte exactly as
//! [`CrashRecord::decode`] does (schema 1.0-1.2: the same postcard rules, the same capacity
//! limits, the same UTF-8 checks, no trailing bytes) but keeps only what a lean row needs,
//! borrowing its strings from the body instead of building the 4 KiB [`CrashRecord`]
//! (which postcard's generated code moves several times: most of that decode's time).
//!
//! It is a shortcut, not a second authority: a body it does not take (any error, or a schema
//! it was not written for) goes through [`CrashRecord::decode`], which accepts it or says why
//! not. Tests check that it takes exactly the bodies `CrashRecord::decode` accepts and reads
//! the same values (`tests` below: sample, maximal and odd records, every truncation, and
//! many thousands of corrupted bodies).
//!
//! The postcard rules followed (postcard 1.x `de/deserializer.rs`, heapless 0.8 `de.rs`):
//! integers above u8 are LEB128 varints of at most 3/5/10 bytes (u16/u32/u64) whose last
//! byte may not carry bits past the type (overlong but in-range encodings are accepted);
//! `u8` and the open enums are one raw byte; `bool` is 0 or 1; an `Option` tag is 0 or 1;
//! strings and sequences are a varint length (as u64) and then their bytes or elements, and a
//! `heapless` container refuses more than its capacity; fixed arrays and tuples are their
//! elements in order; structs are their fields in declaration order.

use capture::identity::{KVP_FQDN_CAP, KVP_ID_CAP, KVP_NAME_CAP, SMBIOS_STR_CAP};
use capture::panic::{Outcome, Step, StepRecord};
use capture::record::{
    Arch, CrashKind, CrashRecord, ImageIdKind, BACKTRACE_CAP, BUILD_ID_CAP, CODE_CAP, FILE_CAP,
    IMAGE_ID_CAP, LOG_TAIL_CAP, MESSAGE_CAP, REGISTERS_CAP, STACKS_CAP, STACK_DUMP_CAP,
    STACK_NAME_CAP, STEPS_CAP, VENDOR_CAP,
};

/// The schema this reader was written for: major 1, minors 0 to 2 (1.1 appends `Ext1`, 1.2
/// `Identity`). Anything else goes to [`CrashRecord::decode`].
const MAJOR: u16 = 1;
const MAX_MINOR: u16 = 2;

/// The source location, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeanLocation<'a> {
    pub file: &'a str,
    pub line: u32,
    pub column: u32,
}

/// What a lean row and its [`crate::store::NewRecord`] need of a record, borrowed from the
/// record (or from its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeanView<'a> {
    pub boot_id: [u8; 16],
    pub seq: u32,
    pub arch: Arch,
    pub uptime_us: u64,
    pub message: &'a str,
    pub location: Option<LeanLocation<'a>>,
    pub kind: CrashKind,
    steps: [StepRecord; STEPS_CAP],
    steps_len: usize,
    pub image_id_kind: ImageIdKind,
    pub image_id: &'a [u8],
    pub load_base: u64,
    pub kvp_vm_name: &'a str,
    pub kvp_host_name: &'a str,
    pub kvp_host_fqdn: &'a str,
}

const NO_STEP: StepRecord = StepRecord {
    step: Step::Other(0),
    outcome: Outcome::Pending,
    elapsed_us: 0,
};

impl<'a> LeanView<'a> {
    /// The view of a decoded record.
    pub fn of(r: &'a CrashRecord) -> LeanView<'a> {
        let mut steps = [NO_STEP; STEPS_CAP];
        let steps_len = r.steps.len().min(STEPS_CAP);
        steps[..steps_len].copy_from_slice(&r.steps[..steps_len]);
        LeanView {
            boot_id: r.boot_id,
            seq: r.seq,
            arch: r.arch,
            uptime_us: r.uptime_us,
            message: &r.message,
            location: r.location.as_ref().map(|l| LeanLocation {
                file: &l.file,
                line: l.line,
                column: l.column,
            }),
            kind: r.kind,
            steps,
            steps_len,
            image_id_kind: r.ext.image_id_kind,
            image_id: &r.ext.image_id,
            load_base: r.ext.load_base,
            kvp_vm_name: &r.ident.kvp.vm_name,
            kvp_host_name: &r.ident.kvp.host_name,
            kvp_host_fqdn: &r.ident.kvp.host_fqdn,
        }
    }

    /// The panic-path steps, in record order.
    pub fn steps(&self) -> &[StepRecord] {
        &self.steps[..self.steps_len]
    }
}

/// Reads a body of schema `major.minor`. `None` when this reader does not take it: then
/// [`CrashRecord::decode`] decides (and names the error).
pub fn decode(major: u16, minor: u16, bytes: &[u8]) -> Option<LeanView<'_>> {
    if major != MAJOR || minor > MAX_MINOR {
        return None;
    }
    let mut r = Reader { b: bytes };
    let mut v = r.base()?;
    if minor >= 1 {
        r.ext1(&mut v)?;
    }
    if minor >= 2 {
        r.identity(&mut v)?;
    }
    // minor <= SCHEMA_MINOR: nothing may follow the groups.
    r.b.is_empty().then_some(v)
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&x, rest) = self.b.split_first()?;
        self.b = rest;
        Some(x)
    }

    /// A varint of at most `max_len` bytes whose last byte is at most `last_max`.
    #[inline]
    fn varint(&mut self, max_len: usize, last_max: u8) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..max_len {
            let val = self.u8()?;
            out |= u64::from(val & 0x7f) << (7 * i);
            if val & 0x80 == 0 {
                return (i + 1 < max_len || val <= last_max).then_some(out);
            }
        }
        None
    }

    fn u16(&mut self) -> Option<u16> {
        self.varint(3, 0x03).map(|v| v as u16)
    }

    fn u32(&mut self) -> Option<u32> {
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    fn u64(&mut self) -> Option<u64> {
        self.varint(10, 0x01)
    }

    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// An `Option`'s tag: whether a value follows.
    fn some(&mut self) -> Option<bool> {
        self.bool()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() {
            return None;
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Some(x)
    }

    /// A sequence's length, refused above the container's capacity.
    fn len(&mut self, cap: usize) -> Option<usize> {
        let n = self.u64()?;
        (n <= cap as u64).then_some(n as usize)
    }

    /// A `heapless::String<cap>`.
    fn str(&mut self, cap: usize) -> Option<&'a str> {
        let n = self.len(cap)?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    /// A `heapless::Vec<u8, cap>`.
    fn bytes(&mut self, cap: usize) -> Option<&'a [u8]> {
        let n = self.len(cap)?;
        self.take(n)
    }

    fn skip_u64s(&mut self, n: usize) -> Option<()> {
        for _ in 0..n {
            self.u64()?;
        }
        Some(())
    }

    /// The 1.0 body (`CrashRecord`'s fields in order, without `ext` and `ident`).
    fn base(&mut self) -> Option<LeanView<'a>> {
        self.str(BUILD_ID_CAP)?;
        let boot_id: [u8; 16] = self.take(16)?.try_into().ok()?;
        let seq = self.u32()?;
        let arch = Arch::from(self.u8()?);
        let _boot_mode = self.u8()?;
        // HypervisorInfo: present, vendor, version [u32; 4], privileges.
        self.bool()?;
        self.str(VENDOR_CAP)?;
        for _ in 0..4 {
            self.u32()?;
        }
        self.u64()?;
        // vmbus_version: Option<(u16, u16)>.
        if self.some()? {
            self.u16()?;
            self.u16()?;
        }
        let uptime_us = self.u64()?;
        let message = self.str(MESSAGE_CAP)?;
        let location = if self.some()? {
            Some(LeanLocation {
                file: self.str(FILE_CAP)?,
                line: self.u32()?,
                column: self.u32()?,
            })
        } else {
            None
        };
        let code = self.u8()?;
        let a = self.u64()?;
        let b = self.u64()?;
        let kind = CrashKind::from((code, a, b));
        // Registers: gpr, pc, sp, fp.
        let n = self.len(REGISTERS_CAP)?;
        self.skip_u64s(n + 3)?;
        let n = self.len(BACKTRACE_CAP)?;
        self.skip_u64s(n)?;
        self.str(LOG_TAIL_CAP)?;
        let mut steps = [NO_STEP; STEPS_CAP];
        let steps_len = self.len(STEPS_CAP)?;
        for s in &mut steps[..steps_len] {
            let step = Step::from(self.u8()?);
            let code = self.u8()?;
            let arg = self.u32()?;
            *s = StepRecord {
                step,
                outcome: Outcome::from((code, arg)),
                elapsed_us: self.u32()?,
            };
        }
        Some(LeanView {
            boot_id,
            seq,
            arch,
            uptime_us,
            message,
            location,
            kind,
            steps,
            steps_len,
            image_id_kind: ImageIdKind::None,
            image_id: &[],
            load_base: 0,
            kvp_vm_name: "",
            kvp_host_name: "",
            kvp_host_fqdn: "",
        })
    }

    /// Schema 1.1's `Ext1`.
    fn ext1(&mut self, v: &mut LeanView<'a>) -> Option<()> {
        let n = self.len(STACKS_CAP)?;
        for _ in 0..n {
            self.str(STACK_NAME_CAP)?;
            self.u32()?;
            self.u32()?;
        }
        let _backtrace_end = self.u8()?;
        let _takeovers = self.u8()?;
        v.image_id_kind = ImageIdKind::from(self.u8()?);
        v.image_id = self.bytes(IMAGE_ID_CAP)?;
        v.load_base = self.u64()?;
        let _code_at = self.u64()?;
        self.bytes(CODE_CAP)?;
        let _stack_at = self.u64()?;
        self.bytes(STACK_DUMP_CAP)?;
        Some(())
    }

    /// Schema 1.2's `Identity`.
    fn identity(&mut self, v: &mut LeanView<'a>) -> Option<()> {
        let _smbios_status = self.u8()?;
        if self.some()? {
            // Smbios: version (u8, u8), uuid [u8; 16], manufacturer, product, serial.
            self.take(2 + 16)?;
            for _ in 0..3 {
                self.str(SMBIOS_STR_CAP)?;
            }
        }
        let _kvp_status = self.u8()?;
        v.kvp_vm_name = self.str(KVP_NAME_CAP)?;
        self.str(KVP_ID_CAP)?;
        v.kvp_host_name = self.str(KVP_NAME_CAP)?;
        v.kvp_host_fqdn = self.str(KVP_FQDN_CAP)?;
        Some(())
    }
}

#[cfg(test)]
mod tests;
