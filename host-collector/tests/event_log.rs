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
    serve_load_then(dir, global, args, records, |_| {})
}

/// [`serve_and_load`], calling `running` with serve's stderr so far before stopping it.
fn serve_load_then(
    dir: &Path,
    global: &[&str],
    args: &[&str],
    records: u32,
    running: impl FnOnce(&str),
) -> String {
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
    running(&std::fs::read_to_string(&log).unwrap());
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

#[test]
fn past_the_event_log_rate_hooks_and_step_metrics_still_get_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("events.jsonl");
    let cmd = format!("cat >> '{}'", hook.display());
    let args = [
        "--event-log-rate",
        "5",
        "--on-event",
        &cmd,
        "--metrics",
        "127.0.0.1:0",
    ];
    let log = serve_load_then(dir.path(), &[], &args, 40, |log| {
        let addr = log
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("the metrics address");
        let body = ureq::get(&format!("http://{addr}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let counts: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("canary_collector_panic_step_seconds_count{"))
            .collect();
        assert_eq!(counts.len(), 7, "{body}");
        for l in counts {
            assert!(l.ends_with(" 40"), "{l}");
        }
        // One JSON event per stored record (the hooks run one at a time at most 4 at once).
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&hook).unwrap_or_default();
            let n = text.matches("\"event\":\"crash_stored\"").count();
            if n >= 40 || Instant::now() > end {
                assert_eq!(n, 40, "{text}");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (ids, sums) = parse(&log);
    assert!(ids.len() < 40, "{log}");
    assert_eq!(ids.len() as i64 + sums.iter().map(|s| s.0).sum::<i64>(), 40);
    // The canaries' state changes all got their line.
    assert_eq!(log.matches("canary crashed ").count(), 10, "{log}");
}
