//! KVP data exchange (guest side): the host pushes key-value pairs into pools; pool 3
//! (`KVP_POOL_AUTO_EXTERNAL`) holds what the host says about itself and the VM
//! (`VirtualMachineName`, `VirtualMachineId`, `PhysicalHostName`,
//! `PhysicalHostNameFullyQualified`, and more the canary does not keep).
//!
//! Facts (read, not copied): Linux `drivers/hv/hv_kvp.c` (versions, one transaction at a time,
//! the answer is the request with status and response flags), `include/uapi/linux/hyperv.h`
//! (`struct hv_kvp_msg`, operations, pools, sizes), `tools/hv/hv_kvp_daemon.c` (which status a
//! GET/DELETE of an unknown key and an enumeration past the end get: `HV_S_CONT`); OpenVMM
//! `hyperv_ic_protocol/src/kvp.rs` and `hyperv_ic/src/kvp.rs` (the host side: framework 1.0/3.0,
//! KVP 3.0/4.0/5.0 listed ascending, the value at offset 4 of a 2580-byte message, and what
//! it checks in a response).
//!
//! The KVP message after the IC headers:
//!
//! ```text
//! off  len   field
//! 0    1     operation (0 GET, 1 SET, 2 DELETE, 3 ENUMERATE, 4 GET_IP_INFO, 5 SET_IP_INFO)
//! 1    1     pool (0 external, 1 guest, 2 auto, 3 auto external, 4 auto internal)
//! 2    2     padding
//! SET/GET: struct hv_kvp_exchg_msg_value at 4
//! 4    4     value_type (1 REG_SZ, 2 REG_EXPAND_SZ, 4 REG_U32, 11 REG_U64)
//! 8    4     key_size   (bytes, UTF-16LE, NUL included)
//! 12   4     value_size (bytes)
//! 16   512   key
//! 528  2048  value
//! ENUMERATE: u32 index at 4, then the value struct at 8.
//! ```

use super::{flags, status, IcError, IcMessage, IcVersion, MessageType, Negotiated, ICMSG_HDR};
use crate::device::{ChannelError, Deadline, DeviceChannel, OutgoingPacket, PacketKind};
use crate::Guid;

/// KVP IC class `a9a0f4e7-5a45-4d96-b827-8a841e8c03e6` (Linux `HV_KVP_GUID`; OpenVMM
/// `hyperv_ic_protocol::kvp::INTERFACE_ID`).
pub const CLASS: Guid = Guid::from_fields(
    0xa9a0_f4e7,
    0x5a45,
    0x4d96,
    [0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6],
);

/// KVP message versions the guest speaks, newest first (Linux `hv_kvp.c` `kvp_versions`: WIN8
/// 4.0, WIN7 3.0, WS2008 1.0). The negotiation takes any host version up to the newest
/// (FreeBSD's rule, see `ic::negotiate_in_place`). OpenVMM's 5.0 changes only the IP-info
/// messages, which the canary refuses anyway; it is not claimed.
pub const VERSIONS: [IcVersion; 3] = [
    IcVersion::new(4, 0),
    IcVersion::new(3, 0),
    IcVersion::new(1, 0),
];

/// Operations (`enum hv_kvp_exchg_op`). Open enums (`open_enum`) here and below: a value a
/// host adds is kept and answered, not a parse error.
#[open_enum::open_enum]
#[allow(clippy::upper_case_acronyms)] // the C names
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u8)]
pub enum Op {
    /// Read a key from a guest pool.
    GET = 0,
    /// Store a key.
    SET = 1,
    /// Delete a key.
    DELETE = 2,
    /// Enumerate a guest pool by index.
    ENUMERATE = 3,
    /// Read IP configuration.
    GET_IP_INFO = 4,
    /// Inject IP configuration.
    SET_IP_INFO = 5,
}

/// Pools (`enum hv_kvp_exchg_pool`).
#[open_enum::open_enum]
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u8)]
pub enum Pool {
    /// Set by the host administrator.
    EXTERNAL = 0,
    /// Written by the guest.
    GUEST = 1,
    /// The guest's intrinsic items (the host enumerates them).
    AUTO = 2,
    /// Host-provided items about the host and the VM.
    AUTO_EXTERNAL = 3,
    /// Never exchanged (OpenVMM: "never exchanged between host and guest").
    AUTO_INTERNAL = 4,
}

