//! The crash record, schema v1: every field bounded, no heap, postcard-encoded.
//!
//! The schema version is *not* inside the postcard body: it travels in every chunk header
//! (`wire::ChunkRepr::schema_major/minor`), so a collector can reject a major it does not know
//! before touching the body. Minor versions only append fields at the end of [`CrashRecord`]
//! (each appended field must have a default, used when reading an older minor); decoding a newer
//! minor reads the known prefix and ignores the rest.
//!
//! Enums a peer may extend are *open*: they are encoded as plain integers and an unknown value
//! decodes to an `Other` variant instead of failing the whole record.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

pub use crate::identity::Identity;
use crate::panic::StepRecord;
use crate::Error;

/// Schema major: bumped only for incompatible changes (readers reject other majors).
pub const SCHEMA_MAJOR: u16 = 1;
/// Schema minor: bumped when fields are appended (older readers ignore them).
/// 1.1 appends [`Ext1`] (stack high-water marks, why the backtrace stopped, lock takeovers,
/// the image's id and load base, code bytes around the pc and stack bytes at the crash);
/// 1.2 appends [`Identity`] (SMBIOS system identity, Hyper-V KVP host-provided names).
pub const SCHEMA_MINOR: u16 = 2;

/// Capacity of [`CrashRecord::build_id`] in bytes.
pub const BUILD_ID_CAP: usize = 32;
/// Capacity of [`HypervisorInfo::vendor`] in bytes (CPUID 0x40000000 EBX:ECX:EDX is 12).
pub const VENDOR_CAP: usize = 16;
/// Capacity of [`CrashRecord::message`] in bytes.
pub const MESSAGE_CAP: usize = 256;
/// Capacity of [`Location::file`] in bytes.
pub const FILE_CAP: usize = 96;
/// Capacity of [`Registers::gpr`] (arm64: x0-x30, PSTATE, ESR_EL1, FAR_EL1).
pub const REGISTERS_CAP: usize = 34;
/// Capacity of [`CrashRecord::backtrace`] in frames.
pub const BACKTRACE_CAP: usize = 24;
/// Capacity of [`CrashRecord::log_tail`] in bytes.
pub const LOG_TAIL_CAP: usize = 1536;
/// Capacity of [`CrashRecord::steps`]: the seven steps of a first entry plus room for the two
/// steps of a nested entry (and a spare).
pub const STEPS_CAP: usize = 12;

/// Machine architecture of the crashed guest (open enum, encoded as one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum Arch {
    /// x86_64 (code 1).
    X86_64,
    /// arm64 / AArch64 (code 2).
    Aarch64,
    /// A code this build does not know.
    Other(u8),
}

open_u8!(Arch { X86_64 = 1, Aarch64 = 2 });

impl Arch {
    /// The architecture this code was compiled for.
    pub const fn current() -> Arch {
        if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::Other(0)
        }
    }
}

/// How the canary was booted (open enum, encoded as one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum BootMode {
    /// UEFI application (Hyper-V Gen2, OVMF/AAVMF) (code 1).
    Uefi,
    /// x86 PVH direct boot (code 2).
    Pvh,
    /// Linux boot protocol (code 3).
    LinuxBoot,
    /// arm64 direct kernel boot (`-kernel` on QEMU virt) (code 4).
    DirectAarch64,
    /// A code this build does not know.
    Other(u8),
}

open_u8!(BootMode { Uefi = 1, Pvh = 2, LinuxBoot = 3, DirectAarch64 = 4 });

/// What the guest knows about the hypervisor it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HypervisorInfo {
    /// A hypervisor was detected (x86: CPUID.1:ECX bit 31; arm64: the Hyper-V SMCCC UID).
    pub present: bool,
    /// Vendor signature (x86: CPUID 0x40000000 EBX,ECX,EDX, e.g. "Microsoft Hv", "KVMKVMKVM").
    pub vendor: String<VENDOR_CAP>,
    /// Version words. Hyper-V x86: CPUID 0x40000002 EAX..EDX (build, major.minor, service
    /// pack, branch.number); arm64: HvRegisterVersion (TLFS "Hypervisor Version"). 0 if unknown.
    pub version: [u32; 4],
    /// Hyper-V partition privilege mask (x86: CPUID 0x40000003 EAX|EBX<<32; arm64: the
    /// HvRegisterPrivilegesAndFeaturesInfo equivalent). 0 if unknown.
    pub privileges: u64,
}

