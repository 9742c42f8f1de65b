//! Network peers under QEMU (issue 11 item 5), for both arches: a forged ack from another
//! endpoint does not end the ship step, and drills without the key (or without a challenge)
//! do nothing.
//!
//! QEMU user networking forwards the canary's datagrams to the host from an ephemeral port
//! P; anything sent to 127.0.0.1:P reaches the canary's collector socket from
//! 10.0.2.2:<sender's port>. So a test socket on another port than the collector's is a
//! peer on another endpoint.

use super::*;
use capture::wire::{self, AckRepr, AckStatus, DrillRepr, Repr};
use capture::Key;

/// What the fake collector saw.
#[derive(Debug, Default)]
pub struct ForgeryReport {
    /// Chunk datagrams before the forged ack was sent.
    pub chunks_before: usize,
    /// Chunk datagrams after it (retransmissions).
    pub chunks_after: usize,
    /// Whether the real ack was sent.
    pub acked: bool,
}

/// The test acts as the collector on `sock`: at the first chunk it sends a well-formed ack
/// for the record (boot id, seq and CRC copied from the chunk) from `forger`, another port;
/// after two more chunks (the ship step went on retransmitting) it acks from the collector's
/// own socket. Runs until that, or until `done` (the QEMU run ended: it may wait for its
/// slot behind other tests first, so no timeout of its own).
fn forging_collector(
    sock: UdpSocket,
    forger: UdpSocket,
    done: &std::sync::atomic::AtomicBool,
) -> ForgeryReport {
    let mut r = ForgeryReport::default();
    let mut forged = false;
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(Repr::Chunk(c)) = wire::parse(&buf[..n], None) else {
            continue; // heartbeats
        };
        let mut ack = [0u8; 64];
        let m = Repr::Ack(AckRepr::for_record(&c.id(), AckStatus::Stored))
            .emit(None, &mut ack)
            .unwrap();
        if !forged {
            r.chunks_before += 1;
            forger.send_to(&ack[..m], from).unwrap();
            forged = true;
            continue;
        }
        r.chunks_after += 1;
        if r.chunks_after >= 2 && !r.acked {
            sock.send_to(&ack[..m], from).unwrap();
            r.acked = true;
            break;
        }
    }
    r
}

/// A forged ack from another endpoint (same host, other port) does not stop the ship step:
/// the record keeps being retransmitted, and the collector's own ack ends it.
pub fn forged_ack_from_another_endpoint(arch: &str) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forger_port = forger.local_addr().unwrap().port();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let collector = std::thread::spawn(move || forging_collector(sock, forger, &d));
    let run = run_canary(
        arch,
        "direct",
        port,
        &[
            "--panic-after",
            "0.2",
            "--append",
            "heartbeat_ms=0 deadline_ms=20000",
        ],
        120,
        || {},
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = collector.join().unwrap();
    assert!(
        report.chunks_before >= 1 && report.acked,
        "{report:?}\nserial:\n{}",
        run.serial
    );
    assert!(
        report.chunks_after >= 2,
        "the forged ack stopped the retransmissions: {report:?}\nserial:\n{}",
        run.serial
    );
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    // The forged ack reached the canary, and was dropped for its source.
    assert!(
        run.serial.contains(&format!(
            "net: dropped a datagram from 10.0.2.2:{forger_port} on the collector socket"
        )),
        "serial:\n{}",
        run.serial
    );
}

const HEX: &str = "5eed5eed00112233445566778899aabbccddeeff0123456789abcdef01234567";

fn drill_frame(key: Option<&Key>, v1: bool) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = Repr::Drill(DrillRepr {
        nonce: 0xbad0_d211,
        delay_ms: 0,
        challenge: None,
    })
    .emit(key, &mut buf)
    .unwrap();
    let mut f = buf[..n].to_vec();
    if v1 {
        // A collector before the challenge wrote a 16-byte Drill header.
        f.truncate(8 + wire::DRILL_V1_HEADER_LEN);
        f[wire::field::HEADER_LEN] = wire::DRILL_V1_HEADER_LEN as u8;
        f.extend_from_slice(&[0; 16 + 4]);
        if let Some(k) = key {
            f[wire::field::FLAGS] = wire::FLAG_AUTH;
            let tag = k.tag(&f[..8 + wire::DRILL_V1_HEADER_LEN]);
            f[8 + wire::DRILL_V1_HEADER_LEN..8 + wire::DRILL_V1_HEADER_LEN + 16]
                .copy_from_slice(&tag);
        } else {
            f.truncate(f.len() - 16);
        }
        wire::Frame::new_unchecked(&mut f[..]).fill_crc();
    }
    f
}

/// With a key: an unauthenticated drill, one under another key, and a correctly keyed drill
/// without a challenge (what collectors before the challenge sent, replayable) all do nothing;
/// the canary panics later on `panic_after`, not as a drill. The keyed request is answered
/// with a challenge.
pub fn unauthenticated_drills_do_nothing_with_a_key(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, HEX).unwrap();
    let key = Key::from_hex(HEX).unwrap();
    let c = Collector::start_with(&["--key-file", key_file.to_str().unwrap()]);
    let dport = free_udp_port();
    let append = format!("key={HEX} heartbeat_ms=0");
    let frames = [
        drill_frame(None, false),
        drill_frame(Some(&Key::new([1; 32])), false),
        drill_frame(None, true),
        drill_frame(Some(&key), true),
    ];
    let run = run_canary(
        arch,
        "direct",
        c.port,
        &[
            "--drill-port",
            &dport.to_string(),
            "--append",
            &append,
            "--panic-after",
            "3",
        ],
        120,
        || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            for f in &frames {
                s.send_to(f, ("127.0.0.1", dport)).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        },
    );
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    // The canary panicked on panic_after, not as a drill.
    let rec = c.show_latest();
    assert_eq!(rec["kind"], "panic", "{rec:#}\nserial:\n{}", run.serial);
    assert!(
        rec["message"].as_str().unwrap().starts_with("panic_after="),
        "{rec:#}\nserial:\n{}",
        run.serial
    );
    assert_eq!(
        run.serial
            .matches("drill port: bad frame from 10.0.2.2:")
            .count(),
        3,
        "serial:\n{}",
        run.serial
    );
    assert!(
        run.serial
            .contains("drill request 0xbad0d211 from 10.0.2.2:"),
        "the keyed request got no challenge:\n{}",
        run.serial
    );
    assert!(
        !run.serial.contains("drill 0xbad0d211 received"),
        "serial:\n{}",
        run.serial
    );
}

/// With a key, `host-collector drill --key-file` gets the canary's challenge and answers it:
/// the canary panics with kind "drill".
pub fn keyed_drill_answers_the_challenge(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, HEX).unwrap();
    let key_path = key_file.to_str().unwrap();
    let c = Collector::start_with(&["--key-file", key_path]);
    let dport = free_udp_port();
    let drill_addr = format!("127.0.0.1:{dport}");
    let append = format!("key={HEX} heartbeat_ms=0");
    let run = run_canary(
        arch,
        "direct",
        c.port,
        &["--drill-port", &dport.to_string(), "--append", &append],
        120,
        || c.drill_with(&drill_addr, &["--key-file", key_path]),
    );
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    assert!(run.serial.contains(": challenge 1 sent"), "{}", run.serial);
    let rec = c.show_latest();
    assert_eq!(rec["kind"], "drill", "{rec:#}\nserial:\n{}", run.serial);
}