/// Value types (`REG_SZ`, `REG_EXPAND_SZ`, `REG_U32`, `REG_U64` in `include/uapi/linux/hyperv.h`).
#[open_enum::open_enum]
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// UTF-16 string.
    SZ = 1,
    /// UTF-16 string with environment references.
    EXPAND_SZ = 2,
    /// 32-bit integer.
    U32 = 4,
    /// 64-bit integer.
    U64 = 11,
}

/// `HV_KVP_EXCHANGE_MAX_KEY_SIZE`.
pub const MAX_KEY_BYTES: usize = 512;
/// `HV_KVP_EXCHANGE_MAX_VALUE_SIZE`.
pub const MAX_VALUE_BYTES: usize = 2048;
/// Offset of `struct hv_kvp_exchg_msg_value` in a SET/GET message.
pub const VALUE_AT: usize = 4;
/// `sizeof(struct hv_kvp_exchg_msg_value)`.
pub const VALUE_LEN: usize = 12 + MAX_KEY_BYTES + MAX_VALUE_BYTES;
/// The KVP message OpenVMM sends for SET (2-byte header + 2578 bytes of data).
pub const MESSAGE_LEN: usize = 2580;
/// Largest IC message the guest takes: SET_IP_INFO's `KvpMessage2` (2 + 0x1d02 bytes,
/// OpenVMM) after the headers, rounded up. Larger packets are refused by the ring read.
pub const MAX_PACKET: usize = 8192;
/// Packets one [`KvpDevice::poll`] handles at most.
pub const POLL_LIMIT: usize = 32;
/// Capacity of each kept item, in bytes of UTF-8.
pub const ITEM_CAP: usize = 128;

/// A bounded UTF-8 string (no allocator in this crate).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    /// Empty.
    pub const fn new() -> Self {
        Text {
            bytes: [0; N],
            len: 0,
        }
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole chars are ever pushed, so this never fails.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
    /// Empty?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Appends `c` if it fits whole; false (and nothing appended) if not.
    pub fn push(&mut self, c: char) -> bool {
        let mut b = [0u8; 4];
        let s = c.encode_utf8(&mut b);
        if self.len + s.len() > N {
            return false;
        }
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        true
    }
    /// From UTF-16LE bytes: up to the first NUL, unpaired surrogates as U+FFFD, truncated
    /// at a char boundary to `N` bytes.
    pub fn from_utf16le(b: &[u8]) -> Self {
        let mut t = Self::new();
        let units = b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0);
        for c in char::decode_utf16(units) {
            if !t.push(c.unwrap_or(char::REPLACEMENT_CHARACTER)) {
                break;
            }
        }
        t
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The pool 3 items the canary keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostItems {
    /// `VirtualMachineName`.
    pub vm_name: Text<ITEM_CAP>,
    /// `VirtualMachineId`.
    pub vm_id: Text<ITEM_CAP>,
    /// `PhysicalHostName`.
    pub host_name: Text<ITEM_CAP>,
    /// `PhysicalHostNameFullyQualified`.
    pub host_fqdn: Text<ITEM_CAP>,
}

/// The keys kept, in [`HostItems`] order.
pub const KEPT_KEYS: [&str; 4] = [
    "VirtualMachineName",
    "VirtualMachineId",
    "PhysicalHostName",
    "PhysicalHostNameFullyQualified",
];

impl HostItems {
    fn slot(&mut self, key: &str) -> Option<&mut Text<ITEM_CAP>> {
        match key {
            "VirtualMachineName" => Some(&mut self.vm_name),
            "VirtualMachineId" => Some(&mut self.vm_id),
            "PhysicalHostName" => Some(&mut self.host_name),
            "PhysicalHostNameFullyQualified" => Some(&mut self.host_fqdn),
            _ => None,
        }
    }
    /// How many of the four were received.
    pub fn count(&self) -> usize {
        [&self.vm_name, &self.vm_id, &self.host_name, &self.host_fqdn]
            .iter()
            .filter(|t| !t.is_empty())
            .count()
    }
}

/// One SET as parsed (key and value decoded; integers as decimal text, as the Linux daemon
/// stores them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetRequest {
    /// Pool.
    pub pool: Pool,
    /// Key.
    pub key: Text<ITEM_CAP>,
    /// Value.
    pub value: Text<ITEM_CAP>,
}

