//! The reading commands (list, show, export, tail, stats, prune) and the database's
//! migrations, against databases filled by a real `serve`.

mod common;

use std::process::{Command, Stdio};

use capture::sender::SendState;
use common::*;
use host_collector::store::{
    InsertOutcome, NewRecord, RecordKey, RowText, Store, Sync, MIGRATIONS, SCHEMA_VERSION,
};

/// A database holding `n` sample records (boot [1;16], seq 1..=n) stored by a real collector.
fn filled_db(dir: &std::path::Path, n: u32) -> std::path::PathBuf {
    let db = dir.join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    for seq in 1..=n {
        let st = send_record(
            srv.addr,
            [1; 16],
            seq,
            &sample_bytes([1; 16], seq),
            None,
            None,
        );
        assert_eq!(st, SendState::Acked);
    }
    assert_eq!(srv.stop("INT"), 0, "graceful stop exits 0");
    db
}

#[test]
fn list_shows_a_table_json_and_no_legend() {
    let dir = tempfile::tempdir().unwrap();
    let db = filled_db(dir.path(), 3);
    let o = run_db(&db, &["list"]);
    assert_eq!(o.status.code(), Some(0));
    let t = stdout(&o);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("MESSAGE"),
        "{t}"
    );
    assert!(t.contains("3 crash records listed."), "{t}");
    assert!(t.contains("self-check"), "{t}");

    let o = run_db(&db, &["list", "--no-legend"]);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));

    let o = run_db(&db, &["list", "--json"]);
    let rows = json(&o);
    let seqs: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(rows[0]["boot_id"], "01".repeat(16));

    let o = run_db(&db, &["list", "--json", "-n", "2", "--reverse"]);
    let seqs: Vec<u64> = json(&o)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 2]);

    // --since in the future: nothing, exit 1, coredumpctl's message.
    let o = run_db(&db, &["list", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("No crash records found."));
    let o = run_db(&db, &["list", "--since", "1h", "--no-legend"]);
    assert_eq!(stdout(&o).lines().count(), 3);
    let o = run_db(&db, &["list", "--since", "yesterday-ish"]);
    assert_eq!(o.status.code(), Some(2), "a bad time is bad usage");
    assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
}

