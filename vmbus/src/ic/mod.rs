//! Hyper-V integration components (ICs): the message framework every IC channel speaks, and
//! the KVP data exchange ([`kvp`]).
//!
//! An IC message is one in-band VMBus packet holding (Linux `include/linux/hyperv.h`,
//! OpenVMM `hyperv_ic_protocol`):
//!
//! ```text
//! off len  field
//! 0   4    vmbuspipe_hdr.flags
//! 4   4    vmbuspipe_hdr.msgsize
//! 8   4    icmsg_hdr.icverframe   (framework version: u16 major, u16 minor)
//! 12  2    icmsg_hdr.icmsgtype    (0 negotiate, 1 heartbeat, 2 KVP exchange, 3 shutdown, ...)
//! 14  4    icmsg_hdr.icvermsg     (message version)
//! 18  2    icmsg_hdr.icmsgsize    (bytes of the body after the headers)
//! 20  4    icmsg_hdr.status       (HRESULT: 0 ok)
//! 24  1    icmsg_hdr.ictransaction_id
//! 25  1    icmsg_hdr.icflags      (1 transaction, 2 request, 4 response)
//! 26  2    reserved
//! 28  ..   body
//! ```
//!
//! The host sends requests; the guest answers each one in place: the same bytes with `status`
//! and `icflags = TRANSACTION | RESPONSE`, in an in-band packet with the request's transaction
//! id (Linux `hv_kvp_onchannelcallback`, `kvp_respond_to_host`). The first request on every IC
//! channel is a version negotiation ([`negotiate_in_place`]).

pub mod kvp;

use core::ops::Range;

/// Field offsets of the IC message (module docs).
pub mod field {
    use core::ops::Range;
    /// `vmbuspipe_hdr.flags`.
    pub const PIPE_FLAGS: Range<usize> = 0..4;
    /// `vmbuspipe_hdr.msgsize`.
    pub const PIPE_MSGSIZE: Range<usize> = 4..8;
    /// `icmsg_hdr.icverframe`.
    pub const FRAMEWORK_VERSION: Range<usize> = 8..12;
    /// `icmsg_hdr.icmsgtype`.
    pub const MSG_TYPE: Range<usize> = 12..14;
    /// `icmsg_hdr.icvermsg`.
    pub const MSG_VERSION: Range<usize> = 14..18;
    /// `icmsg_hdr.icmsgsize`.
    pub const MSG_SIZE: Range<usize> = 18..20;
    /// `icmsg_hdr.status`.
    pub const STATUS: Range<usize> = 20..24;
    /// `icmsg_hdr.ictransaction_id`.
    pub const TRANSACTION_ID: usize = 24;
    /// `icmsg_hdr.icflags`.
    pub const FLAGS: usize = 25;
}

/// `sizeof(struct vmbuspipe_hdr) + sizeof(struct icmsg_hdr)` (Linux `ICMSG_HDR`).
pub const ICMSG_HDR: usize = 28;

/// `icmsgtype` values (Linux `ICMSGTYPE_*`; OpenVMM `hyperv_ic_protocol::MessageType`). An
/// open enum (`open_enum`): a type a host adds is kept, not refused.
#[open_enum::open_enum]
#[allow(clippy::upper_case_acronyms)] // the C names
#[derive(Clone, Copy, Debug, Hash)]
#[repr(u16)]
pub enum MessageType {
    /// Version negotiation.
    NEGOTIATE = 0,
    /// Heartbeat.
    HEARTBEAT = 1,
    /// KVP exchange.
    KVP_EXCHANGE = 2,
    /// Shutdown.
    SHUTDOWN = 3,
    /// Time sync.
    TIMESYNC = 4,
}

/// `icflags` bits (Linux `ICMSGHDRFLAG_*`).
pub mod flags {
    /// The message is part of a transaction (expects a response).
    pub const TRANSACTION: u8 = 1;
    /// A request.
    pub const REQUEST: u8 = 2;
    /// A response.
    pub const RESPONSE: u8 = 4;
}

/// Status codes (Linux `include/linux/hyperv.h` `HV_S_OK`, `HV_E_FAIL`, `HV_S_CONT`).
pub mod status {
    /// Success.
    pub const S_OK: u32 = 0;
    /// Failure.
    pub const E_FAIL: u32 = 0x8000_4005;
    /// "No more items" (ERROR_NO_MORE_ITEMS as an HRESULT): ends a host enumeration, and what
    /// the Linux daemon answers a GET or DELETE of an unknown key (`hv_kvp_daemon.c`).
    pub const S_CONT: u32 = 0x8007_0103;
}