/// Why a KVP message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KvpMsgError {
    /// Shorter than the fields it claims.
    #[error("KVP message of {len} bytes is too short for its {what}")]
    Short {
        /// What was missing.
        what: &'static str,
        /// Length of the KVP message.
        len: usize,
    },
    /// A key or value size beyond the protocol's maximum, or odd for UTF-16.
    #[error("KVP {what} size {size} is invalid")]
    BadSize {
        /// "key" or "value".
        what: &'static str,
        /// The size given.
        size: u32,
    },
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the SET message `m` (the bytes after the IC headers). Sizes are checked against
/// the protocol maxima and against the bytes present; a message cut short after the value
/// it declares is fine (no host is required to send the unused tail).
pub fn parse_set(m: &[u8]) -> Result<SetRequest, KvpMsgError> {
    if m.len() < VALUE_AT + 12 {
        return Err(KvpMsgError::Short {
            what: "value header",
            len: m.len(),
        });
    }
    let v = &m[VALUE_AT..];
    let vtype = rd32(v, 0);
    let key_size = rd32(v, 4);
    let value_size = rd32(v, 8);
    if key_size as usize > MAX_KEY_BYTES || !key_size.is_multiple_of(2) {
        return Err(KvpMsgError::BadSize {
            what: "key",
            size: key_size,
        });
    }
    if value_size as usize > MAX_VALUE_BYTES {
        return Err(KvpMsgError::BadSize {
            what: "value",
            size: value_size,
        });
    }
    let key = v
        .get(12..12 + key_size as usize)
        .ok_or(KvpMsgError::Short {
            what: "key",
            len: m.len(),
        })?;
    let at = 12 + MAX_KEY_BYTES;
    let val = v
        .get(at..at + value_size as usize)
        .ok_or(KvpMsgError::Short {
            what: "value",
            len: m.len(),
        })?;
    let value = match ValueType(vtype) {
        ValueType::U32 if val.len() >= 4 => decimal(u64::from(rd32(val, 0))),
        ValueType::U64 if val.len() >= 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&val[..8]);
            decimal(u64::from_le_bytes(b))
        }
        // REG_SZ, REG_EXPAND_SZ and anything else: text (Linux converts REG_SZ only and
        // leaves other types' bytes as they are).
        _ => Text::from_utf16le(val),
    };
    Ok(SetRequest {
        pool: Pool(m[1]),
        key: Text::from_utf16le(key),
        value,
    })
}

fn decimal(mut v: u64) -> Text<ITEM_CAP> {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut t = Text::new();
    for &d in digits[..n].iter().rev() {
        t.push(char::from(d));
    }
    t
}

/// What the driver has seen (for the console and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvpStats {
    /// IC messages handled (answered or not).
    pub messages: u32,
    /// SETs into pool 3.
    pub pool3_sets: u32,
    /// SETs into other pools (answered OK, not kept).
    pub other_sets: u32,
    /// Enumerations answered "no more items".
    pub enumerations: u32,
    /// Requests refused (GET, DELETE, IP info): answered with an error status.
    pub refused: u32,
    /// Malformed messages (answered with `HV_E_FAIL` when the headers were readable).
    pub malformed: u32,
    /// Messages of a type that is not KVP or negotiate (ignored, as Linux does).
    pub ignored: u32,
    /// Answers that could not be sent.
    pub send_failures: u32,
}

/// How a bounded read of the host items ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// All four kept items arrived.
    Complete,
    /// The deadline passed (with some, or none, of the items).
    Deadline,
}

/// The KVP driver over a device channel. Holds no buffers: each call lends one.
pub struct KvpDevice<C: DeviceChannel> {
    ch: C,
    negotiated: Option<Negotiated>,
    negotiate_refused: bool,
    items: HostItems,
    stats: KvpStats,
}

impl<C: DeviceChannel> KvpDevice<C> {
    /// A driver on an open KVP channel (polling: no interrupts are wanted).
    pub fn new(ch: C) -> Self {
        ch.set_interrupt_mask(true);
        KvpDevice {
            ch,
            negotiated: None,
            negotiate_refused: false,
            items: HostItems::default(),
            stats: KvpStats::default(),
        }
    }
    /// The versions agreed with the host, once negotiated.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }
    /// The host offered only versions the guest does not speak (answered with zero counts).
    pub fn negotiate_refused(&self) -> bool {
        self.negotiate_refused
    }
    /// The pool 3 items received so far.
    pub fn items(&self) -> &HostItems {
        &self.items
    }
    /// Counters.
    pub fn stats(&self) -> KvpStats {
        self.stats
    }

