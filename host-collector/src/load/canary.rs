//! One simulated canary: heartbeats for a while (optionally), then its records one at a time
//! through a real [`capture::sender::Sender`], with the run's seeded fault injection on both
//! directions. A future of [`super::exec`]'s loop.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capture::record::CrashRecord;
use capture::sender::{SendState, Sender, SenderConfig};
use capture::wire::{self, Repr};

use super::exec::Reactor;
use super::poller::wait_writable;
use super::template::Template;
use super::{CanaryResult, LoadConfig, LoadError, Rng};

/// What all canaries of a run share.
pub(super) struct Env<'a> {
    pub(super) cfg: &'a LoadConfig,
    pub(super) rx: &'a Reactor,
    pub(super) start: Instant,
    /// The run's deadline (checked in `validate`).
    pub(super) end: Instant,
    /// Records acked so far, all canaries.
    pub(super) acked: &'a Cell<u64>,
}

/// The record's message: what `write!(m, "load: simulated panic {seq} of canary {index} (loss
/// {loss})")` writes, with the part after the sequence number formatted once per canary.
pub(super) struct Message {
    tail: String,
}

impl Message {
    pub(super) fn new(index: u32, loss: f64) -> Message {
        Message {
            tail: format!(" of canary {index} (loss {loss})"),
        }
    }

    /// Sets `rec.message` for record `seq`.
    pub(super) fn write(&self, rec: &mut CrashRecord, seq: u32) {
        let m = &mut rec.message;
        m.clear();
        let _ = m.write_str(MESSAGE_HEAD);
        let _ = write!(m, "{seq}");
        let _ = m.write_str(&self.tail);
    }

    /// Writes record `seq` with this message and `uptime_us` through `t` to `out`, without
    /// building the message in a record. False (nothing written) if the message would not fit
    /// a record whole: then [`Message::write`] and an encode, which cut it.
    pub(super) fn render(&self, t: &Template, seq: u32, uptime_us: u64, out: &mut Vec<u8>) -> bool {
        let mut digits = [0u8; 10];
        let parts = [
            MESSAGE_HEAD.as_bytes(),
            decimal(seq, &mut digits),
            self.tail.as_bytes(),
        ];
        if parts.iter().map(|p| p.len()).sum::<usize>() > capture::record::MESSAGE_CAP {
            return false;
        }
        t.render_parts(seq, uptime_us, &parts, out);
        true
    }
}

const MESSAGE_HEAD: &str = "load: simulated panic ";

/// `v` in decimal, as `{v}` writes it.
fn decimal(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Fault injection on the way out, then the socket.
struct Out<'s> {
    sock: &'s UdpSocket,
    end: Instant,
    /// A datagram held back, sent after the next one (reorder).
    held: Option<Vec<u8>>,
}

impl Out<'_> {
    /// Drops, duplicates or holds back `d` as the run's probabilities say, and sends the rest.
    fn emit(&mut self, d: &[u8], cfg: &LoadConfig, rng: &mut Rng, res: &mut CanaryResult) {
        if rng.chance(cfg.loss) {
            res.dropped_out += 1;
            return;
        }
        if self.held.is_none() && rng.chance(cfg.reorder) {
            self.held = Some(d.to_vec());
            return;
        }
        send(self.sock, d, self.end);
        res.datagrams_sent += 1;
        if rng.chance(cfg.dup) {
            send(self.sock, d, self.end);
            res.datagrams_sent += 1;
        }
        if let Some(h) = self.held.take() {
            send(self.sock, &h, self.end);
            res.datagrams_sent += 1;
        }
    }
}

/// Sends on the connected socket. A refused port (collector not up yet) shows up as an error
/// on a later call and is ignored: the sender's retransmits cover it. A full send buffer is
/// waited out (until the run's deadline).
fn send(s: &UdpSocket, d: &[u8], end: Instant) {
    loop {
        match s.send(d) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                wait_writable(s, left.min(Duration::from_millis(100)));
            }
            _ => return,
        }
    }
}

/// Milliseconds from `start` to `t`: the senders' clock.
fn ms(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_millis() as u64
}

