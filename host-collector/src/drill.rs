//! `host-collector drill`: make a canary panic on purpose.
//!
//! Without a key one Drill frame is sent (the canary acts on it only with `drill=insecure`).
//! With a key the drill is a challenge-response (`capture/API.md`, "Drills"): the first
//! Drill carries no challenge, the canary answers with a tagged Challenge (its boot id and a
//! fresh counter), and the Drill is sent again carrying it. An older canary acts on the first
//! frame and sends no challenge.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use capture::wire::{self, Challenge, DrillRepr, Repr, MAX_DATAGRAM};
use capture::Key;

/// How long to wait for a challenge before sending the request again.
const RESEND: Duration = Duration::from_secs(1);

/// Why a drill could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The local socket.
    #[error("drill socket: {0}")]
    Io(#[from] std::io::Error),
    /// Building a frame (cannot happen with the fixed sizes used here).
    #[error("building the drill frame: {0}")]
    Wire(#[from] wire::WireError),
}

/// How a drill went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillOutcome {
    /// Unkeyed: the single frame was sent.
    Sent,
    /// Keyed: the canary's challenge was answered.
    Answered(Challenge),
    /// Keyed: no challenge came back in time (an older canary acts on the first frame; a
    /// current one was not reached, has another key, or has drills off).
    NoChallenge,
}

fn emit(d: DrillRepr, key: Option<&Key>) -> Result<Vec<u8>, DrillError> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = Repr::Drill(d).emit(key, &mut buf)?;
    Ok(buf[..n].to_vec())
}

/// Sends a drill with `nonce` and `delay_ms` to `addr`. With a key, waits up to `wait` for
/// the canary's challenge (resending the request every second while none came back) and
/// answers the first one. A request resent while its challenge was still on the way makes
/// the canary issue a newer one, and the answer to the older one is then refused: run the
/// drill again.
pub fn send(
    addr: SocketAddr,
    key: Option<&Key>,
    nonce: u64,
    delay_ms: u32,
    wait: Duration,
) -> Result<DrillOutcome, DrillError> {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind)?;
    let request = DrillRepr {
        nonce,
        delay_ms,
        challenge: None,
    };
    sock.send_to(&emit(request, key)?, addr)?;
    let Some(key) = key else {
        return Ok(DrillOutcome::Sent);
    };
    let t0 = Instant::now();
    let mut resend_at = t0 + RESEND;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        let end = t0 + wait;
        if now >= end {
            return Ok(DrillOutcome::NoChallenge);
        }
        if now >= resend_at {
            sock.send_to(&emit(request, Some(key))?, addr)?;
            resend_at = now + RESEND;
        }
        let left = end.min(resend_at).saturating_duration_since(now);
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // An ICMP port unreachable from an earlier send: keep waiting.
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        if from != addr {
            continue;
        }
        // Only a tagged challenge for our request counts.
        if let Ok(Repr::Challenge(c)) = wire::parse(&buf[..n], Some(key)) {
            if c.nonce == nonce {
                let answer = DrillRepr {
                    challenge: Some(c.challenge),
                    ..request
                };
                sock.send_to(&emit(answer, Some(key))?, addr)?;
                return Ok(DrillOutcome::Answered(c.challenge));
            }
        }
    }
}