/// An IC version (`struct ic_version`: u16 major, u16 minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct IcVersion {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
}

impl IcVersion {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        IcVersion { major, minor }
    }
    fn read(b: &[u8]) -> Self {
        IcVersion {
            major: u16::from_le_bytes([b[0], b[1]]),
            minor: u16::from_le_bytes([b[2], b[3]]),
        }
    }
    fn write(self, b: &mut [u8]) {
        b[0..2].copy_from_slice(&self.major.to_le_bytes());
        b[2..4].copy_from_slice(&self.minor.to_le_bytes());
    }
}

impl core::fmt::Display for IcVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Framework versions the guest speaks, newest first (Linux `hv_kvp.c` `fw_versions`:
/// `UTIL_FW_VERSION` 3.0, `UTIL_WS2K8_FW_VERSION` 1.0).
pub const FRAMEWORK_VERSIONS: [IcVersion; 2] = [IcVersion::new(3, 0), IcVersion::new(1, 0)];

/// Most versions either list of a negotiate request may hold (Linux
/// `IC_VERSION_NEGOTIATION_MAX_VER_COUNT`).
pub const MAX_VERSION_COUNT: usize = 100;

/// Why an IC message could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IcError {
    /// Shorter than the two headers.
    #[error("IC message of {0} bytes is shorter than its 28-byte headers")]
    Short(usize),
    /// A negotiate body shorter than its counts say.
    #[error("negotiate lists {fw} + {msg} versions, the message holds {len} bytes")]
    BadNegotiate {
        /// Framework versions listed.
        fw: u16,
        /// Message versions listed.
        msg: u16,
        /// Message length.
        len: usize,
    },
    /// The response does not fit the buffer.
    #[error("response of {need} bytes does not fit {have}")]
    NoRoom {
        /// Bytes needed.
        need: usize,
        /// Buffer size.
        have: usize,
    },
}

/// A view over an IC message (smoltcp style: checked once, then fields at named offsets).
#[derive(Debug)]
pub struct IcMessage<T: AsRef<[u8]>> {
    buf: T,
}

fn le16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_le_bytes([b[r.start], b[r.start + 1]])
}
fn le32(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_le_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

impl<T: AsRef<[u8]>> IcMessage<T> {
    /// Checks that both headers are there.
    pub fn new_checked(buf: T) -> Result<Self, IcError> {
        let n = buf.as_ref().len();
        if n < ICMSG_HDR {
            return Err(IcError::Short(n));
        }
        Ok(IcMessage { buf })
    }
    /// `icmsgtype`.
    pub fn msg_type(&self) -> MessageType {
        MessageType(le16(self.buf.as_ref(), field::MSG_TYPE))
    }
    /// `icverframe`.
    pub fn framework_version(&self) -> IcVersion {
        IcVersion::read(&self.buf.as_ref()[field::FRAMEWORK_VERSION])
    }
    /// `icvermsg`.
    pub fn msg_version(&self) -> IcVersion {
        IcVersion::read(&self.buf.as_ref()[field::MSG_VERSION])
    }
    /// `icmsgsize`.
    pub fn msg_size(&self) -> u16 {
        le16(self.buf.as_ref(), field::MSG_SIZE)
    }
    /// `status`.
    pub fn status(&self) -> u32 {
        le32(self.buf.as_ref(), field::STATUS)
    }
    /// `ictransaction_id`.
    pub fn transaction_id(&self) -> u8 {
        self.buf.as_ref()[field::TRANSACTION_ID]
    }
    /// `icflags`.
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }
    /// Everything after the headers (the whole rest of the packet: `icmsgsize` is not trusted
    /// for reading, as Linux does not trust it either).
    pub fn body(&self) -> &[u8] {
        &self.buf.as_ref()[ICMSG_HDR..]
    }
    /// The bytes.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcMessage<T> {
    /// Sets `status`.
    pub fn set_status(&mut self, s: u32) {
        self.buf.as_mut()[field::STATUS].copy_from_slice(&s.to_le_bytes());
    }
    /// Sets `icflags`.
    pub fn set_flags(&mut self, f: u8) {
        self.buf.as_mut()[field::FLAGS] = f;
    }
    /// Sets `icmsgsize`.
    pub fn set_msg_size(&mut self, n: u16) {
        self.buf.as_mut()[field::MSG_SIZE].copy_from_slice(&n.to_le_bytes());
    }
    /// The body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[ICMSG_HDR..]
    }
    /// Turns a request into its response: `status`, and `icflags = TRANSACTION | RESPONSE`
    /// (Linux `kvp_respond_to_host`, `hv_kvp_onchannelcallback`; OpenVMM `read_response` checks
    /// both bits).
    pub fn make_response(&mut self, status: u32) {
        self.set_status(status);
        self.set_flags(flags::TRANSACTION | flags::RESPONSE);
    }
}