/// Source location of a panic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Location {
    /// Source file, truncated to [`FILE_CAP`] bytes (keeping the end, which names the file).
    pub file: String<FILE_CAP>,
    /// Line (1-based).
    pub line: u32,
    /// Column (1-based).
    pub column: u32,
}

/// What kind of crash this was (open enum, encoded as `(code u8, a u64, b u64)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u8, u64, u64)", into = "(u8, u64, u64)")]
pub enum CrashKind {
    /// A Rust panic (code 0).
    Panic,
    /// A CPU exception (code 1): x86 vector or arm64 ESR, and the faulting address (CR2/FAR).
    Fault {
        /// x86_64: exception vector; arm64: ESR_EL1.
        vector: u64,
        /// x86_64: CR2 for page faults, else 0; arm64: FAR_EL1.
        addr: u64,
    },
    /// The canary's self-check workload found a problem (code 2).
    SelfCheck,
    /// A drill requested by the collector (code 3).
    Drill,
    /// A code this build does not know, with its two words.
    Other {
        /// The unknown code.
        code: u8,
        /// First word.
        a: u64,
        /// Second word.
        b: u64,
    },
}

impl From<(u8, u64, u64)> for CrashKind {
    fn from((code, a, b): (u8, u64, u64)) -> Self {
        match code {
            0 => CrashKind::Panic,
            1 => CrashKind::Fault { vector: a, addr: b },
            2 => CrashKind::SelfCheck,
            3 => CrashKind::Drill,
            code => CrashKind::Other { code, a, b },
        }
    }
}

impl From<CrashKind> for (u8, u64, u64) {
    fn from(k: CrashKind) -> Self {
        match k {
            CrashKind::Panic => (0, 0, 0),
            CrashKind::Fault { vector, addr } => (1, vector, addr),
            CrashKind::SelfCheck => (2, 0, 0),
            CrashKind::Drill => (3, 0, 0),
            CrashKind::Other { code, a, b } => (code, a, b),
        }
    }
}

/// Register snapshot at the crash.
///
/// `gpr` order: x86_64 rax rbx rcx rdx rsi rdi rbp rsp r8..r15 rflags cs ss cr0 cr2 cr3 cr4;
/// arm64 x0..x30 pstate esr_el1 far_el1. Producers may fill fewer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Registers {
    /// General-purpose and status registers in the order above.
    pub gpr: Vec<u64, REGISTERS_CAP>,
    /// Program counter (rip / pc / ELR_EL1 for faults).
    pub pc: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (rbp / x29).
    pub fp: u64,
}

/// The crash record, schema 1.0.
///
/// Field order is the wire order: never reorder; new minors append at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashRecord {
    /// Appliance build id (git describe or hash), truncated to [`BUILD_ID_CAP`].
    pub build_id: String<BUILD_ID_CAP>,
    /// Random per boot.
    pub boot_id: [u8; 16],
    /// Per-boot record sequence number.
    pub seq: u32,
    /// Architecture of the guest.
    pub arch: Arch,
    /// How the guest was booted.
    pub boot_mode: BootMode,
    /// Hypervisor identity.
    pub hypervisor: HypervisorInfo,
    /// Negotiated VMBus version (major, minor), if VMBus was connected.
    pub vmbus_version: Option<(u16, u16)>,
    /// Microseconds since boot.
    pub uptime_us: u64,
    /// Panic message, truncated at a char boundary to [`MESSAGE_CAP`] bytes.
    pub message: String<MESSAGE_CAP>,
    /// Panic location, if known.
    pub location: Option<Location>,
    /// Kind of crash.
    pub kind: CrashKind,
    /// Register snapshot.
    pub registers: Registers,
    /// Return addresses from a frame-pointer walk, innermost first.
    pub backtrace: Vec<u64, BACKTRACE_CAP>,
    /// Newest log bytes, truncated from the front at a char boundary.
    pub log_tail: String<LOG_TAIL_CAP>,
    /// Outcome of every panic-path step so far (see [`crate::panic::run`]).
    pub steps: Vec<StepRecord, STEPS_CAP>,
    /// Schema 1.1's fields: encoded after the 1.0 body as a second postcard value (postcard
    /// has no field tags, so appended groups are separate values; see [`CrashRecord::decode`]).
    #[serde(skip)]
    pub ext: Ext1,
    /// Schema 1.2's fields (who crashed): a third postcard value after [`Ext1`].
    #[serde(skip)]
    pub ident: Identity,
}

