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
        // Stored, replaced or a duplicate: the held one reports at least as many steps.
        let held = if status == FOLLOWUP_STORED {
            crate::followup_view::reported(&p.raw)
        } else {
            0
        };
        acks.push(Ack {
            key: p.key,
            status: AckStatus::Other(status),
            peer: p.peer,
            followup_reported: u8::try_from(held).unwrap_or(u8::MAX),
        });
    }
    timed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{after_seal, followup_frame, sealed};
    use crate::store::Sync;
    use capture::panic::Outcome;

    /// The two follow-ups of one crash: the ship step's is acked saying 4 steps are held,
    /// the end step's 5 (so the appliance does not take a late ack of the first for the
    /// second's); the step metric gets each step once.
    #[test]
    fn the_acks_say_how_complete_the_held_followup_is_and_the_metric_counts_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
        let mut r = capture::testutil::sample_record(5);
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let n = sealed(&mut r, "10.0.0.5:4000", 1);
        let key = n.key;
        store
            .commit_batch(std::slice::from_ref(&n), &[], &[], &[])
            .unwrap();
        let pending = |done: usize| {
            let steps = after_seal(|i, _| {
                let outcome = if i < done {
                    Outcome::Done
                } else {
                    Outcome::Pending
                };
                (outcome, 3)
            });
            let frame = followup_frame(&key, &steps);
            let Ok(capture::wire::Repr::Followup(f)) = capture::wire::parse(&frame, None) else {
                panic!("the frame parses as a follow-up");
            };
            Pending::new(&f, &frame, peer)
        };
        let (first, second) = (pending(4), pending(5));
        let mut acks = Vec::new();
        let t1 = store_all(&mut store, std::slice::from_ref(&first), &mut acks);
        let t2 = store_all(&mut store, std::slice::from_ref(&second), &mut acks);
        // The first again, late: a duplicate, acked as the first (it holds more).
        let t3 = store_all(&mut store, std::slice::from_ref(&first), &mut acks);
        let said: Vec<(AckStatus, u8)> = acks
            .iter()
            .map(|a| (a.status, a.followup_reported))
            .collect();
        let stored = AckStatus::Other(FOLLOWUP_STORED);
        assert_eq!(said, [(stored, 4), (stored, 5), (stored, 4)]);
        let names = |t: &[StepView]| t.iter().map(|s| s.step.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&t1),
            ["screen-flush", "vmbus-unload", "arch-cleanup", "ship"]
        );
        assert_eq!(names(&t2), ["crash-registers"]);
        assert!(t3.is_empty());
    }
}
