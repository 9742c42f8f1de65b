//! Connecting: INITIATE_CONTACT for each version, newest first, until the host accepts one
//! (ref §4.1, §4.2; Linux `vmbus_negotiate_version`).

use core::sync::atomic::{AtomicU8, Ordering};

use zerocopy::IntoBytes;

use super::{
    connection_id, ConnectOptions, Connection, VmbusError, EMPTY_OFFER, FIRST_GPADL_HANDLE,
    MAX_OFFERS, SPIN_LIMIT, STATE_CONNECTED, STATE_DISCONNECTED,
};
use crate::msg::{self, HostMessage, MessageHeader, MessageType};
use crate::platform::{Clock, Hypervisor, PageAlloc};
use crate::regs::SynReg;
use crate::status::HvError;
use crate::synic::{Synic, VMBUS_MESSAGE_SINT};
use crate::version::Version;

impl<'s> Connection<'s> {
    /// Negotiate a version, newest first (ref §4.1, §4.2). The calling CPU's SynIC must be
    /// enabled, and the target VP's. Allocates 3 pages (interrupt page, 2 monitor pages).
    pub fn connect(
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        alloc: &dyn PageAlloc,
        synic: &'s Synic,
        opts: &ConnectOptions<'_>,
    ) -> Result<Self, VmbusError> {
        let vp = hv.read_reg(SynReg::VpIndex)? as u32;
        let target_vp = opts.target_vp.unwrap_or(vp);
        if target_vp != vp {
            return Err(VmbusError::WrongCpu {
                target: target_vp,
                caller: vp,
            });
        }
        if !synic.is_enabled(vp) || synic.post_page(vp).is_none() {
            return Err(VmbusError::NoSynic(vp));
        }
        let pages = alloc.alloc_pages(3).ok_or(VmbusError::OutOfPages)?;
        let mut conn = Self {
            synic,
            state: AtomicU8::new(STATE_DISCONNECTED),
            version: Version(0),
            msg_conn_id: connection_id::MESSAGE,
            target_vp,
            offers: [EMPTY_OFFER; MAX_OFFERS],
            rescinded: [false; MAX_OFFERS],
            opened: [false; MAX_OFFERS],
            offer_count: 0,
            dropped_offers: 0,
            malformed: 0,
            timer_messages: 0,
            next_gpadl: FIRST_GPADL_HANDLE,
            pages,
            reply_timeout: opts.reply_timeout,
            poll_limit: SPIN_LIMIT,
        };
        match conn.negotiate(hv, clock, opts.versions) {
            Ok(()) => Ok(conn),
            Err(e) => {
                alloc.free_pages(pages);
                Err(e)
            }
        }
    }

    pub(super) fn negotiate(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        versions: &[Version],
    ) -> Result<(), VmbusError> {
        for &v in versions.iter().filter(|v| v.supports_unload()) {
            let (conn_id, info) = if v.uses_message_connection_id_4() {
                (
                    connection_id::MESSAGE_4,
                    msg::target_info(VMBUS_MESSAGE_SINT, 0, 0),
                )
            } else {
                (connection_id::MESSAGE, self.pages.gpa())
            };
            let m = msg::InitiateContact {
                header: MessageHeader::new(MessageType::INITIATE_CONTACT),
                vmbus_version_requested: v.0,
                target_vcpu: self.target_vp,
                interrupt_page_or_target_info: info,
                monitor_page1: self.pages.gpa() + crate::PAGE_SIZE as u64,
                monitor_page2: self.pages.gpa() + 2 * crate::PAGE_SIZE as u64,
            };
            match self.post_to(hv, clock, conn_id, m.as_bytes()) {
                Ok(()) => {}
                // Hosts that do not listen on connection id 4 (≤ 4.0, e.g. QEMU) say so here.
                Err(VmbusError::Hv(HvError::InvalidConnectionId)) => {
                    log::info!("vmbus: version {v}: invalid connection id {conn_id}, trying older");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let reply = self.wait_for(hv, clock, "VERSION_RESPONSE", |_, m| match m {
                HostMessage::VersionResponse {
                    version_supported,
                    connection_state,
                    msg_conn_id,
                } => Some((version_supported, connection_state, msg_conn_id)),
                _ => None,
            })?;
            let (supported, state, msg_conn_id) = reply;
            if !supported {
                log::info!("vmbus: host does not support version {v}");
                continue;
            }
            if state != 0 {
                return Err(VmbusError::ConnectionFailed { version: v, state });
            }
            self.version = v;
            // From 5.0 the host names the id (Linux takes it as is; OpenVMM sends 1, QEMU
            // never gets here). Absent (12-byte form) or 0 (no valid id): the id we used.
            self.msg_conn_id = if v.uses_message_connection_id_4() {
                msg_conn_id
                    .filter(|&id| id != 0)
                    .unwrap_or(connection_id::MESSAGE_4)
            } else {
                connection_id::MESSAGE
            };
            self.state.store(STATE_CONNECTED, Ordering::Release);
            log::info!(
                "vmbus: connected at version {v}, message connection id {}",
                self.msg_conn_id
            );
            return Ok(());
        }
        Err(VmbusError::NoVersionAccepted)
    }
}