/// Capacity of [`Ext1::stacks`].
pub const STACKS_CAP: usize = 4;
/// Capacity of [`StackUse::name`] in bytes.
pub const STACK_NAME_CAP: usize = 8;

/// How much of one stack was ever used (its painted high-water mark).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StackUse {
    /// Which stack ("boot", "uefi", "fault", "exc").
    pub name: String<STACK_NAME_CAP>,
    /// Its size in bytes.
    pub size: u32,
    /// Bytes used at the deepest point since boot.
    pub used: u32,
}

/// Why the frame-pointer walk stopped (open enum, one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum BacktraceEnd {
    /// Not recorded (a 1.0 record, or no walk) (0).
    #[default]
    Unknown,
    /// A null frame pointer or return address: the outermost frame (1).
    Outermost,
    /// The next frame pointer is outside the stack that holds the first one (2).
    OutsideStack,
    /// A misaligned frame pointer (3).
    Misaligned,
    /// The next frame is not above the current one (a loop or a corrupt chain) (4).
    NotAscending,
    /// [`BACKTRACE_CAP`] frames recorded (5).
    Full,
    /// The frame pointer is on no stack the canary knows: not read at all (6).
    NoStack,
    /// A scan for return addresses, not a walk (x86_64 UEFI) (7).
    Scanned,
    /// A code this build does not know.
    Other(u8),
}

open_u8!(BacktraceEnd {
    Unknown = 0,
    Outermost = 1,
    OutsideStack = 2,
    Misaligned = 3,
    NotAscending = 4,
    Full = 5,
    NoStack = 6,
    Scanned = 7,
});

impl BacktraceEnd {
    /// Lowercase words for people.
    pub fn describe(self) -> &'static str {
        match self {
            BacktraceEnd::Unknown => "not recorded",
            BacktraceEnd::Outermost => "outermost frame reached",
            BacktraceEnd::OutsideStack => "next frame outside the stack",
            BacktraceEnd::Misaligned => "misaligned frame pointer",
            BacktraceEnd::NotAscending => "frame chain not ascending",
            BacktraceEnd::Full => "frame limit reached",
            BacktraceEnd::NoStack => "frame pointer on no known stack",
            BacktraceEnd::Scanned => "stack scanned for return addresses",
            BacktraceEnd::Other(_) => "unknown reason",
        }
    }
}

/// Lock takeover bits of [`Ext1::takeovers`].
pub const TAKEOVER_HYPERV: u8 = 1;
/// See [`TAKEOVER_HYPERV`].
pub const TAKEOVER_NET: u8 = 2;

/// Capacity of [`Ext1::image_id`] in bytes (a SHA-1 GNU build id, or a PE CodeView GUID and
/// age: 16 + 4).
pub const IMAGE_ID_CAP: usize = 20;

/// What [`Ext1::image_id`] holds (open enum, one byte): which debug file it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum ImageIdKind {
    /// No id (a 1.0 record, or the image had none) (0).
    #[default]
    None,
    /// The ELF `.note.gnu.build-id` descriptor bytes (direct-boot kernels); the debug file is
    /// the ELF with the same note (1).
    GnuBuildId,
    /// The PE debug directory's CodeView (RSDS) record: the PDB's GUID (16 bytes as stored in
    /// the image) then its age (u32 little endian); the debug file is that PDB (2).
    PeCodeView,
    /// A code this build does not know.
    Other(u8),
}

open_u8!(ImageIdKind { None = 0, GnuBuildId = 1, PeCodeView = 2 });

/// The fields schema 1.1 appends.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ext1 {
    /// High-water marks of the canary's stacks at the panic.
    pub stacks: Vec<StackUse, STACKS_CAP>,
    /// Why the backtrace walk stopped.
    pub backtrace_end: BacktraceEnd,
    /// Locks the panic path took over from a frozen holder ([`TAKEOVER_HYPERV`] | ...).
    pub takeovers: u8,
    /// What [`Ext1::image_id`] is.
    pub image_id_kind: ImageIdKind,
    /// The running image's id: finds its debug file (see [`ImageIdKind`]).
    pub image_id: Vec<u8, IMAGE_ID_CAP>,
    /// Where the image was loaded at run time. ELF: the run-time address of the first byte
    /// of the lowest loadable segment (equal to its link address: the kernels are not
    /// relocated); PE: the run-time image base (UEFI relocates images), so an address minus
    /// `load_base` is its RVA. 0 if unknown.
    pub load_base: u64,
    /// Address of [`Ext1::code`]'s first byte.
    pub code_at: u64,
    /// Code bytes around the pc (up to [`CODE_BEFORE`] before it, the rest from it), read only
    /// inside the image's code; empty if the pc is outside it.
    pub code: Vec<u8, CODE_CAP>,
    /// Address of [`Ext1::stack`]'s first byte (the stack pointer at the crash).
    pub stack_at: u64,
    /// Stack bytes from the stack pointer up, read only inside the stack holding it; empty if
    /// the stack pointer is on no stack the canary knows.
    pub stack: Vec<u8, STACK_DUMP_CAP>,
}

