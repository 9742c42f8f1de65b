//! Reading (issue 15): `list`/`tail` fit 80 columns, local time or `--utc`, the forms of
//! `--since`, `list --group`, and `show` by any unique boot id prefix.

mod common;

use std::path::Path;

use common::*;
use host_collector::store::{NewRecord, RecordFields, RecordKey, RowText, Store, Sync};

/// 2026-12-07T01:30:00Z.
const T0: i64 = 1_796_607_000_000_000;

/// Stores records `(boot id, seq, received at, kind, message)`.
fn db(path: &Path, recs: &[([u8; 16], u32, i64, &str, &str)]) {
    let mut s = Store::open(path, Sync::Normal).unwrap();
    let rows: Vec<NewRecord> = recs
        .iter()
        .map(|&(boot, seq, at, kind, msg)| {
            let f = RecordFields {
                build_id: "b".into(),
                arch: "x86_64".into(),
                boot_mode: "pvh".into(),
                hypervisor: serde_json::json!({"vendor": "none"}),
                kind: kind.into(),
                message: msg.into(),
                registers: serde_json::json!({}),
                location: Some(host_collector::store::LocationView {
                    file: "appliance/src/main.rs".into(),
                    line: 7,
                    column: 9,
                }),
                ..RecordFields::default()
            };
            NewRecord {
                key: RecordKey {
                    boot_id: boot,
                    seq,
                    record_crc: seq,
                },
                received_at_us: at,
                schema_major: 1,
                schema_minor: 0,
                uptime_us: 1,
                line_col: (7, 9),
                text: RowText::from_fields("10.0.0.7:7375", &f),
                raw: vec![1, 2, 3],
            }
        })
        .collect();
    s.commit_batch(&rows, &[], &[], &[]).unwrap();
}

fn boot(first: [u8; 4]) -> [u8; 16] {
    let mut b = [0x11; 16];
    b[..4].copy_from_slice(&first);
    b
}

const LONG: &str = "panicked at a very long message that goes on and on well past eighty \
                    columns of terminal, as real panics with formatted values often do";

fn setup(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("r.db");
    let a = boot([0xab, 0xcd, 0x12, 0x34]);
    let b = boot([0xab, 0xcd, 0x99, 0x00]);
    let c = boot([0x3c, 0xc1, 0xe0, 0x44]);
    db(
        &p,
        &[
            (a, 1, T0, "panic", LONG),
            (a, 2, T0 + 1_000_000, "panic", LONG),
            (b, 1, T0 + 2_000_000, "panic", LONG),
            (c, 1, T0 + 3_000_000, "fault", "page fault at 0x0"),
            (c, 2, T0 + 4_000_000, "panic", LONG),
        ],
    );
    p
}