#[test]
fn show_prints_every_part_of_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = filled_db(dir.path(), 2);
    let o = run_db(&db, &["show", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = stdout(&o);
    for want in [
        "Message: self-check: ring buffer write index out of range",
        "Location: appliance/src/workload.rs:214:17",
        "Backtrace: #0",
        "Panic path: freeze",
        "Log tail:",
        "vmbus: channel",
        "Hypervisor:",
        "Microsoft Hv",
    ] {
        assert!(
            t.to_lowercase().contains(&want.to_lowercase()),
            "missing {want:?} in\n{t}"
        );
    }
    let o = run_db(
        &db,
        &["show", &format!("{}:1", "01".repeat(16)), "--json", "--raw"],
    );
    let r = json(&o);
    assert_eq!(r["seq"], 1);
    assert_eq!(r["kind"], "self-check");
    assert_eq!(r["steps"].as_array().unwrap().len(), 7);
    assert_eq!(r["backtrace"].as_array().unwrap().len(), 12);
    // The raw postcard bytes are stored next to the decoded fields and decode to the same.
    let raw = host_collector::util::parse_hex(r["raw_hex"].as_str().unwrap()).unwrap();
    assert_eq!(raw, sample_bytes([1; 16], 1));
    let dec = capture::record::CrashRecord::decode(1, capture::record::SCHEMA_MINOR, &raw).unwrap();
    assert_eq!(dec.message.as_str(), r["message"].as_str().unwrap());

    // Newest by default.
    let o = run_db(&db, &["show", "--json"]);
    assert_eq!(json(&o)["seq"], 2);

    let o = run_db(&db, &["show", "99"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("No crash records found"));
    let o = run_db(&db, &["show", "not-an-id"]);
    assert_eq!(o.status.code(), Some(2), "a bad reference is bad usage");
    assert!(stderr(&o).contains("BOOTID:SEQ"), "{}", stderr(&o));
}

#[test]
fn export_writes_json_and_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let db = filled_db(dir.path(), 3);
    let o = run_db(&db, &["export", "--format", "json"]);
    let a = json(&o);
    assert_eq!(a.as_array().unwrap().len(), 3);
    assert!(a[0].get("raw_hex").is_none());
    let o = run_db(&db, &["export", "--format", "ndjson", "--raw"]);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], 3);
    assert!(lines[2]["raw_hex"].as_str().unwrap().len() > 100);
    let out = dir.path().join("e.json");
    let o = run_db(
        &db,
        &["export", "--format", "json", "-o", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
}

#[test]
fn prune_deletes_old_records_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let db = filled_db(dir.path(), 5);
    let o = run_db(&db, &["prune", "--older-than", "1h"]);
    assert!(
        stdout(&o).starts_with("Deleted 0 of 5 crash records (received before "),
        "{}",
        stdout(&o)
    );
    let o = run_db(&db, &["prune", "--keep", "2"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o).trim(),
        "Deleted 3 of 5 crash records (all but the newest 2)."
    );
    let seqs: Vec<u64> = json(&run_db(&db, &["list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    let c = rusqlite::Connection::open(&db).unwrap();
    let keys: i64 = c
        .query_row("SELECT count(*) FROM record_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 2, "the dedupe keys follow the records");
    // tail -n counts records, not ids (ids 1-3 are gone).
    let tail_seqs = |n: &str| -> Vec<u64> {
        let o = run_db(&db, &["tail", "--json", "-n", n, "--count", "0"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(tail_seqs("1"), vec![5]);
    assert_eq!(tail_seqs("5"), vec![4, 5]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Deleting every record takes --all.
    let o = run_db(&db, &["prune", "--older-than", "1s"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run_db(&db, &["prune", "--older-than", "1s", "--all"]);
    assert!(
        stdout(&o).starts_with("Deleted 2 of 2 crash records"),
        "{}",
        stdout(&o)
    );
    let o = run_db(&db, &["list"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "No crash records found.");
    let o = run_db(&db, &["prune"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "one of --older-than/--keep is required"
    );
}

#[test]
fn stats_are_persisted_for_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = filled_db(dir.path(), 2);
    let s = stats(&db);
    assert_eq!(s["records"], 2);
    assert_eq!(s["records_stored"], 2);
    // Every datagram was a whole record and was acked; any beyond the two were retransmits
    // (a slow ack on a busy machine) and count as duplicates.
    let datagrams = s["datagrams"].as_u64().unwrap();
    assert!(datagrams >= 2);
    assert_eq!(s["acks_sent"], datagrams);
    assert_eq!(s["duplicates"], datagrams - 2);
    assert_eq!(s["schema_version"], SCHEMA_VERSION);
    for k in [
        "bad_crc",
        "bad_frames",
        "auth_failures",
        "evictions",
        "rejected",
    ] {
        assert_eq!(s[k], 0, "{k}");
    }
    let o = run_db(&db, &["stats"]);
    assert!(stdout(&o).contains("records_stored: 2"), "{}", stdout(&o));
}

#[test]
fn tail_follows_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    send_record(srv.addr, [2; 16], 1, &sample_bytes([2; 16], 1), None, None);
    let tail = Command::new(BIN)
        .args([
            "--db",
            db.to_str().unwrap(),
            "tail",
            "--json",
            "-n",
            "0",
            "--count",
            "2",
            "--timeout",
            "10s",
            "--interval",
            "50ms",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for seq in [2, 3] {
        send_record(
            srv.addr,
            [2; 16],
            seq,
            &sample_bytes([2; 16], seq),
            None,
            None,
        );
    }
    let out = tail.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let seqs: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![2, 3], "only the new records");
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn reading_commands_refuse_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_db(&dir.path().join("nope.db"), &["list"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn migrations_create_an_empty_database_and_reopen_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.db");
    {
        let s = Store::open(&p, Sync::Normal).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = s
            .connection()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    let db = filled_db(dir.path(), 2);
    // Re-open: nothing migrated again, the records are still there.
    let s = Store::open(&db, Sync::Normal).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.stats().unwrap().records, 2);
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v1.db");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO records (boot_id, seq, record_crc, received_at_us, source, schema_major,
                schema_minor, build_id, arch, boot_mode, hypervisor, uptime_us, kind, message,
                registers, backtrace, log_tail, steps, raw)
             VALUES (zeroblob(16), 1, 2, 3, 's', 1, 0, 'b', 'x86_64', 'uefi', '{}', 4, 'panic',
                'old', '{}', '[]', '', '[]', x'00')",
            [],
        )
        .unwrap();
    }
    let mut s = Store::open(&p, Sync::Normal).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.stats().unwrap().records, 1);
    assert!(s.canaries().unwrap().is_empty(), "version 2 tables exist");
    // Version 3 copied the old record's key: the same key is a duplicate now.
    let keys: i64 = s
        .connection()
        .query_row("SELECT count(*) FROM record_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 1);
    let dup = NewRecord {
        key: RecordKey {
            boot_id: [0; 16],
            seq: 1,
            record_crc: 2,
        },
        received_at_us: 5,
        schema_major: 1,
        schema_minor: 0,
        uptime_us: 0,
        line_col: (0, 0),
        text: RowText::default(),
        raw: vec![0],
    };
    assert_eq!(
        s.commit_batch(&[dup], &[], &[], &[]).unwrap(),
        vec![InsertOutcome::Duplicate]
    );
    let o = run_db(&p, &["list", "--json"]);
    assert_eq!(json(&o)[0]["message"], "old");
}

#[test]
fn a_database_from_a_newer_collector_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("new.db");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    assert!(Store::open(&p, Sync::Normal).is_err());
    let o = run_db(&p, &["list"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("newer than this collector"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_documents_exit_codes_and_teaches_usage() {
    let o = run(&["--help"]);
    let h = stdout(&o);
    assert!(h.contains("Exit codes:"), "{h}");
    assert!(h.contains("Typical use:"), "{h}");
    for sub in [
        "list", "show", "export", "tail", "stats", "prune", "load", "drill",
    ] {
        let o = run(&[sub, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{sub}");
        assert!(stdout(&o).contains("Exit codes:"), "{sub}");
    }
}
