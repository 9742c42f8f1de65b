//! Follow-up frames (`capture::followup`): the outcomes of the panic steps that ran after the
//! record was sealed. The receiver queues each one for the writer (which owns the store);
//! the writer attaches it to the stored record (`Store::put_followup`, committed before it
//! returns) and acks it with the follow-up statuses, after the batch's records are committed
//! (a record and its follow-up in one batch: the record goes first).
//!
//! The appliance sends a follow-up when its record is acked (crash registers and end still
//! pending: a host may stop the VM at the crash registers) and the more complete one from
//! the end step; the store keeps the one reporting more steps (`FollowupOutcome::Replaced`).
//!
//! Acks: `FOLLOWUP_STORED` for a follow-up stored now, replacing a less complete one, or
//! held already (one reporting as many steps stays: a duplicate); `FOLLOWUP_NO_RECORD`
//! when no record with the key is stored. The appliance sends a
//! follow-up only after its record was acked, i.e. committed, so a missing record is pruned
//! or was stored by another fleet: retransmitting will not change that.
use std::net::SocketAddr;

use capture::followup::{FOLLOWUP_NO_RECORD, FOLLOWUP_STORED};
use capture::wire::AckStatus;
use tracing::warn;

use super::Ack;
use crate::store::{FollowupOutcome, RecordKey, StepView, Store};

/// A follow-up on its way to the writer.
pub(super) struct Pending {
    pub(super) key: RecordKey,
    /// The whole datagram, as received (the store keeps it as is).
    pub(super) raw: Vec<u8>,
    pub(super) peer: SocketAddr,
    pub(super) received_unix_ms: i64,
}

impl Pending {
    /// A checked follow-up frame from `peer`.
    pub(super) fn new(f: &capture::followup::FollowupRepr, raw: &[u8], peer: SocketAddr) -> Self {
        Pending {
            key: RecordKey {
                boot_id: f.boot_id,
                seq: f.seq,
                record_crc: f.record_crc,
            },
            raw: raw.to_vec(),
            peer,
            received_unix_ms: crate::util::now_us() / 1000,
        }
    }

    /// Queue budget bytes.
    pub(super) fn cost(&self) -> usize {
        self.raw.len() + 128
    }
}

/// Stores each follow-up and pushes its ack. A store error leaves it unacked (the appliance
/// retransmits until its deadline). Returns the timed steps of the follow-ups stored now
/// (for the step metrics: a record sealed at the panic screen carries freeze only).
pub(super) fn store_all(
    store: &mut Store,
    pending: &[Pending],
    acks: &mut Vec<Ack>,
) -> Vec<StepView> {
    let mut timed = Vec::new();
    for p in pending {
        let status = match store.put_followup(&p.key, &p.raw, p.received_unix_ms) {
            // The steps it reports that the store did not have: all of them, or those past
            // the replaced one's (the steps run in order, so it reported a prefix of them).
            Ok(o @ (FollowupOutcome::Stored | FollowupOutcome::Replaced { .. })) => {
                let known = match o {
                    FollowupOutcome::Replaced { reported_before } => reported_before,
                    _ => 0,
                };
                if let Some(f) = crate::followup_view::parse_stored(&p.raw) {
                    timed.extend(
                        f.steps()
                            .iter()
                            .filter(|s| s.outcome != capture::panic::Outcome::Pending)
                            .skip(known)
                            .map(|s| StepView {
                                step: s.step.name().to_string(),
                                outcome: s.outcome.to_string(),
                                elapsed_us: s.elapsed_us,
                            }),
                    );
                }
                FOLLOWUP_STORED
            }
            // It holds one reporting as much: acked as the follow-up status (the appliance
            // stops resending); nothing changed.
            Ok(FollowupOutcome::Duplicate) => FOLLOWUP_STORED,
            Ok(FollowupOutcome::NoSuchRecord) => FOLLOWUP_NO_RECORD,
            Err(e) => {
                warn!(peer = %p.peer, "storing a follow-up failed: {e}");
                continue;
            }
        };
        acks.push(Ack {
            key: p.key,
            status: AckStatus::Other(status),
            peer: p.peer,
        });
    }
    timed
}