/// `struct icmsg_negotiate`: u16 icframe_vercnt, u16 icmsg_vercnt, u32 reserved, then the
/// framework versions and the message versions.
const NEGOTIATE_HDR: usize = 8;

/// The versions a negotiation settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Framework version.
    pub framework: IcVersion,
    /// Message version.
    pub message: IcVersion,
}

/// Answers a negotiate request in `msg[..len]` in place (Linux `vmbus_prep_negotiate_resp`,
/// FreeBSD `vmbus_ic_negomsg`): picks the host's highest framework version not above ours
/// ([`FRAMEWORK_VERSIONS`]`[0]`) and its highest message version not above `ours[0]` (`ours`
/// newest first), whatever order the host lists them in (FreeBSD's rule; Linux takes only
/// exact matches of its list, a subset of these: be liberal); writes
/// `icframe_vercnt = icmsg_vercnt = 1` and the two versions (both counts 0 when either has no
/// match: the host then knows we speak none of its versions), `icmsgsize = 16`, status OK and
/// the response flags. Returns the length to send (at least `len`: the two versions may need
/// more room than a request listing none) and what was agreed.
pub fn negotiate_in_place(
    msg: &mut [u8],
    len: usize,
    ours: &[IcVersion],
) -> Result<(usize, Option<Negotiated>), IcError> {
    let m = IcMessage::new_checked(&msg[..len.min(msg.len())])?;
    let body = m.body();
    if body.len() < 4 {
        return Err(IcError::BadNegotiate { fw: 0, msg: 0, len });
    }
    let fw_n = u16::from_le_bytes([body[0], body[1]]);
    let msg_n = u16::from_le_bytes([body[2], body[3]]);
    let listed = usize::from(fw_n) + usize::from(msg_n);
    if usize::from(fw_n) > MAX_VERSION_COUNT
        || usize::from(msg_n) > MAX_VERSION_COUNT
        || body.len() < NEGOTIATE_HDR + 4 * listed
    {
        return Err(IcError::BadNegotiate {
            fw: fw_n,
            msg: msg_n,
            len,
        });
    }
    let versions = |first: usize, n: u16| {
        (0..usize::from(n))
            .map(move |i| NEGOTIATE_HDR + 4 * (first + i))
            .map(|at| IcVersion::read(&body[at..at + 4]))
    };
    // The host's highest version not above our newest (FreeBSD `vmbus_ic_negomsg`), which
    // includes every exact match Linux would take of our list; a host offering only newer
    // versions gets none.
    let pick = |list: &[IcVersion], first: usize, n: u16| {
        let newest = list.first().copied()?;
        versions(first, n).filter(|h| *h <= newest).max()
    };
    let fw = pick(&FRAMEWORK_VERSIONS, 0, fw_n);
    let mv = pick(ours, usize::from(fw_n), msg_n);
    let agreed = match (fw, mv) {
        (Some(framework), Some(message)) => Some(Negotiated { framework, message }),
        _ => None,
    };
    let out_len = len.max(ICMSG_HDR + NEGOTIATE_HDR + 8);
    if msg.len() < out_len {
        return Err(IcError::NoRoom {
            need: out_len,
            have: msg.len(),
        });
    }
    let mut m = IcMessage::new_checked(&mut msg[..out_len])?;
    let b = m.body_mut();
    let n: u16 = if agreed.is_some() { 1 } else { 0 };
    b[0..2].copy_from_slice(&n.to_le_bytes());
    b[2..4].copy_from_slice(&n.to_le_bytes());
    let a = agreed.unwrap_or(Negotiated {
        framework: IcVersion::default(),
        message: IcVersion::default(),
    });
    a.framework.write(&mut b[NEGOTIATE_HDR..NEGOTIATE_HDR + 4]);
    a.message
        .write(&mut b[NEGOTIATE_HDR + 4..NEGOTIATE_HDR + 8]);
    m.set_msg_size((NEGOTIATE_HDR + 8) as u16);
    m.make_response(status::S_OK);
    Ok((out_len, agreed))
}

