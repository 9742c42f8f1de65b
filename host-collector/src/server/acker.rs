//! Sending acks, with sendmmsg, after the commit that holds their records ([`AckOut`]):
//! - SQLite: the writer thread sends its batch's acks itself, right after the commit. A
//!   thread wake-up less per batch, and the next batch gathers while they go out:
//!   `AB="OLD NEW" scripts/bench-collector` measured 0.93-1.20x (mean 1.07) at 100 canaries
//!   and 1.09-1.15x at 1,000 against an acker thread.
//! - PostgreSQL: an acker thread sends them, so that the writer's next statement is on its way
//!   to the server while they go out (sending them on the writer measured 34-41k records/s
//!   against 48-50k, `bench-collector --db … --no-sqlite`, alternating).

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::mpsc;
use std::sync::Arc;

use capture::wire::{self, AckRepr, AckStatus, Repr};
use capture::{Key, RecordId};
use tracing::error;

use super::Counters;
use crate::mmsg;
use crate::store::RecordKey;

/// One ack to send: the record, its status, and where it came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ack {
    pub(super) key: RecordKey,
    pub(super) status: AckStatus,
    pub(super) peer: SocketAddr,
    /// A follow-up's ack: steps the follow-up held reports, at least (0 for records).
    pub(super) followup_reported: u8,
}

/// Where a committed batch's acks go.
#[derive(Clone)]
pub(super) enum AckOut {
    /// Sent by the committing thread itself.
    Inline(Arc<Acker>),
    /// Handed to the acker thread ([`Acker::run`]).
    Thread(mpsc::Sender<Vec<Ack>>),
}

impl AckOut {
    /// Sends (or hands over) `acks`, after the commit that holds their records.
    pub(super) fn send(&self, acks: Vec<Ack>) {
        match self {
            AckOut::Inline(a) => a.send(&acks),
            // Fails only when the acker is gone, i.e. at exit.
            AckOut::Thread(t) => {
                let _ = t.send(acks);
            }
        }
    }
}

/// Sends acks on the collector's socket (shared by every committing thread: a UDP send
/// needs no lock).
pub(super) struct Acker {
    pub(super) key: Option<Key>,
    pub(super) counters: Arc<Counters>,
    pub(super) sock: StdUdpSocket,
}

impl Acker {
    /// The acker thread: sends what the writer hands over until the writer is gone, whatever
    /// is already waiting in the same sendmmsg calls.
    pub(super) fn run(self, rx: mpsc::Receiver<Vec<Ack>>) {
        while let Ok(mut acks) = rx.recv() {
            while let Ok(more) = rx.try_recv() {
                acks.extend(more);
            }
            self.send(&acks);
        }
    }

    /// Sends `acks` (after the commit that holds their records) and counts what went out.
    pub(super) fn send(&self, acks: &[Ack]) {
        let mut frame = [0u8; wire::MAX_DATAGRAM];
        let mut buf: Vec<u8> = Vec::with_capacity(acks.len() * 64);
        let mut lens: Vec<(usize, SocketAddr)> = Vec::with_capacity(acks.len());
        for a in acks {
            let id = RecordId {
                boot_id: a.key.boot_id,
                seq: a.key.seq,
                record_crc: a.key.record_crc,
            };
            let ack = AckRepr {
                followup_reported: a.followup_reported,
                ..AckRepr::for_record(&id, a.status)
            };
            match Repr::Ack(ack).emit(self.key.as_ref(), &mut frame) {
                Ok(n) => {
                    buf.extend_from_slice(&frame[..n]);
                    lens.push((n, a.peer));
                }
                Err(e) => error!("cannot build ack: {e}"),
            }
        }
        let mut off = 0;
        let msgs: Vec<(&[u8], SocketAddr)> = lens
            .iter()
            .map(|&(n, peer)| {
                let d = &buf[off..off + n];
                off += n;
                (d, peer)
            })
            .collect();
        let sent = mmsg::send_all(&self.sock, &msgs);
        Counters::add(&self.counters.acks_sent, sent as u64);
    }
}
