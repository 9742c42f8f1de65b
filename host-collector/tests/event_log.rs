//! The "crash stored" log lines of `serve` end to end: `--event-log-rate N` (and the config
//! file's `event_log_rate`) writes at most N a second and sums up the rest, with ids, so that
//! every stored record is accounted for in the log.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `serve` with the global flags `global` and `args` (stderr into a file), sends
/// `records` records with `load`, waits until they are stored, stops it with SIGTERM and
/// returns its stderr.
fn serve_and_load(dir: &Path, global: &[&str], args: &[&str], records: u32) -> String {
    let db = dir.join("c.db");
    let log = dir.join("serve.log");
    let mut child = Command::new(BIN)
        .args(global)
        .arg("--db")
        .arg(&db)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(rest) = text.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < end, "serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let n = records.to_string();
    let o = run(&[
        "load",
        "--target",
        &addr,
        "--canaries",
        "10",
        "--records",
        &n,
        "--loss",
        "0",
        "--seed",
        "3",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "load: {}", stderr(&o));
    wait_stats(&db, |s| s["records_stored"] == records);
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

/// The ids of the "crash stored id=…" lines, and (count, first id, last id) of the summaries.
fn parse(log: &str) -> (Vec<i64>, Vec<(i64, i64, i64)>) {
    let mut ids = Vec::new();
    let mut sums = Vec::new();
    for l in log.lines() {
        if let Some((_, rest)) = l.split_once("crash stored id=") {
            ids.push(rest.split(' ').next().unwrap().parse().unwrap());
        } else if let Some((_, rest)) = l.split_once("crash stored: ") {
            let (n, rest) = rest.split_once(" more record").unwrap();
            let (_, ids) = rest.split_once("(ids ").unwrap();
            let (a, b) = ids.split_once(')').unwrap().0.split_once('-').unwrap();
            assert!(l.ends_with("; host-collector list shows them"), "{l}");
            sums.push((n.parse().unwrap(), a.parse().unwrap(), b.parse().unwrap()));
        }
    }
    (ids, sums)
}

fn listed(db: &Path) -> BTreeSet<i64> {
    json(&run_db(db, &["list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn past_the_event_log_rate_the_rest_are_summed_up_and_every_record_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = serve_and_load(dir.path(), &[], &["--event-log-rate", "10"], 300);
    let (ids, sums) = parse(&log);
    assert!(!sums.is_empty(), "{log}");
    assert!(ids.len() < 300, "{} lines", ids.len());
    // Each summary covers exactly the ids it names (one collector: ids in order), and the
    // lines and the summaries together name every stored record once.
    let mut all: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(all.len(), ids.len());
    for &(n, a, b) in &sums {
        assert_eq!(n, b - a + 1, "{sums:?}");
        for id in a..=b {
            assert!(all.insert(id), "id {id} twice: {sums:?} {ids:?}");
        }
    }
    assert_eq!(all, listed(&dir.path().join("c.db")));
}

#[test]
fn event_log_rate_zero_in_the_config_file_logs_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "event_log_rate = 0\n").unwrap();
    let log = serve_and_load(dir.path(), &["--config", cfg.to_str().unwrap()], &[], 300);
    let (ids, sums) = parse(&log);
    assert!(sums.is_empty(), "{sums:?}");
    assert_eq!(ids.len(), 300);
    assert_eq!(
        ids.into_iter().collect::<BTreeSet<_>>(),
        listed(&dir.path().join("c.db"))
    );
}
