//! A scheduled drill against a real canary under QEMU (issue 15, "Must show"): builds the
//! x86_64 image with `scripts/qemu-run --print-image` (as the appliance's QEMU tests do) and
//! boots it under QEMU TCG. Linux only, as QEMU and the image builder are here.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_scheduled_drill_against_a_qemu_canary_stores_a_record_marked_drill() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = Command::new(ws.join("scripts/qemu-run"))
        .args(["--arch", "x86_64", "--boot", "direct", "--print-image"])
        .current_dir(ws)
        .output()
        .expect("run scripts/qemu-run --print-image");
    assert!(
        built.status.success(),
        "building the image failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let hook = dir.path().join("events.jsonl");
    let cmd = format!("cat >> '{}'", hook.display());
    let dport = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    // QEMU user networking changes the canary's sending port: drill it at the forwarded
    // drill port instead of "sending port - 1".
    let mut srv = Server::start(
        &db,
        "127.0.0.1:0",
        &[
            "--drill-every",
            "2s",
            "--drill-port",
            &dport,
            "--drill-deadline",
            "60s",
            "--on-event",
            &cmd,
        ],
        &[],
    );
    let mut qemu = Command::new(ws.join("scripts/qemu-run"))
        .args([
            "--arch",
            "x86_64",
            "--boot",
            "direct",
            "--no-build",
            "--timeout",
            "120",
        ])
        .args(["--collector-port", &srv.addr.port().to_string()])
        .args(["--drill-port", &dport])
        .args(["--append", "drill=insecure heartbeat_ms=500"])
        .current_dir(ws)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/qemu-run");
    let alive = srv.wait_line(|l| l.contains("canary alive"), Duration::from_secs(90));
    let line = srv.wait_line(|l| l.contains("drill=scheduled"), Duration::from_secs(60));
    let end = Instant::now() + Duration::from_secs(30);
    while qemu.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = qemu.kill();
    let out = qemu.wait_with_output().unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(
        alive.is_some(),
        "no heartbeat from the canary; serial:\n{serial}"
    );
    let line = line.unwrap_or_else(|| panic!("no scheduled drill record; serial:\n{serial}"));
    assert!(line.contains("kind=drill"), "{line}");
    let rec = json(&run_db(&db, &["show", "--json"]));
    assert_eq!(rec["kind"], "drill", "{rec:#}");
    assert!(
        rec["message"].as_str().unwrap().starts_with("drill 0x"),
        "{rec:#}"
    );
    let evs: Vec<serde_json::Value> = std::fs::read_to_string(&hook)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ev = evs
        .iter()
        .find(|e| e["event"] == "crash_stored")
        .expect("the drill record's event");
    assert_eq!(ev["drill"], true, "{ev}");
    assert_eq!(ev["id"], rec["id"]);
    // The canary's state is written at most once a second.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = json(&run_db(&db, &["canaries", "--json"]));
        assert_eq!(rows.as_array().unwrap().len(), 1, "{rows:#}");
        if rows[0]["state"] == "crashed" {
            assert_eq!(rows[0]["last_record_id"], rec["id"], "{rows:#}");
            break;
        }
        assert!(Instant::now() < end, "{rows:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(srv.stop("TERM"), 0);
}