/// Capacity of [`Ext1::code`] in bytes.
pub const CODE_CAP: usize = 64;
/// How many of [`Ext1::code`]'s bytes come before the pc (when the code range allows).
pub const CODE_BEFORE: usize = 32;
/// Capacity of [`Ext1::stack`] in bytes.
pub const STACK_DUMP_CAP: usize = 512;

impl Ext1 {
    /// An empty group (usable in a `static`).
    pub const fn empty() -> Self {
        Ext1 {
            stacks: Vec::new(),
            backtrace_end: BacktraceEnd::Unknown,
            takeovers: 0,
            image_id_kind: ImageIdKind::None,
            image_id: Vec::new(),
            load_base: 0,
            code_at: 0,
            code: Vec::new(),
            stack_at: 0,
            stack: Vec::new(),
        }
    }
}

impl Default for CrashRecord {
    fn default() -> Self {
        Self::empty()
    }
}

// Maximal postcard sizes: a varint u16 takes at most 3 bytes, u32 5, u64 10; a string or
// sequence is a varint length followed by its elements; u8 and bool are one byte.
const fn varint_len(max: usize) -> usize {
    let mut n = 1;
    let mut v = max >> 7;
    while v != 0 {
        n += 1;
        v >>= 7;
    }
    n
}
const U16_MAX_LEN: usize = 3;
const U32_MAX_LEN: usize = 5;
const U64_MAX_LEN: usize = 10;
const fn str_max(cap: usize) -> usize {
    varint_len(cap) + cap
}
const fn seq_max(cap: usize, elem: usize) -> usize {
    varint_len(cap) + cap * elem
}
const HYPERVISOR_MAX_LEN: usize = 1 + str_max(VENDOR_CAP) + 4 * U32_MAX_LEN + U64_MAX_LEN;
const LOCATION_MAX_LEN: usize = 1 + str_max(FILE_CAP) + 2 * U32_MAX_LEN;
const KIND_MAX_LEN: usize = 1 + 2 * U64_MAX_LEN;
const REGISTERS_MAX_LEN: usize = seq_max(REGISTERS_CAP, U64_MAX_LEN) + 3 * U64_MAX_LEN;
/// Step (u8) + outcome (u8 code, u32 argument) + elapsed_us (u32).
const STEP_RECORD_MAX_LEN: usize = 1 + (1 + U32_MAX_LEN) + U32_MAX_LEN;

/// Upper bound of [`CrashRecord::encode`]'s output (a test encodes a maximal record and
/// checks it reaches exactly this).
pub const MAX_ENCODED_LEN: usize = str_max(BUILD_ID_CAP)
    + 16
    + U32_MAX_LEN
    + 1
    + 1
    + HYPERVISOR_MAX_LEN
    + 1
    + 2 * U16_MAX_LEN
    + U64_MAX_LEN
    + str_max(MESSAGE_CAP)
    + LOCATION_MAX_LEN
    + KIND_MAX_LEN
    + REGISTERS_MAX_LEN
    + seq_max(BACKTRACE_CAP, U64_MAX_LEN)
    + str_max(LOG_TAIL_CAP)
    + seq_max(STEPS_CAP, STEP_RECORD_MAX_LEN)
    + EXT1_MAX_LEN
    + crate::identity::IDENTITY_MAX_LEN;

/// Upper bound of the encoded [`Ext1`].
const EXT1_MAX_LEN: usize = seq_max(STACKS_CAP, str_max(STACK_NAME_CAP) + 2 * U32_MAX_LEN)
    + 1
    + 1
    + 1
    + seq_max(IMAGE_ID_CAP, 1)
    + U64_MAX_LEN
    + U64_MAX_LEN
    + seq_max(CODE_CAP, 1)
    + U64_MAX_LEN
    + seq_max(STACK_DUMP_CAP, 1);

