//! Offers, GPADLs and channels: REQUESTOFFERS and the offer table, GPADL create/teardown,
//! OPENCHANNEL/CLOSECHANNEL and relid release (ref §4.4-§4.6; Linux `channel_mgmt.c`,
//! `channel.c`).

use zerocopy::IntoBytes;

use super::{Connection, GpadlId, OpenOptions, Out, VmbusError};
use crate::channel::Channel;
use crate::guid::Guid;
use crate::msg::{self, HostMessage, MessageHeader, MessageType, Offer};
use crate::platform::{Clock, Hypervisor, PageAlloc, PhysPages};
use crate::ring::{GpaRange, Pfns, RingError};

impl<'s> Connection<'s> {
    pub(super) fn offer_index(&self, relid: u32) -> Option<usize> {
        self.offers[..self.offer_count]
            .iter()
            .position(|o| o.child_relid == relid)
    }

    pub(super) fn release_relid(&self, hv: &dyn Hypervisor, clock: &dyn Clock, relid: u32) {
        let m = msg::RelidMessage {
            header: MessageHeader::new(MessageType::RELID_RELEASED),
            child_relid: relid,
        };
        if let Err(e) = self.post(hv, clock, m.as_bytes()) {
            log::warn!("vmbus: RELID_RELEASED for {relid} failed: {e}");
        }
    }

    /// REQUESTOFFERS, then collect offers until ALLOFFERS_DELIVERED (ref §4.6).
    pub fn request_offers(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
    ) -> Result<&[Offer], VmbusError> {
        let m = MessageHeader::new(MessageType::REQUESTOFFERS);
        self.post(hv, clock, m.as_bytes())?;
        self.wait_for(hv, clock, "ALLOFFERS_DELIVERED", |_, m| {
            (m == HostMessage::AllOffersDelivered).then_some(())
        })?;
        Ok(self.offers())
    }

    /// Every offer received (rescinded ones included; see [`Connection::is_rescinded`]).
    pub fn offers(&self) -> &[Offer] {
        &self.offers[..self.offer_count]
    }

    pub fn is_rescinded(&self, relid: u32) -> bool {
        self.offer_index(relid).is_some_and(|i| self.rescinded[i])
    }

    /// The first live primary offer of a device class (sub-channel offers, with a non-zero
    /// `sub_channel_index`, belong to their primary: Linux `vmbus_process_offer`).
    pub fn find_offer(&self, class: &Guid) -> Option<&Offer> {
        self.offers()
            .iter()
            .enumerate()
            .find(|(i, o)| o.if_type == *class && o.sub_channel_index == 0 && !self.rescinded[*i])
            .map(|(_, o)| o)
    }

