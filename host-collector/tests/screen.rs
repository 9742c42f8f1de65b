//! `import-screen` and the follow-up frame, end to end against a real `serve`, with what a
//! real appliance panic path produced: `docs/panic-screen-qr.png` (the panic screen read
//! back from vmbus-sim's synthvid host model), `docs/panic-screen-qr.record` (the bytes its
//! ship step sent) and `docs/panic-screen-qr.followup` (the follow-up frame it sent after
//! the ack), all written by the appliance's host test
//! `hyperv::panic_screen_tests::the_panic_screen_shows_the_shipped_record_as_a_qr_code_byte_for_byte`
//! (`CANARY_UPDATE_REFERENCE=1`).
mod common;

use std::path::PathBuf;
use std::time::Duration;

use capture::followup::{FOLLOWUP_NO_RECORD, FOLLOWUP_STORED};
use capture::sender::SendState;
use capture::wire::{self, AckStatus, Repr};
use common::*;

fn docs(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_panic_screen_png_imports_as_the_record_the_network_delivered_and_show_merges_the_followup() {
    let png = docs("panic-screen-qr.png");
    let shipped = std::fs::read(docs("panic-screen-qr.record")).unwrap();
    let followup = std::fs::read(docs("panic-screen-qr.followup")).unwrap();
    let Ok(Repr::Followup(fu)) = wire::parse(&followup, None) else {
        panic!("docs/panic-screen-qr.followup is not a follow-up frame")
    };
    let id = fu.id();
    assert_eq!(id.record_crc, crc32fast::hash(&shipped));
    let from_png =
        host_collector::screen::record_from_png("x.png", &std::fs::read(&png).unwrap(), None)
            .unwrap();
    assert_eq!(
        from_png.new.raw, shipped,
        "the screen's record is the shipped one"
    );
    let schema = (from_png.new.schema_major, from_png.new.schema_minor);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut srv = Server::start(&db, "127.0.0.1:0", &["--metrics", "127.0.0.1:0"], &[]);
    let metrics = srv
        .wait_line(|l| l.contains("metrics on http://"), Duration::from_secs(5))
        .and_then(|l| {
            l.split("metrics on http://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        })
        .expect("the metrics address");

    // A follow-up before its record: no record, said so (the appliance stops resending).
    assert_eq!(
        send_for_ack(srv.addr, &followup),
        AckStatus::Other(FOLLOWUP_NO_RECORD)
    );
    // The record over the network, as the appliance's sender sends it.
    let (st, status) =
        send_record_status(srv.addr, id.boot_id, id.seq, &shipped, None, Some(schema));
    assert_eq!(st, SendState::Acked);
    assert_eq!(status, Some(AckStatus::Stored));
    // Its follow-up, attached.
    assert_eq!(
        send_for_ack(srv.addr, &followup),
        AckStatus::Other(FOLLOWUP_STORED)
    );
    // Resent (its ack was lost): acked again, stored once.
    assert_eq!(
        send_for_ack(srv.addr, &followup),
        AckStatus::Other(FOLLOWUP_STORED)
    );

    // The screenshot of the same crash: the same key, so a duplicate.
    let o = run_db(&db, &["import-screen", png.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j[0]["outcome"], "duplicate", "{j:#}");
    assert_eq!(j[0]["boot_id"], hex(&id.boot_id));
    assert_eq!(j[0]["seq"], id.seq);

    // `show` prints all seven steps: freeze from the record, the six after the seal from
    // the follow-up.
    let o = run_db(&db, &["show", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let steps: Vec<(String, String)> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "freeze",
            "screen-flush",
            "vmbus-unload",
            "arch-cleanup",
            "ship",
            "crash-registers",
            "end"
        ],
        "{v:#}"
    );
    assert_eq!(steps[1].1, "done", "the screen was drawn: {v:#}");
    assert_eq!(steps[4].1, "done", "shipped: {v:#}");
    assert_eq!(steps[6].1, "started", "{v:#}");
    assert!(steps.iter().all(|(_, o)| o != "not reported"), "{v:#}");
    assert_eq!(v["followup"]["received"], true, "{v:#}");
    let text = stdout(&run_db(&db, &["show"]));
    assert!(text.contains("Follow-up: received: 6 steps"), "{text}");
    // `export` gives the record the same seven steps.
    let o = run_db(&db, &["export", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = json(&o);
    assert_eq!(e[0]["steps"], v["steps"], "{e:#}");
    // ... and in the step metrics: freeze from the record, the others from the follow-up.
    let body = http_get(&metrics, "/metrics");
    for step in ["freeze", "vmbus-unload", "ship", "crash-registers"] {
        let line = format!("canary_collector_panic_step_seconds_count{{step=\"{step}\"}} 1");
        assert!(body.contains(&line), "{line}:\n{body}");
    }
    assert!(!body.contains("step_seconds_count{step=\"end\"}"), "{body}");
    // The follow-up's times are in the step columns `stats --steps` reads (the sealed record
    // itself has freeze only); the end step (reported as started) has no time.
    let st = json(&run_db(&db, &["stats", "--steps", "--json"]));
    let rows = st.as_array().cloned().unwrap_or_else(|| {
        st["steps"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{st:#}"))
    });
    let timed: Vec<&str> = rows
        .iter()
        .filter(|r| r["records"] == 1)
        .filter_map(|r| r["step"].as_str())
        .collect();
    assert_eq!(
        timed,
        [
            "freeze",
            "screen-flush",
            "vmbus-unload",
            "arch-cleanup",
            "ship",
            "crash-registers"
        ],
        "{st:#}"
    );
    assert!(text.contains("crash-registers"), "{text}");
    srv.stop("INT");

    // Into a fresh database: stored as if from the network, source screen:FILE, the same
    // bytes; with no follow-up, `show` says so.
    let db2 = dir.path().join("screen.db");
    let o = run_db(&db2, &["import-screen", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("stored"), "{}", stdout(&o));
    let v = json(&run_db(&db2, &["show", "--json", "--raw"]));
    assert_eq!(v["source"], "screen:panic-screen-qr.png", "{v:#}");
    assert_eq!(v["raw_hex"], hex(&shipped), "{v:#}");
    assert_eq!(
        v["record_crc"]
            .as_str()
            .map(|c| c.contains(&format!("{:08x}", id.record_crc))),
        Some(true),
        "{v:#}"
    );
    assert_eq!(v["followup"]["received"], false, "{v:#}");
    let text = stdout(&run_db(&db2, &["show"]));
    assert!(text.contains("not reported"), "{text}");
    assert!(text.contains("Follow-up: not received"), "{text}");
    // Importing it again is a duplicate, never a second row.
    let o = run_db(&db2, &["import-screen", png.to_str().unwrap(), "--json"]);
    assert_eq!(json(&o)[0]["outcome"], "duplicate");
    assert_eq!(count_rows(&db2).0, 1);
}

#[test]
fn import_screen_refuses_an_image_without_a_canary_code_and_a_tagged_code_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    // A PNG with no QR code: the synthvid reference image of the plain panic screen.
    let plain = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../vmbus/tests/data/synthvid_panic_320x96.png");
    let o = run_db(&db, &["import-screen", plain.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no canary QR code found"),
        "{}",
        stderr(&o)
    );
    // Not a PNG.
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let o = run_db(&db, &["import-screen", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not a PNG"), "{}", stderr(&o));
    // The committed screen is untagged: with a fleet key it is refused.
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let png = docs("panic-screen-qr.png");
    let o = run_db(
        &db,
        &[
            "import-screen",
            "--key-file",
            key.to_str().unwrap(),
            png.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not tagged"), "{}", stderr(&o));
}
