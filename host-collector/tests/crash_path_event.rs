//! The `crash_path` event end to end: a real `serve` with `--on-event`, a sealed record and
//! then its follow-up frames over UDP, as the appliance sends them (the record, the ship
//! step's follow-up at the ack, the end step's); the hook gets `crash_stored`, then one
//! `crash_path` per follow-up stored or replacing a less complete one (none for a resent
//! one), naming the step that failed; the log has a `crash path` line after the record's.
mod common;

use std::time::{Duration, Instant};

use capture::chunk::RecordId;
use capture::followup::{FollowupRepr, FOLLOWUP_STORED};
use capture::panic::{Outcome, Step, StepRecord};
use capture::sender::SendState;
use capture::wire::{AckStatus, Repr};
use common::*;

/// The follow-up frame of record `id` with the steps after the seal: VMBus unload failed
/// (code 5), the rest done up to `upto` (4: the ship step's, sent at the ack; 5: the end
/// step's, which sends it from inside the end step, pending).
fn followup(id: &RecordId, upto: usize) -> Vec<u8> {
    let steps: Vec<StepRecord> = Step::ALL[1..]
        .iter()
        .enumerate()
        .map(|(i, &step)| {
            let (outcome, elapsed_us) = match step {
                _ if i >= upto => (Outcome::Pending, 0),
                Step::VmbusUnload => (Outcome::Failed(5), 700),
                _ => (Outcome::Done, 100 + i as u32),
            };
            StepRecord {
                step,
                outcome,
                elapsed_us,
            }
        })
        .collect();
    let mut out = [0u8; 512];
    let n = Repr::Followup(FollowupRepr::new(id, &steps))
        .emit(None, &mut out)
        .unwrap();
    out[..n].to_vec()
}

/// The hook's events so far (one JSON object a line).
fn hook_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn a_followup_with_a_failed_vmbus_unload_reaches_the_hook_as_a_crash_path_event() {
    let dir = tempfile::tempdir().unwrap();
    check(&dir.path().join("c.db"), dir.path());
}

/// The same against PostgreSQL (`$CANARY_TEST_PG`; skipped without it unless
/// `CANARY_REQUIRE_PG=1`): the record's id and source are read back from there.
#[test]
fn on_postgresql_too() {
    let Some(db) = host_collector::store::pg::testing::TestDb::create("crash_path_event") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    check(std::path::Path::new(&db.url), dir.path());
}

/// Runs `serve` on `db` with a hook writing to a file in `dir`, sends a record and its
/// follow-ups, and checks the events and lines.
fn check(db: &std::path::Path, dir: &std::path::Path) {
    let hook = dir.join("events.jsonl");
    let cmd = format!("cat >> '{}'", hook.display());
    let mut srv = Server::start(db, "127.0.0.1:0", &["--on-event", &cmd], &[]);

    // A record sealed at the panic screen (its own steps: freeze only), as the appliance
    // ships it.
    let boot = [0x5c; 16];
    let mut r = capture::testutil::sample_record(3);
    r.boot_id = boot;
    r.steps.truncate(1);
    let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let bytes = r.encode(&mut buf).unwrap().to_vec();
    let (st, status) = send_record_status(srv.addr, boot, r.seq, &bytes, None, None);
    assert_eq!(st, SendState::Acked);
    assert_eq!(status, Some(AckStatus::Stored));
    let id = RecordId {
        boot_id: boot,
        seq: r.seq,
        record_crc: crc32fast::hash(&bytes),
    };
    // The ship step's follow-up, the end step's, and the first again (its ack was lost).
    let stored = AckStatus::Other(FOLLOWUP_STORED);
    assert_eq!(send_for_ack(srv.addr, &followup(&id, 4)), stored);
    assert_eq!(send_for_ack(srv.addr, &followup(&id, 5)), stored);
    assert_eq!(send_for_ack(srv.addr, &followup(&id, 4)), stored);

    // The log: the record's line, then a line per follow-up stored.
    let boot_hex: String = boot.iter().map(|b| format!("{b:02x}")).collect();
    let stored_line = srv
        .wait_line(|l| l.contains("crash stored id="), Duration::from_secs(10))
        .expect("a crash stored line");
    assert!(
        stored_line.contains(&format!("boot={boot_hex}")),
        "{stored_line}"
    );
    let record_id: i64 = stored_line
        .split("crash stored id=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the record's id");
    for complete in ["false reported=4", "true reported=5"] {
        let l = srv
            .wait_line(|l| l.contains("crash path id="), Duration::from_secs(10))
            .expect("a crash path line");
        assert!(l.contains(" INFO "), "{l}");
        assert!(
            l.ends_with(&format!(
                "crash path id={record_id} boot={boot_hex} seq={} host=127.0.0.1 complete={complete} \
                 failed=vmbus-unload outcome=\"failed (0x5)\"",
                r.seq
            )),
            "{l}"
        );
    }
    // The hooks of both follow-ups ran (and a third would have by the time both did).
    let end = Instant::now() + Duration::from_secs(20);
    while of_kind(&hook_events(&hook), "crash_path").len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(srv.stop("TERM"), 0);

    let events = hook_events(&hook);
    let crashes = of_kind(&events, "crash_stored");
    assert_eq!(crashes.len(), 1, "{events:#?}");
    assert_eq!(crashes[0]["id"], record_id);
    let paths = of_kind(&events, "crash_path");
    assert_eq!(
        paths.len(),
        2,
        "one a follow-up stored, none for the resent one: {paths:#?}"
    );
    // The hooks run at most 4 at once: the two follow-ups' events in either order.
    let (first, second) = if paths[0]["replaced"] == false {
        (paths[0], paths[1])
    } else {
        (paths[1], paths[0])
    };
    for p in [first, second] {
        assert_eq!(p["id"], crashes[0]["id"], "{p:#}");
        assert_eq!(p["boot_id"], crashes[0]["boot_id"]);
        assert_eq!(p["seq"], crashes[0]["seq"]);
        assert_eq!(p["record_crc"], crashes[0]["record_crc"]);
        assert_eq!(p["host"], crashes[0]["host"]);
        assert_eq!(p["failed_step"], "vmbus-unload", "{p:#}");
    }
    assert_eq!(first["replaced"], false);
    assert_eq!(first["complete"], false, "{first:#}");
    assert_eq!(second["replaced"], true);
    assert_eq!(second["complete"], true, "{second:#}");
    let steps = |p: &serde_json::Value| -> Vec<String> {
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{} {} {}", s["step"], s["outcome"], s["elapsed_us"]))
            .collect()
    };
    assert_eq!(
        steps(first),
        [
            r#""screen-flush" "done" 100"#,
            r#""vmbus-unload" "failed (0x5)" 700"#,
            r#""arch-cleanup" "done" 102"#,
            r#""ship" "done" 103"#,
            r#""crash-registers" "not reported" 0"#,
            r#""end" "not reported" 0"#,
        ]
    );
    assert_eq!(
        steps(second)[4..],
        [
            r#""crash-registers" "done" 104"#.to_string(),
            r#""end" "started" 0"#.to_string()
        ]
    );
}