    /// GPADL_HEADER + GPADL_BODY* → GPADL_CREATED (ref §4.4). Ranges are sent as one stream of
    /// 64-bit words (range header word, then PFNs), 27 words in the header and 28 per body.
    pub fn create_gpadl(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        relid: u32,
        ranges: &[GpaRange<'_>],
    ) -> Result<GpadlId, VmbusError> {
        let total: usize = ranges.iter().map(|r| r.words()).sum();
        let buflen = u16::try_from(total * 8).map_err(|_| VmbusError::GpadlTooLarge(total * 8))?;
        let count =
            u16::try_from(ranges.len()).map_err(|_| VmbusError::GpadlTooLarge(total * 8))?;
        let gpadl = self.next_gpadl;
        self.next_gpadl = self.next_gpadl.wrapping_add(1).max(1);
        let mut words = ranges
            .iter()
            .flat_map(|r| (0..r.words()).map(move |i| r.word(i).unwrap_or(0)));
        let h = msg::GpadlHeader {
            header: MessageHeader::new(MessageType::GPADL_HEADER),
            child_relid: relid,
            gpadl,
            range_buflen: buflen,
            rangecount: count,
        };
        let mut out = Out::of(h.as_bytes());
        for w in words.by_ref().take(msg::GPADL_HEADER_WORDS) {
            out.push(&w.to_le_bytes());
        }
        self.post(hv, clock, out.bytes())?;
        let mut sent = total.min(msg::GPADL_HEADER_WORDS);
        while sent < total {
            let b = msg::GpadlBody {
                header: MessageHeader::new(MessageType::GPADL_BODY),
                msgnumber: 0,
                gpadl,
            };
            let mut out = Out::of(b.as_bytes());
            for w in words.by_ref().take(msg::GPADL_BODY_WORDS) {
                out.push(&w.to_le_bytes());
                sent += 1;
            }
            self.post(hv, clock, out.bytes())?;
        }
        let status = self.wait_for(hv, clock, "GPADL_CREATED", |_, m| match m {
            HostMessage::GpadlCreated {
                child_relid,
                gpadl: g,
                status,
            } if child_relid == relid && g == gpadl => Some(Ok(status)),
            HostMessage::Rescind { child_relid } if child_relid == relid => {
                Some(Err(VmbusError::Rescinded(relid)))
            }
            _ => None,
        })??;
        if status != 0 {
            return Err(VmbusError::GpadlFailed(status));
        }
        Ok(GpadlId(gpadl))
    }

    /// GPADL_TEARDOWN → GPADL_TORNDOWN.
    pub fn teardown_gpadl(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        relid: u32,
        gpadl: GpadlId,
    ) -> Result<(), VmbusError> {
        let m = msg::GpadlTeardown {
            header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
            child_relid: relid,
            gpadl: gpadl.0,
        };
        self.post(hv, clock, m.as_bytes())?;
        self.wait_for(hv, clock, "GPADL_TORNDOWN", |_, m| match m {
            HostMessage::GpadlTorndown { gpadl: g } if g == gpadl.0 => Some(()),
            _ => None,
        })
    }

    /// Allocate both rings, create one GPADL over them (outbound first), OPENCHANNEL →
    /// OPENCHANNEL_RESULT (ref §4.4, §4.6). A rescind while waiting gives `Rescinded`.
    pub fn open_channel(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        alloc: &dyn PageAlloc,
        relid: u32,
        opts: &OpenOptions,
    ) -> Result<Channel, VmbusError> {
        let idx = self
            .offer_index(relid)
            .ok_or(VmbusError::UnknownRelid(relid))?;
        if self.rescinded[idx] {
            return Err(VmbusError::Rescinded(relid));
        }
        let offer = self.offers[idx];
        if opts.send_ring_pages < 2 || opts.recv_ring_pages < 2 {
            return Err(VmbusError::Ring(RingError::BadSize(
                opts.send_ring_pages.min(opts.recv_ring_pages) * crate::PAGE_SIZE,
            )));
        }
        let total = opts.send_ring_pages + opts.recv_ring_pages;
        let pages = alloc.alloc_pages(total).ok_or(VmbusError::OutOfPages)?;
        let range = GpaRange {
            byte_count: (total * crate::PAGE_SIZE) as u32,
            byte_offset: 0,
            pfns: Pfns::Contiguous {
                first: pages.pfn(),
                count: total,
            },
        };
        let gpadl = match self.create_gpadl(hv, clock, relid, &[range]) {
            Ok(g) => g,
            Err(e) => {
                alloc.free_pages(pages);
                return Err(e);
            }
        };
        let m = msg::OpenChannel {
            header: MessageHeader::new(MessageType::OPENCHANNEL),
            child_relid: relid,
            // Linux uses the relid as the open id.
            openid: relid,
            ringbuffer_gpadlhandle: gpadl.0,
            target_vp: opts.target_vp.unwrap_or(self.target_vp),
            downstream_ringbuffer_pageoffset: opts.send_ring_pages as u32,
            userdata: opts.user_data,
        };
        self.post(hv, clock, m.as_bytes())?;
        let status = self.wait_for(hv, clock, "OPENCHANNEL_RESULT", |_, m| match m {
            HostMessage::OpenResult {
                child_relid,
                openid,
                status,
            } if child_relid == relid && openid == relid => Some(Ok(status)),
            HostMessage::Rescind { child_relid } if child_relid == relid => {
                Some(Err(VmbusError::Rescinded(relid)))
            }
            _ => None,
        });
        match status {
            Ok(Ok(0)) => {}
            Ok(Ok(status)) => {
                let _ = self.teardown_gpadl(hv, clock, relid, gpadl);
                alloc.free_pages(pages);
                return Err(VmbusError::OpenFailed { relid, status });
            }
            Ok(Err(e)) | Err(e) => {
                // A rescind was already answered with RELID_RELEASED when it arrived (the
                // channel was not open yet). On a timeout the host may still use the pages:
                // leak them rather than reuse them.
                return Err(e);
            }
        }
        self.opened[idx] = true;
        let send_half = self.pages.va().wrapping_add(crate::PAGE_SIZE / 2);
        // SAFETY: `pages` are the ring pages just allocated, owned by the channel from now on;
        // the interrupt page lives as long as the connection's pages (never freed).
        let ch = unsafe {
            Channel::new(
                relid,
                offer.connection_id,
                offer.is_dedicated_interrupt,
                gpadl,
                pages,
                opts.send_ring_pages,
                send_half,
            )
        }?;
        Ok(ch)
    }

    /// CLOSECHANNEL, then GPADL teardown (ref §4.6). For a rescinded channel only
    /// RELID_RELEASED is sent. Returns the ring pages for the caller to free.
    pub fn close_channel(
        &mut self,
        hv: &dyn Hypervisor,
        clock: &dyn Clock,
        ch: Channel,
    ) -> Result<PhysPages, VmbusError> {
        let relid = ch.relid;
        if let Some(i) = self.offer_index(relid) {
            self.opened[i] = false;
            if self.rescinded[i] {
                self.release_relid(hv, clock, relid);
                return Ok(ch.pages);
            }
        }
        let m = msg::RelidMessage {
            header: MessageHeader::new(MessageType::CLOSECHANNEL),
            child_relid: relid,
        };
        self.post(hv, clock, m.as_bytes())?;
        self.teardown_gpadl(hv, clock, relid, ch.gpadl)?;
        Ok(ch.pages)
    }
}
