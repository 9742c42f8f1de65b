//! The acker thread: sends the acks the writer hands over after each commit, with sendmmsg.

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

pub(super) struct Acker {
    pub(super) key: Option<Key>,
    pub(super) counters: Arc<Counters>,
    pub(super) sock: StdUdpSocket,
}

impl Acker {
    /// Sends every batch of acks the writer hands over, until the writer is gone.
    pub(super) fn run(self, rx: mpsc::Receiver<Vec<Ack>>) {
        let mut buf: Vec<u8> = Vec::new();
        let mut lens: Vec<(usize, SocketAddr)> = Vec::new();
        let mut frame = [0u8; wire::MAX_DATAGRAM];
        while let Ok(mut acks) = rx.recv() {
            // Whatever else is already waiting goes out in the same sendmmsg calls.
            while let Ok(more) = rx.try_recv() {
                acks.extend(more);
            }
            buf.clear();
            lens.clear();
            for a in &acks {
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
}