/// Writes a negotiate request (what a host sends; the host model and tests use it): headers
/// with `icflags = TRANSACTION | REQUEST`, then the two version lists. Returns its length.
pub fn emit_negotiate_request(
    out: &mut [u8],
    transaction_id: u8,
    fw: &[IcVersion],
    msg: &[IcVersion],
) -> Result<usize, IcError> {
    let body = NEGOTIATE_HDR + 4 * (fw.len() + msg.len());
    let need = ICMSG_HDR + body;
    if out.len() < need || fw.len() > MAX_VERSION_COUNT || msg.len() > MAX_VERSION_COUNT {
        return Err(IcError::NoRoom {
            need,
            have: out.len(),
        });
    }
    emit_header(
        &mut out[..need],
        MessageType::NEGOTIATE,
        IcVersion::default(),
        IcVersion::default(),
        transaction_id,
        body,
    );
    let b = &mut out[ICMSG_HDR..need];
    b[0..2].copy_from_slice(&(fw.len() as u16).to_le_bytes());
    b[2..4].copy_from_slice(&(msg.len() as u16).to_le_bytes());
    b[4..8].fill(0);
    for (i, v) in fw.iter().chain(msg).enumerate() {
        v.write(&mut b[NEGOTIATE_HDR + 4 * i..NEGOTIATE_HDR + 4 * i + 4]);
    }
    Ok(need)
}