    /// Handles up to [`POLL_LIMIT`] packets, answering each request. `buf` takes one packet
    /// ([`MAX_PACKET`] bytes plus the descriptor is enough for every KVP message). Returns
    /// how many packets were read; a channel error ends the call.
    pub fn poll(&mut self, buf: &mut [u8]) -> Result<usize, ChannelError> {
        let mut n = 0;
        let (base, cap) = (buf.as_ptr() as usize, buf.len());
        while n < POLL_LIMIT {
            let (trans_id, range) = match self.ch.recv(buf) {
                Ok(None) => break,
                Ok(Some(p)) => {
                    n += 1;
                    if p.kind != PacketKind::InBand {
                        self.stats.ignored += 1;
                        continue;
                    }
                    // The payload is a slice of `buf` (the ring read copies into it).
                    let start = (p.payload.as_ptr() as usize).checked_sub(base);
                    match start {
                        Some(s) if s + p.payload.len() <= cap => {
                            (p.trans_id(), s..s + p.payload.len())
                        }
                        _ => {
                            self.stats.malformed += 1;
                            continue;
                        }
                    }
                }
                // A consumed bad packet: the next one is readable.
                Err(ChannelError::Malformed(_) | ChannelError::TooLarge(_)) => {
                    n += 1;
                    self.stats.malformed += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let msg = &mut buf[range.clone()];
            if let Some(len) = self.handle(msg) {
                let sent = self.ch.send(&OutgoingPacket::InBand {
                    trans_id,
                    completion_requested: false,
                    data: &buf[range.start..range.start + len],
                });
                if sent.is_err() {
                    self.stats.send_failures += 1;
                }
            }
        }
        Ok(n)
    }

    /// Polls until the four kept items are in or `deadline` says stop (checked after every
    /// poll round, so a host that keeps the ring busy cannot hold the caller).
    pub fn read_host_items(
        &mut self,
        buf: &mut [u8],
        deadline: &mut dyn Deadline,
    ) -> Result<ReadEnd, ChannelError> {
        loop {
            self.poll(buf)?;
            if self.items.count() == KEPT_KEYS.len() {
                return Ok(ReadEnd::Complete);
            }
            if deadline.expired() {
                return Ok(ReadEnd::Deadline);
            }
        }
    }

    /// Turns the request in `msg` into its answer in place; `Some(len)` to send, `None` to
    /// send nothing.
    fn handle(&mut self, msg: &mut [u8]) -> Option<usize> {
        self.stats.messages += 1;
        let len = msg.len();
        let ty = match IcMessage::new_checked(&*msg) {
            Ok(m) => m.msg_type(),
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        match ty {
            MessageType::NEGOTIATE => match super::negotiate_in_place(msg, len, &VERSIONS) {
                Ok((out, agreed)) => {
                    match agreed {
                        Some(a) => self.negotiated = Some(a),
                        None => self.negotiate_refused = true,
                    }
                    Some(out)
                }
                Err(IcError::NoRoom { .. }) | Err(_) => {
                    self.stats.malformed += 1;
                    respond(msg, status::E_FAIL);
                    Some(len)
                }
            },
            MessageType::KVP_EXCHANGE => {
                let status = self.exchange(&msg[ICMSG_HDR..]);
                respond(msg, status);
                Some(len)
            }
            _ => {
                // Linux hv_kvp_onchannelcallback: "Invalid msg type", no answer.
                self.stats.ignored += 1;
                None
            }
        }
    }

    /// The status for one KVP exchange message (`m`: after the IC headers).
    fn exchange(&mut self, m: &[u8]) -> u32 {
        if m.len() < 2 {
            self.stats.malformed += 1;
            return status::E_FAIL;
        }
        match Op(m[0]) {
            Op::SET => match parse_set(m) {
                Ok(set) if set.pool == Pool::AUTO_EXTERNAL => {
                    self.stats.pool3_sets += 1;
                    if let Some(slot) = self.items.slot(set.key.as_str()) {
                        *slot = set.value;
                    }
                    status::S_OK
                }
                Ok(_) => {
                    self.stats.other_sets += 1;
                    status::S_OK
                }
                Err(_) => {
                    self.stats.malformed += 1;
                    status::E_FAIL
                }
            },
            // The canary keeps no guest pool: every enumeration is at its end, every GET and
            // DELETE names an unknown key (hv_kvp_daemon.c answers these HV_S_CONT).
            Op::ENUMERATE => {
                self.stats.enumerations += 1;
                status::S_CONT
            }
            Op::GET | Op::DELETE => {
                self.stats.refused += 1;
                status::S_CONT
            }
            // No IP configuration to read or inject.
            _ => {
                self.stats.refused += 1;
                status::E_FAIL
            }
        }
    }
}

fn respond(msg: &mut [u8], status: u32) {
    if let Ok(mut m) = IcMessage::new_checked(msg) {
        m.make_response(status);
    }
}

/// Writes a SET request (what a host sends; the host model and tests use it) for `key` =
/// `value` (UTF-16LE, NUL included) into `out`: IC headers with `versions`, the KVP header,
/// the value struct; `message_len` bytes of KVP message (OpenVMM: [`MESSAGE_LEN`]; at least
/// what the value needs). Returns the length, or `None` if it does not fit.
pub fn emit_set(
    out: &mut [u8],
    versions: Negotiated,
    transaction_id: u8,
    pool: Pool,
    key: &str,
    value: SetValue<'_>,
    message_len: usize,
) -> Option<usize> {
    let key_units = key.encode_utf16().count() + 1;
    let (vtype, vbytes) = match value {
        SetValue::Str(s) => (ValueType::SZ, 2 * (s.encode_utf16().count() + 1)),
        SetValue::U32(_) => (ValueType::U32, 4),
        SetValue::U64(_) => (ValueType::U64, 8),
    };
    if 2 * key_units > MAX_KEY_BYTES || vbytes > MAX_VALUE_BYTES {
        return None;
    }
    let need_msg = (VALUE_AT + 12 + MAX_KEY_BYTES + vbytes).max(message_len);
    let total = ICMSG_HDR + need_msg;
    if out.len() < total {
        return None;
    }
    super::emit_header(
        out,
        MessageType::KVP_EXCHANGE,
        versions.framework,
        versions.message,
        transaction_id,
        need_msg,
    );
    let m = &mut out[ICMSG_HDR..total];
    m.fill(0);
    m[0] = Op::SET.0;
    m[1] = pool.0;
    let v = &mut m[VALUE_AT..];
    v[0..4].copy_from_slice(&vtype.0.to_le_bytes());
    v[4..8].copy_from_slice(&((2 * key_units) as u32).to_le_bytes());
    v[8..12].copy_from_slice(&(vbytes as u32).to_le_bytes());
    for (i, u) in key.encode_utf16().enumerate() {
        v[12 + 2 * i..14 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let at = 12 + MAX_KEY_BYTES;
    match value {
        SetValue::Str(s) => {
            for (i, u) in s.encode_utf16().enumerate() {
                v[at + 2 * i..at + 2 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        SetValue::U32(x) => v[at..at + 4].copy_from_slice(&x.to_le_bytes()),
        SetValue::U64(x) => v[at..at + 8].copy_from_slice(&x.to_le_bytes()),
    }
    Some(total)
}

/// Writes a KVP request without a value (ENUMERATE with `index`, GET/DELETE of no key, IP
/// info): the KVP header and `index` at offset 4, padded to `message_len`.
pub fn emit_op(
    out: &mut [u8],
    versions: Negotiated,
    transaction_id: u8,
    operation: Op,
    pool: Pool,
    index: u32,
    message_len: usize,
) -> Option<usize> {
    let need_msg = message_len.max(8);
    let total = ICMSG_HDR + need_msg;
    if out.len() < total {
        return None;
    }
    super::emit_header(
        out,
        MessageType::KVP_EXCHANGE,
        versions.framework,
        versions.message,
        transaction_id,
        need_msg,
    );
    let m = &mut out[ICMSG_HDR..total];
    m.fill(0);
    m[0] = operation.0;
    m[1] = pool.0;
    m[4..8].copy_from_slice(&index.to_le_bytes());
    Some(total)
}

/// A value for [`emit_set`].
#[derive(Debug, Clone, Copy)]
pub enum SetValue<'a> {
    /// `REG_SZ`.
    Str(&'a str),
    /// `REG_U32`.
    U32(u32),
    /// `REG_U64`.
    U64(u64),
}

/// Whether `flags` mark a response (both bits, as OpenVMM requires).
pub fn is_response(f: u8) -> bool {
    f & (flags::TRANSACTION | flags::RESPONSE) == flags::TRANSACTION | flags::RESPONSE
}

#[cfg(test)]
#[path = "kvp_tests.rs"]
mod tests;
