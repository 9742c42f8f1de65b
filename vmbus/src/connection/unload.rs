//! UNLOAD, run once on the panic path (ref §2.2, §2.4; Linux `vmbus_initiate_unload(true)`,
//! `vmbus_wait_for_unload`).

use core::sync::atomic::Ordering;

use zerocopy::IntoBytes;

use super::{Connection, UnloadOutcome, UnloadSkip, STATE_DISCONNECTED};
use crate::hypercall::{post_with_retries, VMBUS_MESSAGE_TYPE};
use crate::msg::{MessageHeader, MessageType};
use crate::platform::{Clock, Hypervisor};
use crate::status::HvError;
use crate::synic::VMBUS_MESSAGE_SINT;

impl<'s> Connection<'s> {
    /// UNLOAD for the panic path (ref §2.2, §2.4; Linux `vmbus_initiate_unload(true)` and
    /// `vmbus_wait_for_unload`). Runs at most once per connection: the state is swapped to
    /// disconnected first, so concurrent or repeated callers get `Skipped(AlreadyUnloaded)`.
    /// Posts UNLOAD from the calling CPU, then polls the SINT2 slot of every CPU with an
    /// enabled SynIC (the reply goes to the connect CPU, which may be stopped), EOMs each
    /// message, stops on UNLOAD_RESPONSE or at `deadline`, and finally clears every slot so a
    /// new connection can receive messages.
    pub fn unload(&self, hv: &dyn Hypervisor, clock: &dyn Clock, deadline: u64) -> UnloadOutcome {
        if self.state.swap(STATE_DISCONNECTED, Ordering::AcqRel) == STATE_DISCONNECTED {
            return UnloadOutcome::Skipped(UnloadSkip::AlreadyUnloaded);
        }
        if !self.version.supports_unload() {
            return UnloadOutcome::Skipped(UnloadSkip::VersionTooOld(self.version));
        }
        let start = clock.now();
        let hdr = MessageHeader::new(MessageType::UNLOAD);
        let posted = self
            .post_page(hv)
            .map_err(|_| HvError::HypercallsDisabled)
            .and_then(|page| {
                post_with_retries(hv, clock, page, self.msg_conn_id, hdr.as_bytes(), deadline)
            });
        if let Err(e) = posted {
            log::warn!("vmbus: posting UNLOAD failed: {e}");
            self.clear_all_slots();
            return UnloadOutcome::Failed(e);
        }
        let mut next_log = start.saturating_add(50_000_000);
        let mut spins = 0u32;
        let outcome = loop {
            let mut responder = None;
            for vp in self.synic.enabled_cpus() {
                let Some(m) = self.synic.read_message(vp, VMBUS_MESSAGE_SINT) else {
                    continue;
                };
                let ty = m.header.message_type;
                if ty == VMBUS_MESSAGE_TYPE
                    && m.payload()
                        .and_then(|p| p.get(..4))
                        .is_some_and(|t| t == MessageType::UNLOAD_RESPONSE.0.to_le_bytes())
                {
                    responder = Some(vp);
                }
                // EOM every message found, not just the response (ref §2.4).
                let _ = self.synic.eom(hv, vp, VMBUS_MESSAGE_SINT, ty);
            }
            let now = clock.now();
            if let Some(vp) = responder {
                break UnloadOutcome::Done {
                    responder_vp: vp,
                    waited: now.saturating_sub(start),
                };
            }
            spins += 1;
            if now >= deadline || spins >= self.poll_limit {
                log::warn!("vmbus: continuing even though VMBus UNLOAD did not complete");
                break UnloadOutcome::TimedOut {
                    waited: now.saturating_sub(start),
                };
            }
            if now >= next_log {
                log::warn!("vmbus: waiting for VMBus UNLOAD to complete");
                next_log = now.saturating_add(50_000_000);
            }
            clock.relax();
        };
        self.clear_all_slots();
        outcome
    }

    pub(super) fn clear_all_slots(&self) {
        for vp in self.synic.enabled_cpus() {
            self.synic.clear_slot(vp, VMBUS_MESSAGE_SINT);
        }
    }
}