/// Canary `index`: `records` records (after heartbeats, if the run has them) on `sock`.
pub(super) async fn canary(
    env: &Env<'_>,
    index: u32,
    boot_id: [u8; 16],
    records: u64,
    sock: Rc<UdpSocket>,
) -> Result<CanaryResult, LoadError> {
    let (cfg, rx, start, end) = (env.cfg, env.rx, env.start, env.end);
    let mut rng = Rng::new(cfg.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ u64::from(index));
    let mut res = CanaryResult {
        latencies_us: Vec::with_capacity(records as usize),
        ..CanaryResult::default()
    };
    let mut out = Out {
        sock: &sock,
        end,
        held: None,
    };
    // Only for records the template cannot write.
    let mut encbuf = Vec::new();
    let mut rec = capture::testutil::sample_record(0);
    rec.boot_id = boot_id;
    let message = Message::new(index, cfg.loss);
    // The same bytes as `rec.encode`, cheaper (checked against it; `None`: encode each).
    let template = Template::new(&rec);
    let mut recbuf = Vec::with_capacity(capture::record::MAX_ENCODED_LEN);
    if let Some(every) = cfg.heartbeat_every {
        heartbeats(env, boot_id, every, &sock, &mut rng, &mut res).await;
    }
    // `validate` bounds a canary's share to u32::MAX.
    let records = u32::try_from(records).unwrap_or(u32::MAX);
    // The simulated panic of each record: when the previous one ended (one clock read).
    let mut t0 = rx.refresh();
    for seq in 1..=records {
        let Some(left) = end.checked_duration_since(t0).filter(|d| !d.is_zero()) else {
            // The run's deadline passed: this record and the rest are lost.
            res.lost += u64::from(records - seq + 1);
            break;
        };
        let left = cfg.record_deadline.map_or(left, |d| d.min(left));
        let scfg = SenderConfig {
            initial_rto_ms: cfg.initial_rto_ms,
            max_rto_ms: cfg.max_rto_ms,
            deadline_ms: left.as_millis().try_into().unwrap_or(u64::MAX).max(1),
        };
        let uptime_us = t0.duration_since(start).as_micros() as u64;
        let bytes: &[u8] = match &template {
            Some(t) if message.render(t, seq, uptime_us, &mut recbuf) => &recbuf,
            _ => {
                rec.seq = seq;
                message.write(&mut rec, seq);
                rec.uptime_us = uptime_us;
                encbuf.resize(capture::record::MAX_ENCODED_LEN, 0);
                rec.encode(&mut encbuf).map_err(LoadError::Encode)?
            }
        };
        let mut sender = Sender::new(scfg, boot_id, seq, bytes, cfg.key.as_ref(), ms(start, t0))
            .map_err(LoadError::Encode)?;
        if let Some((major, minor)) = cfg.schema {
            sender = sender.with_schema(major, minor);
        }
        res.sent += 1;
        let mut now = t0;
        loop {
            let state = sender.poll(ms(start, now), &mut |d| {
                out.emit(d, cfg, &mut rng, &mut res);
            });
            let next_ms = match state {
                SendState::Waiting { next_ms } => next_ms,
                SendState::Acked => {
                    let acked_at = rx.refresh();
                    res.acked += 1;
                    if sender.ack_status() == Some(wire::AckStatus::Duplicate) {
                        res.acked_duplicate += 1;
                    }
                    let us = acked_at.saturating_duration_since(t0).as_micros();
                    res.latencies_us.push(us.min(u128::from(u32::MAX)) as u32);
                    env.acked.set(env.acked.get() + 1);
                    t0 = acked_at;
                    break;
                }
                SendState::Rejected => {
                    res.rejected += 1;
                    t0 = rx.refresh();
                    break;
                }
                SendState::TimedOut => {
                    res.lost += 1;
                    t0 = rx.refresh();
                    break;
                }
            };
            if next_ms <= ms(start, now) {
                now = rx.refresh();
                continue;
            }
            if let Some(d) = rx
                .recv_or_sleep(start + Duration::from_millis(next_ms))
                .await
            {
                if rng.chance(cfg.loss) {
                    res.dropped_in += 1;
                } else {
                    sender.handle(&d);
                }
                rx.recycle(d);
            }
            now = rx.now();
        }
        res.retransmit_rounds += u64::from(sender.stats().retransmit_rounds);
    }
    Ok(res)
}

/// Heartbeats every `every` for `cfg.heartbeat_for` (or until the run's deadline), with the
/// run's outgoing loss applied.
pub(super) async fn heartbeats(
    env: &Env<'_>,
    boot_id: [u8; 16],
    every: Duration,
    sock: &UdpSocket,
    rng: &mut Rng,
    res: &mut CanaryResult,
) {
    let (cfg, rx) = (env.cfg, env.rx);
    let stop = (rx.refresh() + cfg.heartbeat_for).min(env.end);
    let mut frame = [0u8; wire::MAX_DATAGRAM];
    let mut seq = 0u32;
    let mut next = rx.now();
    while rx.refresh() < stop {
        // Stamped with the tick it belongs to, like a canary's periodic timer: when the loop
        // runs late on a busy machine the uptimes still advance by `every`, so the collector
        // measures the interval the canary keeps, not the scheduling jitter.
        let uptime = next.saturating_duration_since(env.start);
        let hb = Repr::Heartbeat(wire::HeartbeatRepr {
            boot_id,
            seq,
            uptime_ms: uptime.as_millis() as u64,
            arch: capture::record::Arch::X86_64,
        });
        if let Ok(n) = hb.emit(cfg.key.as_ref(), &mut frame) {
            if rng.chance(cfg.loss) {
                res.dropped_out += 1;
            } else {
                send(sock, &frame[..n], env.end);
                res.heartbeats_sent += 1;
            }
        }
        seq = seq.wrapping_add(1);
        next += every;
        rx.sleep_until(next).await;
    }
}
