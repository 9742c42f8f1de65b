//! Hypercall control words, call codes, and the two hypercalls VMBus needs: HvPostMessage and
//! HvSignalEvent (ref §3.5).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::msg::MessageType;
use crate::platform::{Clock, Hypervisor, PhysPages};
use crate::status::HvError;

/// Call codes (ref §3.5, Linux `hvgdk_mini.h` `HVCALL_*`).
pub mod code {
    pub const GET_VP_REGISTERS: u16 = 0x0050;
    pub const SET_VP_REGISTERS: u16 = 0x0051;
    pub const POST_MESSAGE: u16 = 0x005C;
    pub const SIGNAL_EVENT: u16 = 0x005D;
}

/// Hypercall input control word (ref §3.5): call code 15:0, fast 16, variable header size
/// 26:17, rep count 43:32, rep start 59:48.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Control(pub u64);

impl Control {
    pub const fn new(code: u16) -> Self {
        Self(code as u64)
    }
    pub const fn code(self) -> u16 {
        self.0 as u16
    }
    pub const fn fast(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    pub const fn with_fast(self, on: bool) -> Self {
        if on {
            Self(self.0 | (1 << 16))
        } else {
            Self(self.0 & !(1 << 16))
        }
    }
    pub const fn var_header_size(self) -> u16 {
        ((self.0 >> 17) & 0x3ff) as u16
    }
    pub const fn rep_count(self) -> u16 {
        ((self.0 >> 32) & 0xfff) as u16
    }
    pub const fn with_rep_count(self, n: u16) -> Self {
        Self((self.0 & !(0xfff << 32)) | (((n as u64) & 0xfff) << 32))
    }
    pub const fn rep_start(self) -> u16 {
        ((self.0 >> 48) & 0xfff) as u16
    }
}

/// Maximum HvPostMessage payload (ref §3.5: `u64 payload[30]`).
pub const HV_MESSAGE_PAYLOAD_SIZE: usize = 240;

/// The VMBus message type in HvPostMessage input and in SynIC messages (ref §3.5, §3.6).
pub const VMBUS_MESSAGE_TYPE: u32 = 1;

/// HvPostMessage input (ref §3.5, Linux `hv_input_post_message`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PostMessageInput {
    pub connection_id: u32,
    pub reserved: u32,
    pub message_type: u32,
    pub payload_size: u32,
    pub payload: [u8; HV_MESSAGE_PAYLOAD_SIZE],
}
const _: () = assert!(core::mem::size_of::<PostMessageInput>() == 256);

/// HvSignalEvent input, passed in a register (ref §3.5): `{u32 connection_id; u16
/// flag_number; u16 rsvd}`.
pub const fn signal_event_input(connection_id: u32, flag_number: u16) -> u64 {
    connection_id as u64 | ((flag_number as u64) << 32)
}