/// Writes the two headers of a request into `out[..ICMSG_HDR]` (`out` must hold them): pipe
/// header (flags 0, `msgsize` = the IC header and body), versions, type, `icmsgsize` =
/// `body_len`, status 0, the transaction id and `TRANSACTION | REQUEST`.
pub fn emit_header(
    out: &mut [u8],
    ty: MessageType,
    framework: IcVersion,
    message: IcVersion,
    transaction_id: u8,
    body_len: usize,
) {
    out[..ICMSG_HDR].fill(0);
    let pipe_size = (ICMSG_HDR - 8 + body_len) as u32;
    out[field::PIPE_MSGSIZE].copy_from_slice(&pipe_size.to_le_bytes());
    framework.write(&mut out[field::FRAMEWORK_VERSION]);
    out[field::MSG_TYPE].copy_from_slice(&ty.0.to_le_bytes());
    message.write(&mut out[field::MSG_VERSION]);
    out[field::MSG_SIZE]
        .copy_from_slice(&(body_len.min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out[field::TRANSACTION_ID] = transaction_id;
    out[field::FLAGS] = flags::TRANSACTION | flags::REQUEST;
}

#[cfg(test)]
mod tests {
    use super::*;

    const KVP: [IcVersion; 3] = [
        IcVersion::new(4, 0),
        IcVersion::new(3, 0),
        IcVersion::new(1, 0),
    ];

    #[test]
    fn header_fields_sit_at_the_linux_offsets() {
        let mut b = [0u8; 64];
        let n = emit_negotiate_request(&mut b, 7, &[IcVersion::new(3, 0)], &KVP[..1]).unwrap();
        assert_eq!(n, 28 + 8 + 8);
        // Golden bytes (Linux include/linux/hyperv.h vmbuspipe_hdr + icmsg_hdr, packed).
        assert_eq!(
            &b[..n],
            &[
                0, 0, 0, 0, 36, 0, 0, 0, // pipe: flags, msgsize (20 + 16)
                0, 0, 0, 0, // icverframe
                0, 0, // icmsgtype negotiate
                0, 0, 0, 0, // icvermsg
                16, 0, // icmsgsize
                0, 0, 0, 0, // status
                7, 3, 0, 0, // transaction id, TRANSACTION|REQUEST, reserved
                1, 0, 1, 0, 0, 0, 0, 0, // one fw, one msg version, reserved
                3, 0, 0, 0, 4, 0, 0, 0, // 3.0, 4.0
            ][..]
        );
        let m = IcMessage::new_checked(&b[..n]).unwrap();
        assert_eq!(m.msg_type(), MessageType::NEGOTIATE);
        assert_eq!(m.transaction_id(), 7);
        assert_eq!(m.msg_size(), 16);
    }

    #[test]
    fn negotiation_picks_our_newest_versions_in_any_host_order() {
        // OpenVMM lists ascending (hyperv_ic/src/common.rs FRAMEWORK_VERSIONS 1.0, 3.0; KVP
        // 3.0, 4.0, 5.0).
        let mut b = [0u8; 128];
        let n = emit_negotiate_request(
            &mut b,
            0,
            &[IcVersion::new(1, 0), IcVersion::new(3, 0)],
            &[
                IcVersion::new(3, 0),
                IcVersion::new(4, 0),
                IcVersion::new(5, 0),
            ],
        )
        .unwrap();
        let (out, agreed) = negotiate_in_place(&mut b, n, &KVP).unwrap();
        assert_eq!(out, n);
        let a = agreed.unwrap();
        assert_eq!(a.framework, IcVersion::new(3, 0));
        assert_eq!(a.message, IcVersion::new(4, 0));
        let m = IcMessage::new_checked(&b[..out]).unwrap();
        assert_eq!(m.flags(), flags::TRANSACTION | flags::RESPONSE);
        assert_eq!(m.msg_size(), 16);
        assert_eq!(&m.body()[..4], &[1, 0, 1, 0]);
        assert_eq!(&m.body()[8..16], &[3, 0, 0, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn a_version_below_our_newest_that_only_freebsd_would_take_is_taken() {
        // FreeBSD vmbus_ic_negomsg takes the host's highest version <= its own (any minor);
        // Linux takes only exact matches of its list. Liberal: FreeBSD's rule, so a host
        // offering KVP 2.0 and 3.5 (no exact match for Linux) gets 3.5, framework 2.0 too.
        let mut b = [0u8; 128];
        let n = emit_negotiate_request(
            &mut b,
            1,
            &[IcVersion::new(2, 0), IcVersion::new(3, 1)],
            &[
                IcVersion::new(2, 0),
                IcVersion::new(3, 5),
                IcVersion::new(4, 1),
            ],
        )
        .unwrap();
        let (_, agreed) = negotiate_in_place(&mut b, n, &KVP).unwrap();
        let a = agreed.expect("a version <= ours was offered");
        assert_eq!(a.framework, IcVersion::new(2, 0));
        assert_eq!(a.message, IcVersion::new(3, 5));
    }

    #[test]
    fn no_common_version_answers_zero_counts() {
        let mut b = [0u8; 128];
        let n = emit_negotiate_request(&mut b, 1, &[IcVersion::new(3, 0)], &[IcVersion::new(9, 0)])
            .unwrap();
        let (_, agreed) = negotiate_in_place(&mut b, n, &KVP).unwrap();
        assert_eq!(agreed, None);
        assert_eq!(&b[28..32], &[0, 0, 0, 0]);
    }

    #[test]
    fn lying_counts_and_short_messages_are_errors_not_faults() {
        let mut b = [0u8; 64];
        let n = emit_negotiate_request(&mut b, 1, &[IcVersion::new(3, 0)], &KVP[..1]).unwrap();
        b[28] = 50; // 50 framework versions in a 44-byte message
        assert!(matches!(
            negotiate_in_place(&mut b, n, &KVP),
            Err(IcError::BadNegotiate { fw: 50, .. })
        ));
        b[28] = 0xff;
        b[29] = 0xff;
        assert!(negotiate_in_place(&mut b, n, &KVP).is_err());
        assert_eq!(
            negotiate_in_place(&mut b, 27, &KVP),
            Err(IcError::Short(27))
        );
        assert!(negotiate_in_place(&mut b, 30, &KVP).is_err());
        // A request listing nothing needs room for the two versions of the answer.
        let mut small = [0u8; 36];
        let n = emit_negotiate_request(&mut small, 1, &[], &[]).unwrap();
        assert_eq!(
            negotiate_in_place(&mut small, n, &KVP),
            Err(IcError::NoRoom { need: 44, have: 36 })
        );
    }
}