impl CrashRecord {
    /// An empty record (usable in a `static`).
    pub const fn empty() -> Self {
        CrashRecord {
            build_id: String::new(),
            boot_id: [0; 16],
            seq: 0,
            arch: Arch::current(),
            boot_mode: BootMode::Other(0),
            hypervisor: HypervisorInfo {
                present: false,
                vendor: String::new(),
                version: [0; 4],
                privileges: 0,
            },
            vmbus_version: None,
            uptime_us: 0,
            message: String::new(),
            location: None,
            kind: CrashKind::Panic,
            registers: Registers {
                gpr: Vec::new(),
                pc: 0,
                sp: 0,
                fp: 0,
            },
            backtrace: Vec::new(),
            log_tail: String::new(),
            steps: Vec::new(),
            ext: Ext1::empty(),
            ident: Identity::empty(),
        }
    }

    /// Encodes the record (postcard) into `buf`, returning the used prefix. A buffer of
    /// [`MAX_ENCODED_LEN`] bytes always suffices.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        let len = buf.len();
        let base = postcard::to_slice(self, &mut *buf)
            .map_err(|_| Error::BufferTooSmall(len))?
            .len();
        let ext = postcard::to_slice(&self.ext, &mut buf[base..])
            .map_err(|_| Error::BufferTooSmall(len))?
            .len();
        let ident = postcard::to_slice(&self.ident, &mut buf[base + ext..])
            .map_err(|_| Error::BufferTooSmall(len))?
            .len();
        Ok(&mut buf[..base + ext + ident])
    }

    /// Decodes a record body written with schema `major.minor`.
    ///
    /// - `major != SCHEMA_MAJOR`: [`Error::UnsupportedSchema`] (the body is not looked at);
    /// - the 1.0 body, then each appended group the writer's minor has (1.1: [`Ext1`], 1.2:
    ///   [`Identity`]); a group the writer did not have takes its default;
    /// - `minor > SCHEMA_MINOR`: the known groups are decoded, later ones are ignored;
    /// - `minor <= SCHEMA_MINOR`: nothing may follow the groups ([`Error::TrailingBytes`]).
    pub fn decode(major: u16, minor: u16, bytes: &[u8]) -> Result<CrashRecord, Error> {
        if major != SCHEMA_MAJOR {
            return Err(Error::UnsupportedSchema { major, minor });
        }
        let (mut rec, mut rest): (CrashRecord, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|_| Error::Decode { major, minor })?;
        if minor >= 1 {
            let (ext, r): (Ext1, &[u8]) =
                postcard::take_from_bytes(rest).map_err(|_| Error::Decode { major, minor })?;
            rec.ext = ext;
            rest = r;
        }
        if minor >= 2 {
            let (ident, r): (Identity, &[u8]) =
                postcard::take_from_bytes(rest).map_err(|_| Error::Decode { major, minor })?;
            rec.ident = ident;
            rest = r;
        }
        if minor <= SCHEMA_MINOR && !rest.is_empty() {
            return Err(Error::TrailingBytes(rest.len()));
        }
        Ok(rec)
    }

    /// Sets the message, truncated at a char boundary to [`MESSAGE_CAP`] bytes.
    pub fn set_message(&mut self, msg: &str) {
        self.message = truncate_to(msg);
    }

    /// Sets the log tail from the newest bytes of `log`, cut at a char boundary.
    pub fn set_log_tail(&mut self, log: &str) {
        self.log_tail = tail_of(log);
    }

    /// Sets the build id, truncated at a char boundary.
    pub fn set_build_id(&mut self, id: &str) {
        self.build_id = truncate_to(id);
    }
}

/// The longest prefix of `s` that fits `N` bytes and ends at a char boundary.
pub fn truncate_to<const N: usize>(s: &str) -> String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    // Cannot fail: `end <= N`.
    let _ = out.push_str(&s[..end]);
    out
}

/// The longest suffix of `s` that fits `N` bytes and starts at a char boundary.
pub fn tail_of<const N: usize>(s: &str) -> String<N> {
    let mut start = s.len().saturating_sub(N);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let mut out = String::new();
    // Cannot fail: `s.len() - start <= N`.
    let _ = out.push_str(&s[start..]);
    out
}
