//! Replayed frames with a fleet key (issue 12 item 10, issue 11 item 5): a heartbeat seen
//! again does not make a canary look alive, a record replayed after `prune` and a restart is
//! not stored again, and a keyed drill is a challenge-response that a replay cannot repeat.
mod common;
use common::*;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use capture::drill::{DrillGuard, DrillPolicy, Refusal, Verdict};
use capture::sender::SendState;
use capture::wire::{self, AckStatus, HeartbeatRepr, Repr};
use capture::Key;

fn write_key(dir: &std::path::Path, byte: u8) -> (std::path::PathBuf, Key) {
    let p = dir.join("fleet.key");
    let hex: String = std::iter::repeat_n(format!("{byte:02x}"), 32).collect();
    std::fs::write(&p, &hex).unwrap();
    (p, Key::from_hex(&hex).unwrap())
}

fn heartbeat(boot_id: [u8; 16], seq: u32, uptime_ms: u64, key: &Key) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = wire::emit(
        &Repr::Heartbeat(HeartbeatRepr {
            boot_id,
            seq,
            uptime_ms,
            arch: capture::record::Arch::X86_64,
        }),
        Some(key),
        &mut buf,
    )
    .unwrap();
    buf[..n].to_vec()
}

/// The `list --canaries --json` row of `boot`.
fn canary(db: &std::path::Path, boot: [u8; 16]) -> serde_json::Value {
    let o = run_db(db, &["list", "--canaries", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let hex: String = boot.iter().map(|b| format!("{b:02x}")).collect();
    json(&o)
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["boot_id"]
                .as_str()
                .is_some_and(|b| b.replace('-', "") == hex)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no canary {hex}"))
}

#[test]
fn a_replayed_heartbeat_does_not_refresh_a_canarys_liveness() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let (key_path, key) = write_key(dir.path(), 0x5a);
    let srv = Server::start(
        &db,
        "127.0.0.1:0",
        &["--key-file", key_path.to_str().unwrap()],
        &[],
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let boot = [0x4b; 16];
    // The canary's last two heartbeats, then it dies.
    let hb4 = heartbeat(boot, 4, 4_000, &key);
    let hb5 = heartbeat(boot, 5, 5_000, &key);
    sock.send_to(&hb4, srv.addr).unwrap();
    sock.send_to(&hb5, srv.addr).unwrap();
    wait_stats(&db, |s| s["heartbeats"] == 2);
    let alive = canary(&db, boot);
    assert_eq!(alive["heartbeat_seq"], 5, "{alive:#}");
    assert_eq!(alive["heartbeats"], 2, "{alive:#}");
    std::thread::sleep(Duration::from_millis(50));
    // An attacker replays both recorded (validly tagged) heartbeats.
    sock.send_to(&hb5, srv.addr).unwrap();
    sock.send_to(&hb4, srv.addr).unwrap();
    wait_stats(&db, |s| s["heartbeats"].as_u64() >= Some(4));
    let after = canary(&db, boot);
    assert_eq!(
        after["last_seen_us"], alive["last_seen_us"],
        "a replayed heartbeat refreshed last_seen: {after:#}"
    );
    assert_eq!(after["heartbeat_seq"], 5, "{after:#}");
    assert_eq!(after["uptime_ms"], 5_000, "{after:#}");
    assert_eq!(after["heartbeats"], 2, "{after:#}");
    // A genuinely new heartbeat still counts.
    sock.send_to(&heartbeat(boot, 6, 6_000, &key), srv.addr)
        .unwrap();
    wait_stats(&db, |s| s["heartbeats"].as_u64() >= Some(5));
    let later = canary(&db, boot);
    assert_eq!(later["heartbeat_seq"], 6, "{later:#}");
    assert_eq!(later["heartbeats"], 3, "{later:#}");
    assert!(later["last_seen_us"].as_i64() > alive["last_seen_us"].as_i64());
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn a_record_replayed_after_prune_and_a_restart_is_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let (key_path, key) = write_key(dir.path(), 0x6b);
    let args = ["--key-file", key_path.to_str().unwrap()];
    let boot = [0x21; 16];
    let old = sample_bytes(boot, 1);
    let new = sample_bytes(boot, 2);
    let srv = Server::start(&db, "127.0.0.1:0", &args, &[]);
    for rec in [&old, &new] {
        let seq = if std::ptr::eq(rec, &old) { 1 } else { 2 };
        assert_eq!(
            send_record_status(srv.addr, boot, seq, rec, Some(&key), None),
            (SendState::Acked, Some(AckStatus::Stored))
        );
    }
    assert_eq!(srv.stop("TERM"), 0);
    // The operator prunes the older record, and serve restarts.
    let o = run_db(&db, &["prune", "--keep", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(count_rows(&db).0, 1);
    let srv = Server::start(&db, "127.0.0.1:0", &args, &[]);
    // The old record's frames, replayed (a fresh, identically tagged send of the same bytes).
    let (st, status) = send_record_status(srv.addr, boot, 1, &old, Some(&key), None);
    assert_eq!(st, SendState::Acked);
    assert_eq!(
        status,
        Some(AckStatus::Duplicate),
        "a pruned record was stored again"
    );
    assert_eq!(count_rows(&db).0, 1, "a pruned record was stored again");
    // A new record of the same boot is still stored.
    let third = sample_bytes(boot, 3);
    assert_eq!(
        send_record_status(srv.addr, boot, 3, &third, Some(&key), None),
        (SendState::Acked, Some(AckStatus::Stored))
    );
    assert_eq!(count_rows(&db).0, 2);
    assert_eq!(srv.stop("TERM"), 0);
}

/// A fake keyed canary on a loopback socket, with the appliance's own drill policy.
/// Returns the datagrams it received and the verdicts it reached, until `until` is true or
/// `wait` passes.
fn fake_canary<'k>(
    sock: &UdpSocket,
    key: &'k Key,
    wait: Duration,
    until: impl Fn(&[Verdict]) -> bool,
) -> (DrillGuard<'k>, Vec<Vec<u8>>, Vec<Verdict>) {
    let mut guard = DrillGuard::new([0xc4; 16], Some(key), DrillPolicy::Keyed);
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut verdicts = Vec::new();
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while t0.elapsed() < wait && !until(&verdicts) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        got.push(buf[..n].to_vec());
        let v = guard.handle(&buf[..n], t0.elapsed().as_millis() as u64);
        if let Verdict::Challenge(c) = &v {
            let mut out = [0u8; 128];
            let m = wire::emit(&Repr::Challenge(*c), Some(key), &mut out).unwrap();
            sock.send_to(&out[..m], from).unwrap();
        }
        verdicts.push(v);
    }
    (guard, got, verdicts)
}

#[test]
fn a_keyed_drill_answers_the_canarys_challenge_and_its_replay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = write_key(dir.path(), 0x7c);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let k = key.clone();
    let canary = std::thread::spawn(move || {
        let (mut guard, got, verdicts) = fake_canary(&sock, &k, Duration::from_secs(10), |v| {
            v.iter().any(|v| matches!(v, Verdict::Drill { .. }))
        });
        // Replaying the tool's answer (the last frame it sent) to the same canary: refused.
        let replay = got.last().map(|answer| guard.handle(answer, 0));
        (got, verdicts, replay)
    });
    let o = run(&[
        "drill",
        &addr,
        "--key-file",
        key_path.to_str().unwrap(),
        "--delay-ms",
        "250",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (got, verdicts, replay) = canary.join().unwrap();
    assert_eq!(got.len(), 2, "request and answer");
    assert!(
        matches!(verdicts.first(), Some(Verdict::Challenge(_))),
        "{verdicts:?}"
    );
    assert!(
        matches!(verdicts.last(), Some(Verdict::Drill { delay_ms: 250, .. })),
        "{verdicts:?}\n{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("challenge"), "{}", stdout(&o));
    assert_eq!(replay, Some(Verdict::Refused(Refusal::StaleChallenge)));
}
