//! netvsc as a smoltcp `phy::Device`.
//!
//! Interrupt mode: `receive` drains the inbound ring only after [`Netvsc::on_interrupt`].
//! Polling mode (the panic path): every `receive`/`transmit` drains the ring, so transmit
//! completions are reaped without interrupts. Buffers are the driver's own, pre-allocated.

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::{Core, DeviceChannel, DmaMemory, Netvsc, RxQueue, ETH_FRAME_MTU, FRAME_MAX};

/// Logs a receive-side error, except the poison error every poll repeats (it was logged once
/// when the channel was poisoned; smoltcp polls in a tight loop on the panic path, and a
/// slow console must not slow it).
fn warn_once(e: &super::NetvscError, what: &str) {
    if !matches!(
        e,
        super::NetvscError::Channel(super::ChannelError::Poisoned(_))
    ) {
        log::warn!("netvsc: {what}: {e}");
    }
}

/// Receive token: the frame at the head of the driver's queue.
pub struct RxToken<'a> {
    rxq: &'a mut RxQueue,
}

/// Transmit token: sends through the driver.
pub struct TxToken<'a, C: DeviceChannel, M: DmaMemory> {
    core: &'a mut Core<C, M>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.rxq.front().unwrap_or(&[]));
        self.rxq.pop();
        r
    }
}

impl<C: DeviceChannel, M: DmaMemory> phy::TxToken for TxToken<'_, C, M> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = [0u8; FRAME_MAX];
        let len = len.min(FRAME_MAX);
        let r = f(&mut frame[..len]);
        if let Err(e) = self.core.send_frame(&frame[..len]) {
            log::warn!("netvsc: transmit failed: {e}");
        }
        r
    }
}

impl<C: DeviceChannel, M: DmaMemory> Device for Netvsc<C, M> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, C, M>
    where
        Self: 'a;

    fn receive(&mut self, _ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.core.up {
            return None;
        }
        // Hand out queued frames first; read the ring when the queue is empty, so frames are
        // not read (and dropped) faster than smoltcp takes them.
        if self.rxq.count == 0 {
            if let Err(e) = self.core.maybe_drain(&mut self.rxq) {
                warn_once(&e, "receive");
            }
        }
        if self.rxq.count == 0 {
            return None;
        }
        if !self.core.tx_available() {
            // smoltcp may answer (ARP, TCP ACK) on the same token pair: only hand out a
            // pair when a transmit slot is free; frames stay queued until then.
            let _ = self.core.drain(&mut self.rxq);
            if !self.core.tx_available() {
                return None;
            }
        }
        Some((
            RxToken { rxq: &mut self.rxq },
            TxToken {
                core: &mut self.core,
            },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<Self::TxToken<'_>> {
        if !self.core.up {
            return None;
        }
        if !self.core.tx_available() {
            // Reap completions by polling (works with interrupts off).
            if let Err(e) = self.core.drain(&mut self.rxq) {
                warn_once(&e, "transmit reap");
            }
            if !self.core.tx_available() {
                return None;
            }
        }
        Some(TxToken {
            core: &mut self.core,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETH_FRAME_MTU;
        caps.max_burst_size = Some(1);
        caps
    }
}