#[test]
fn list_fits_80_columns_shows_utc_on_request_and_wide_shows_everything() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path());
    let o = run_db(
        &p,
        &["list", "--utc", "--since", "2026-12-07T02:00:00+01:00"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = stdout(&o);
    assert!(t.lines().all(|l| l.chars().count() <= 80), "{t}");
    assert!(
        t.contains("Dec 07 01:30:00") && t.contains("abcd1234:1"),
        "{t}"
    );
    assert!(t.contains("5 crash records listed."), "{t}");
    let o = run_db(&p, &["list", "--wide", "--utc"]);
    let t = stdout(&o);
    assert!(
        t.contains(LONG) && t.contains("2026-12-07 01:30:03 +00:00"),
        "{t}"
    );
    assert!(
        t.contains("appliance/src/main.rs:7:9") && t.contains("10.0.0.7:7375"),
        "{t}"
    );
    // Local time by default: a fixed zone via TZ.
    let o = std::process::Command::new(BIN)
        .args(["--db", p.to_str().unwrap(), "list", "-n", "1"])
        .env("TZ", "UTC-02")
        .output()
        .unwrap();
    assert!(stdout(&o).contains("Dec 07 03:30:04"), "{}", stdout(&o));
    // tail prints the same rows.
    let o = run_db(&p, &["tail", "-n", "2", "--count", "0", "--utc"]);
    let t = stdout(&o);
    assert!(t.contains("3cc1e044:2") && t.lines().count() == 2, "{t}");
}

#[test]
fn since_takes_offsets_dates_relative_times_and_a_leading_minus_without_equals() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path());
    let count = |args: &[&str]| -> usize {
        let mut a = vec!["list", "--json"];
        a.extend_from_slice(args);
        // Local dates in UTC, whatever this machine's zone.
        let o = std::process::Command::new(BIN)
            .arg("--db")
            .arg(&p)
            .args(&a)
            .env("TZ", "UTC0")
            .output()
            .unwrap();
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{args:?}: {}",
            stderr(&o)
        );
        json(&o).as_array().unwrap().len()
    };
    // The example, refused before.
    assert_eq!(count(&["--since", "2026-12-07T02:30:02+01:00"]), 3);
    assert_eq!(count(&["--since", "2026-12-06T20:30:02-05:00"]), 3);
    assert_eq!(count(&["--until", "2026-12-07T01:30:01Z"]), 2);
    // A bare date is its midnight, local time (UTC here).
    assert_eq!(
        count(&["--since", "2026-12-07", "--until", "2026-12-08"]),
        5
    );
    assert_eq!(count(&["--since", "2026-12-08"]), 0);
    // Relative, with a leading minus and no `=`.
    assert_eq!(count(&["--since", "-3650d"]), 5);
    assert_eq!(count(&["-S", "-3650d", "--until", "-3649d"]), 0);
    // Midnights: the records are from 2026-12-07, before tomorrow (and yesterday parses).
    assert_eq!(count(&["--since", "tomorrow"]), 0);
    count(&["--since", "yesterday"]);
    let o = run_db(&p, &["list", "--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("any offset"), "{}", stderr(&o));
}

#[test]
fn list_group_folds_identical_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path());
    let o = run_db(&p, &["list", "--group", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let g = json(&o);
    let g = g.as_array().unwrap();
    assert_eq!(g.len(), 2, "{g:#?}");
    let long = g.iter().find(|g| g["kind"] == "panic").unwrap();
    assert_eq!(long["count"], 4);
    assert_eq!(long["boots"], 3);
    assert_eq!(long["first_seen"], "2026-12-07T01:30:00Z");
    assert_eq!(long["last_seen"], "2026-12-07T01:30:04Z");
    assert_eq!(long["location"], "appliance/src/main.rs:7:9");
    let t = stdout(&run_db(&p, &["list", "--group", "--utc"]));
    assert!(t.contains("5 crash records in 2 groups."), "{t}");
    assert!(t.lines().all(|l| l.chars().count() <= 80), "{t}");
}

#[test]
fn show_takes_any_unique_boot_id_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path());
    let seq_of = |r: &str| -> (Option<i32>, serde_json::Value) {
        let o = run_db(&p, &["show", r, "--json"]);
        let v = if o.status.code() == Some(0) {
            json(&o)
        } else {
            serde_json::Value::String(stderr(&o))
        };
        (o.status.code(), v)
    };
    // The 8 digits `list` prints, and longer or shorter unique prefixes.
    let (code, v) = seq_of("3cc1e044");
    assert_eq!(code, Some(0));
    assert_eq!(
        (v["seq"].as_u64(), v["kind"].as_str()),
        (Some(2), Some("panic"))
    );
    assert_eq!(seq_of("3cc1e044:1").1["kind"], "fault");
    assert_eq!(seq_of("3CC1").1["seq"], 2);
    assert_eq!(seq_of("abcd1234:1").1["seq"], 1);
    assert_eq!(
        seq_of(&format!("abcd1234{}:2", "11".repeat(12))).1["seq"],
        2
    );
    // Ambiguous: exit 2 naming the candidates; no match: exit 1.
    let (code, v) = seq_of("abcd");
    assert_eq!(code, Some(2));
    assert!(v.as_str().unwrap().contains("matches 2 boots"), "{v}");
    let (code, v) = seq_of("ffff");
    assert_eq!(code, Some(1));
    assert!(
        v.as_str()
            .unwrap()
            .contains("No crash records found matching ffff"),
        "{v}"
    );
    assert_eq!(seq_of("abcd1234:9").0, Some(1));
    assert_eq!(seq_of("xyz").0, Some(2));
    // A number is still a record ID.
    assert_eq!(seq_of("4").1["kind"], "fault");
}