/// HvPostMessage from a per-CPU input page. One try; see
/// [`crate::connection`] for Linux's retry policy.
pub fn post_message(
    hv: &dyn Hypervisor,
    input_page: PhysPages,
    connection_id: u32,
    payload: &[u8],
) -> Result<(), HvError> {
    if payload.len() > HV_MESSAGE_PAYLOAD_SIZE || input_page.is_empty() {
        return Err(HvError::InvalidParameter);
    }
    let mut input = PostMessageInput {
        connection_id,
        reserved: 0,
        message_type: VMBUS_MESSAGE_TYPE,
        payload_size: payload.len() as u32,
        payload: [0; HV_MESSAGE_PAYLOAD_SIZE],
    };
    input.payload[..payload.len()].copy_from_slice(payload);
    // SAFETY: the input page is a whole page owned by this CPU's SynIC state; 256 bytes fit.
    unsafe { crate::mem::write_bytes(input_page.va(), input.as_bytes()) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    hv.hypercall(Control::new(code::POST_MESSAGE), input_page.gpa(), 0)?
        .result()
}

/// HvSignalEvent, a fast hypercall (ref §3.5; Linux `hv_do_fast_hypercall8`).
pub fn signal_event(hv: &dyn Hypervisor, connection_id: u32, flag: u16) -> Result<(), HvError> {
    hv.fast_hypercall(
        Control::new(code::SIGNAL_EVENT),
        signal_event_input(connection_id, flag),
        0,
    )?
    .result()
}

/// Linux `vmbus_post_msg`: up to 100 tries (ref §4.5).
pub const POST_RETRIES: u32 = 100;

/// Default backstop for every polling loop ([`crate::Connection::set_poll_limit`]): if the clock
/// stops advancing (a broken time source), loops still end after this many iterations.
pub const SPIN_LIMIT: u32 = 1 << 26;

fn wait_ticks(clock: &dyn Clock, ticks: u64) {
    let until = clock.now().saturating_add(ticks);
    // A stuck clock ends each backoff wait after a bounded spin.
    for _ in 0..ticks.min(SPIN_LIMIT as u64) {
        if clock.now() >= until {
            break;
        }
        clock.relax();
    }
}

/// HvPostMessage with Linux's retry policy (ref §4.5): retry insufficient memory/buffers and
/// invalid connection id up to 100 times with exponential backoff from 1 µs (doubling for
/// the first 22 retries), busy-waiting; INITIATE_CONTACT returns an invalid connection id at
/// once so the next older version can be tried. Retrying also stops at `deadline` (Linux's
/// schedule can add up to minutes; the panic path has its own deadline).
pub fn post_with_retries(
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    page: PhysPages,
    conn_id: u32,
    bytes: &[u8],
    deadline: u64,
) -> Result<(), HvError> {
    let initiate = bytes.len() >= 4 && bytes[..4] == MessageType::INITIATE_CONTACT.0.to_le_bytes();
    let mut usec: u64 = 1;
    let mut last = HvError::InsufficientBuffers;
    for retry in 0..POST_RETRIES {
        match post_message(hv, page, conn_id, bytes) {
            Ok(()) => return Ok(()),
            Err(HvError::InvalidConnectionId) if initiate => {
                return Err(HvError::InvalidConnectionId)
            }
            Err(e) if e.is_transient() => last = e,
            Err(e) => return Err(e),
        }
        if clock.now() >= deadline {
            break;
        }
        wait_ticks(clock, usec * 10);
        if retry < 22 {
            usec *= 2;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_word_fields_sit_at_documented_bits() {
        let c = Control::new(code::SET_VP_REGISTERS)
            .with_fast(true)
            .with_rep_count(1);
        // arm64 hv_set_vpreg: HvSetVpRegisters | FAST (bit 16) | REP_COMP_1 (bit 32).
        assert_eq!(c.0, 0x0000_0001_0001_0051);
        assert_eq!(c.code(), 0x51);
        assert!(c.fast());
        assert_eq!(c.rep_count(), 1);
        assert_eq!(Control(0x0003_0000_0000_0000).rep_start(), 3);
        assert_eq!(Control(0x3ff << 17).var_header_size(), 0x3ff);
    }

    #[test]
    fn post_message_input_golden_bytes() {
        // Layout: ref §3.5 hv_input_post_message {u32 connection_id; u32 reserved;
        // u32 message_type; u32 payload_size; u64 payload[30]}.
        let mut i = PostMessageInput {
            connection_id: 4,
            reserved: 0,
            message_type: 1,
            payload_size: 8,
            payload: [0; 240],
        };
        i.payload[0] = 16;
        let b = i.as_bytes();
        assert_eq!(&b[0..16], &[4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(b[16], 16);
        assert_eq!(b.len(), 256);
        assert_eq!(signal_event_input(0x2005, 0), 0x2005);
        assert_eq!(signal_event_input(7, 3), 0x0000_0003_0000_0007);
    }
}
