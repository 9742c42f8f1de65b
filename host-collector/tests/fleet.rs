//! Fleet operations end to end (issue 15): liveness from `load --heartbeats`, the event log
//! line, `--on-event` and `--webhook` (against a local HTTP server), `/metrics` and
//! `/healthz`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn load(addr: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
    let target = addr.to_string();
    let mut a = vec!["load", "--target", target.as_str(), "--json"];
    a.extend_from_slice(args);
    let o = run(&a);
    assert_eq!(o.status.code(), Some(0), "load: {}", stderr(&o));
    o
}

/// JSON lines the `--on-event` hook appended to `path`.
fn hook_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("hook line {l:?}: {e}")))
        .collect()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_canary_that_stops_heartbeating_turns_silent_within_the_threshold_with_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let hook = dir.path().join("events.jsonl");
    let cmd = format!("cat >> '{}'", hook.display());
    let mut srv = Server::start(
        &db,
        "127.0.0.1:0",
        &["--silence", "3", "--on-event", &cmd],
        &[],
    );
    // One canary: heartbeats every 100 ms for 1 s, then nothing (no record: it just stops).
    load(
        srv.addr,
        &[
            "--canaries",
            "1",
            "--records",
            "0",
            "--heartbeats",
            "100ms",
            "--heartbeat-for",
            "1s",
        ],
    );
    let alive = srv
        .wait_line(|l| l.contains("canary alive"), Duration::from_secs(5))
        .expect("an event line for the new canary");
    assert!(alive.contains("from=new"), "{alive}");
    let silent = srv
        .wait_line(|l| l.contains("canary silent"), Duration::from_secs(5))
        .expect("the canary turns silent");
    assert!(silent.contains("reason=\"no heartbeat for"), "{silent}");
    // Exactly one: no second silent event while it stays quiet.
    assert_eq!(
        srv.wait_line(|l| l.contains("canary silent"), Duration::from_millis(1500)),
        None
    );
    let evs = hook_events(&hook);
    let silent: Vec<_> = evs.iter().filter(|e| e["to"] == "silent").collect();
    assert_eq!(silent.len(), 1, "{evs:#?}");
    let e = silent[0];
    assert_eq!(e["event"], "canary_state");
    assert_eq!(e["from"], "alive");
    // The interval was measured from the heartbeats, and the event came after 3 intervals
    // without one, within a check period (250 ms) and some scheduling slack.
    let interval = e["interval_ms"].as_i64().unwrap();
    assert!((90..=110).contains(&interval), "{e}");
    let quiet_ms = (e["at_us"].as_i64().unwrap() - e["last_seen_us"].as_i64().unwrap()) / 1000;
    assert_eq!(e["last_seen_us"].as_i64().unwrap(), last_seen_us(&db));
    assert!(
        (3 * interval..=3 * interval + 500).contains(&quiet_ms),
        "silent after {quiet_ms} ms: {e}"
    );
    // `canaries` says so too, and filters by state.
    let o = run_db(&db, &["canaries", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json(&o);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["state"], "silent");
    assert_eq!(rows[0]["interval_ms"], interval);
    let o = run_db(&db, &["canaries", "--state", "alive"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = run_db(&db, &["canaries", "--state", "silent,crashed"]);
    assert_eq!(o.status.code(), Some(0));
    let t = stdout(&o);
    assert!(
        t.contains("silent") && t.contains("1 canary: 1 silent."),
        "{t}"
    );
    assert!(t.lines().all(|l| l.chars().count() <= 80), "{t}");
    assert_eq!(srv.stop("TERM"), 0);
}

/// The last heartbeat's arrival time of the only canary (from `canaries --json`).
fn last_seen_us(db: &Path) -> i64 {
    let o = run_db(db, &["canaries", "--json"]);
    json(&o)[0]["last_seen_us"].as_i64().unwrap()
}

/// A minimal HTTP endpoint in the test: collects the bodies POSTed to it.
struct Hooked {
    bodies: Arc<Mutex<Vec<String>>>,
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Hooked {
    fn start() -> Hooked {
        let srv = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", srv.server_addr().to_ip().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Some(mut req)) = srv.recv_timeout(Duration::from_millis(50)) {
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    assert_eq!(req.method(), &tiny_http::Method::Post);
                    b.lock().unwrap().push(body);
                    let _ = req.respond(tiny_http::Response::empty(204));
                }
            }
        });
        Hooked { bodies, url, stop }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

impl Drop for Hooked {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn crash_keys(evs: &[serde_json::Value]) -> Vec<(String, u64, i64)> {
    evs.iter()
        .filter(|e| e["event"] == "crash_stored")
        .map(|e| {
            (
                e["boot_id"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap(),
                e["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_hook_and_the_webhook_get_exactly_one_json_event_per_stored_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let hook = dir.path().join("events.jsonl");
    let web = Hooked::start();
    let cmd = format!("cat >> '{}'", hook.display());
    let mut srv = Server::start(
        &db,
        "127.0.0.1:0",
        &["--on-event", &cmd, "--webhook", &web.url],
        &[],
    );
    // 3 canaries, 30 records, with loss and duplicates: retransmits answered `duplicate`
    // must not make events.
    load(
        srv.addr,
        &[
            "--canaries",
            "3",
            "--records",
            "30",
            "--loss",
            "0.2",
            "--dup",
            "0.2",
            "--seed",
            "7",
        ],
    );
    let stored = wait_stats(&db, |s| s["records_stored"] == 30);
    let line = srv
        .wait_line(|l| l.contains("crash stored id="), Duration::from_secs(5))
        .expect("a log line per stored record");
    assert!(
        line.contains(" INFO ") && line.contains(" kind=") && line.contains(" host=127.0.0.1 "),
        "{line}"
    );
    let listed: BTreeSet<i64> = json(&run_db(&db, &["list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed.len(), 30, "{stored}");
    let hooked = wait_until("30 hook events", Duration::from_secs(20), || {
        let k = crash_keys(&hook_events(&hook));
        (k.len() >= 30).then_some(k)
    });
    let posted = wait_until("30 webhook events", Duration::from_secs(20), || {
        let k = crash_keys(&web.events());
        (k.len() >= 30).then_some(k)
    });
    // Nothing more arrives later.
    std::thread::sleep(Duration::from_millis(700));
    for (name, first, now) in [
        ("hook", hooked, crash_keys(&hook_events(&hook))),
        ("webhook", posted, crash_keys(&web.events())),
    ] {
        assert_eq!(first.len(), 30, "{name}");
        assert_eq!(now.len(), 30, "{name}: events after the first 30");
        let ids: BTreeSet<i64> = now.iter().map(|k| k.2).collect();
        assert_eq!(
            ids, listed,
            "{name}: one event per stored record, with its id"
        );
        let keys: BTreeSet<(String, u64)> = now.iter().map(|k| (k.0.clone(), k.1)).collect();
        assert_eq!(keys.len(), 30, "{name}");
    }
    // Each canary crashed once: one state event each, on both.
    for evs in [hook_events(&hook), web.events()] {
        let crashed = evs.iter().filter(|e| e["to"] == "crashed").count();
        assert_eq!(crashed, 3, "{evs:#?}");
    }
    assert_eq!(srv.stop("TERM"), 0);
    let s = stats(&db);
    assert_eq!(s["hook_runs"], 33, "{s:#}");
    assert_eq!(s["hook_failures"], 0, "{s:#}");
    assert_eq!(s["webhook_sent"], 33, "{s:#}");
    assert_eq!(s["webhook_dropped"], 0, "{s:#}");
}

#[test]
fn a_failing_hook_and_an_unreachable_webhook_are_counted_and_never_hold_acks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    // Port 9 on loopback: nothing listens there, every POST fails at once.
    let srv = Server::start(
        &db,
        "127.0.0.1:0",
        &[
            "--on-event",
            "sleep 0.2; exit 3",
            "--webhook",
            "http://127.0.0.1:9/x",
        ],
        &[],
    );
    let t = Instant::now();
    load(srv.addr, &["--canaries", "2", "--records", "10"]);
    // 10 records behind hooks that take 200 ms each (4 at a time): acks never wait for them.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_stats(&db, |s| s["hook_failures"] == 12);
    assert_eq!(srv.stop("TERM"), 0);
    let s = stats(&db);
    assert_eq!(s["records_stored"], 10);
    assert_eq!(s["hook_runs"], 12, "{s:#}");
    // The webhook retries with backoff; whatever did not fail for good by the end was cut
    // off by the 5 s grace at exit. No POST succeeded.
    assert_eq!(s["webhook_sent"], 0, "{s:#}");
}

fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[test]
fn metrics_parse_as_prometheus_text_and_their_counters_match_stats() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut srv = Server::start(&db, "127.0.0.1:0", &["--metrics", "127.0.0.1:0"], &[]);
    let line = srv
        .wait_line(|l| l.contains("metrics on http://"), Duration::from_secs(5))
        .expect("the metrics address");
    let base = line
        .split("metrics on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string();
    load(
        srv.addr,
        &[
            "--canaries",
            "4",
            "--records",
            "40",
            "--dup",
            "0.3",
            "--heartbeats",
            "50ms",
            "--heartbeat-for",
            "300ms",
        ],
    );
    // Something refused, too: a datagram with a bad CRC.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"CNRY not a frame at all, 32 bytes", srv.addr)
        .unwrap();
    wait_stats(&db, |s| {
        s["records_stored"] == 40 && s["acks_sent"].as_u64() >= Some(40) && s["bad_frames"] == 1
    });
    // Counters are written with each commit (and read from the database at each scrape):
    // wait until a scrape and `stats` agree on every counter.
    // prometheus-parse reads the Prometheus text format, where a counter's samples carry the
    // name of its TYPE line; in the OpenMetrics text that prometheus-client writes, counter
    // samples end in `_total`, so it reads them as untyped: their values are what counts.
    let num = |v: &prometheus_parse::Value| -> f64 {
        match v {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            o => panic!("not a number: {o:?}"),
        }
    };
    let (parsed, st) = wait_until("metrics equal to stats", Duration::from_secs(10), || {
        let (code, body) = http_get(&format!("{base}/metrics"));
        assert_eq!(code, 200, "{body}");
        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        let st = stats(&db);
        let counters = st
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !["records", "canaries", "schema_version"].contains(&k.as_str()));
        let mut n = 0;
        for (name, want) in counters {
            n += 1;
            let metric = format!("canary_collector_{name}_total");
            let got = scrape
                .samples
                .iter()
                .find(|x| x.metric == metric)
                .unwrap_or_else(|| panic!("no {metric} in\n{body}"));
            if want.as_f64() != Some(num(&got.value)) {
                return None;
            }
        }
        assert!(n >= 30, "{st}");
        Some((scrape, st))
    });
    let counter = |name: &str| -> f64 {
        let metric = format!("canary_collector_{name}_total");
        num(&parsed
            .samples
            .iter()
            .find(|x| x.metric == metric)
            .unwrap()
            .value)
    };
    assert_eq!(counter("records_stored"), 40.0);
    assert!(counter("heartbeats") > 0.0);
    assert!(counter("acks_sent") >= 40.0);
    assert_eq!(counter("bad_frames"), st["bad_frames"].as_f64().unwrap());
    let labelled = |metric: &str, label: &str, value: &str| -> f64 {
        parsed
            .samples
            .iter()
            .find(|x| x.metric == metric && x.labels.get(label) == Some(value))
            .map(|x| num(&x.value))
            .unwrap_or_else(|| panic!("no {metric}{{{label}={value}}}"))
    };
    assert_eq!(
        labelled(
            "canary_collector_rejected_by_reason_total",
            "reason",
            "bad_magic"
        ),
        st["bad_magic"].as_f64().unwrap()
    );
    // The 4 canaries heartbeated, then crashed.
    assert_eq!(
        labelled("canary_collector_canaries", "state", "crashed"),
        4.0
    );
    assert_eq!(labelled("canary_collector_canaries", "state", "alive"), 0.0);
    // Histograms: commit latency, and the step times of the 40 stored records.
    let hist_count = |metric: &str, label: Option<(&str, &str)>| -> u64 {
        parsed
            .samples
            .iter()
            .filter(|x| x.metric == metric)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match &x.value {
                prometheus_parse::Value::Histogram(b) => b.last().map(|b| b.count as u64).unwrap(),
                o => panic!("{metric}: {o:?}"),
            })
            .sum()
    };
    assert!(hist_count("canary_collector_commit_seconds", None) > 0);
    assert_eq!(
        hist_count(
            "canary_collector_panic_step_seconds",
            Some(("step", "freeze"))
        ),
        40
    );
    let (code, body) = http_get(&format!("{base}/healthz"));
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["writer_alive"], true);
    assert_eq!(h["database_writable"], true);
    assert!(h["last_commit_age_s"].as_f64().unwrap() < 5.0, "{h}");
    assert_eq!(http_get(&format!("{base}/nope")).0, 404);
    assert_eq!(srv.stop("TERM"), 0);
}

/// A fake canary on loopback: heartbeats every 100 ms from `port + 1` and listens for
/// drills on `port`, like the appliance (`drill_port`, `drill_port + 1`). When `answer`, a
/// drill makes it stop heartbeating and ship a record of kind `drill` (as `drill=insecure`).
struct FakeCanary {
    stop: Arc<std::sync::atomic::AtomicBool>,
    drilled: Arc<std::sync::atomic::AtomicU32>,
}

impl FakeCanary {
    fn start(collector: std::net::SocketAddr, answer: bool, boot: u8) -> FakeCanary {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let (drill, out) = loop {
            let d = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = d.local_addr().unwrap().port();
            if let Ok(o) = std::net::UdpSocket::bind(("127.0.0.1", p.wrapping_add(1))) {
                break (d, o);
            }
        };
        drill
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let drilled = Arc::new(AtomicU32::new(0));
        let (s, n) = (stop.clone(), drilled.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut seq = 0u32;
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let hb = capture::wire::Repr::Heartbeat(capture::wire::HeartbeatRepr {
                    boot_id: [boot; 16],
                    seq,
                    uptime_ms: t0.elapsed().as_millis() as u64,
                    arch: capture::record::Arch::X86_64,
                });
                let mut f = [0u8; capture::wire::MAX_DATAGRAM];
                let len = hb.emit(None, &mut f).unwrap();
                out.send_to(&f[..len], collector).unwrap();
                seq += 1;
                let Ok((len, _)) = drill.recv_from(&mut buf) else {
                    continue;
                };
                if !matches!(
                    capture::wire::parse(&buf[..len], None),
                    Ok(capture::wire::Repr::Drill(_))
                ) {
                    continue;
                }
                n.fetch_add(1, Ordering::Relaxed);
                if answer {
                    // Panic: no more heartbeats; ship the drill record from the same port.
                    let mut rec = capture::testutil::sample_record(1);
                    rec.boot_id = [boot; 16];
                    rec.kind = capture::record::CrashKind::Drill;
                    let mut enc = vec![0u8; capture::record::MAX_ENCODED_LEN];
                    let bytes = rec.encode(&mut enc).unwrap();
                    out.connect(collector).unwrap();
                    let t = Instant::now();
                    let now = || t.elapsed().as_millis() as u64;
                    let cfg = capture::sender::SenderConfig {
                        initial_rto_ms: 100,
                        max_rto_ms: 400,
                        deadline_ms: 10_000,
                    };
                    let mut snd =
                        capture::sender::Sender::new(cfg, [boot; 16], 1, bytes, None, now())
                            .unwrap();
                    out.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    loop {
                        let st = snd.poll(now(), &mut |d| {
                            let _ = out.send(d);
                        });
                        if !matches!(st, capture::sender::SendState::Waiting { .. }) {
                            break;
                        }
                        if let Ok(len) = out.recv(&mut buf) {
                            snd.handle(&buf[..len]);
                        }
                    }
                    return;
                }
            }
        });
        FakeCanary { stop, drilled }
    }
}

impl Drop for FakeCanary {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn scheduled_drills_bring_a_record_marked_drill_or_make_the_canary_drill_failed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let hook = dir.path().join("events.jsonl");
    let cmd = format!("cat >> '{}'", hook.display());
    let mut srv = Server::start(
        &db,
        "127.0.0.1:0",
        &[
            "--drill-every",
            "1s",
            "--drill-deadline",
            "2s",
            "--silence",
            "100",
            "--on-event",
            &cmd,
        ],
        &[],
    );
    let good = FakeCanary::start(srv.addr, true, 0x61);
    let mute = FakeCanary::start(srv.addr, false, 0x62);
    // Both, in either order: a drill record answering a scheduled drill, and the canary
    // that does not answer turning drill-failed.
    let (mut answered, mut failed) = (None, false);
    let end = Instant::now() + Duration::from_secs(20);
    while answered.is_none() || !failed {
        let left = end.saturating_duration_since(Instant::now());
        let l = srv
            .wait_line(
                |l| l.contains("drill=scheduled") || l.contains("canary drill-failed"),
                left,
            )
            .unwrap_or_else(|| panic!("answered: {answered:?}, drill-failed: {failed}"));
        if l.contains("drill=scheduled") {
            answered = Some(l);
        } else {
            failed = true;
        }
    }
    let line = answered.unwrap();
    assert!(line.contains("kind=drill"), "{line}");
    assert!(good.drilled.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(mute.drilled.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // The hook runs after the log line: wait for it, then a little more for any second
    // drill-failed event (there must be none: the state does not change again).
    wait_until(
        "the drill-failed hook event",
        Duration::from_secs(5),
        || {
            hook_events(&hook)
                .iter()
                .any(|e| e["to"] == "drill-failed")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(2500));
    let evs = hook_events(&hook);
    let rec = evs
        .iter()
        .find(|e| e["event"] == "crash_stored")
        .expect("the drill record's event");
    assert_eq!(rec["kind"], "drill");
    assert_eq!(rec["drill"], true);
    assert_eq!(rec["boot_id"], "61".repeat(16));
    let failed: Vec<_> = evs.iter().filter(|e| e["to"] == "drill-failed").collect();
    assert_eq!(failed.len(), 1, "{evs:#?}");
    assert_eq!(failed[0]["boot_id"], "62".repeat(16));
    let o = run_db(&db, &["canaries", "--json"]);
    let rows = json(&o);
    let state = |b: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["boot_id"] == b.repeat(16))
            .map(|r| r["state"].clone())
    };
    assert_eq!(state("61"), Some("crashed".into()));
    assert_eq!(state("62"), Some("drill-failed".into()));
    assert_eq!(srv.stop("TERM"), 0);
}

#[test]
fn fleet_flags_that_cannot_work_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let db = db.to_str().unwrap();
    for (args, says) in [
        (&["--webhook", "https://example.com/x"][..], "http:// URL"),
        (&["--silence", "0"][..], "--silence 0"),
        (&["--drill-every", "0s"][..], "--drill-every 0"),
        (&["--drill-every", "soon"][..], "--drill-every"),
    ] {
        let mut a = vec!["--db", db, "serve", "--listen", "127.0.0.1:0"];
        a.extend_from_slice(args);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // `canaries` on a database without any: exit 1, like `list`.
    common::db_with(std::path::Path::new(db), &[(1, 1, "x")]);
    let o = run(&["--db", db, "canaries"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("No canaries found."), "{}", stderr(&o));
}
