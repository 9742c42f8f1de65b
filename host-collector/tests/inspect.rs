//! `symbols`, `show` with symbols and machine state, and `stats --steps`, end to end: records
//! sent over UDP to a real `serve`, read back with the CLI.
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use capture::panic::{Outcome, Step, StepRecord};
use capture::record::{CrashKind, CrashRecord, ImageIdKind, MAX_ENCODED_LEN};
use capture::sender::{SendState, Sender, SenderConfig};
use common::*;
use object::{Object, ObjectSegment, ObjectSymbol};

/// Sends `r` from a socket bound to `from_ip` (a loopback address: a simulated host).
fn send_from(to: SocketAddr, from_ip: &str, r: &CrashRecord) {
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let bytes = r.encode(&mut buf).unwrap().to_vec();
    let sock = UdpSocket::bind((from_ip, 0)).unwrap();
    sock.connect(to).unwrap();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let cfg = SenderConfig {
        initial_rto_ms: 300,
        max_rto_ms: 1_000,
        deadline_ms: 10_000,
    };
    let mut s = Sender::new(cfg, r.boot_id, r.seq, &bytes, None, now()).unwrap();
    let mut rx = [0u8; 2048];
    loop {
        match s.poll(now(), &mut |d| {
            let _ = sock.send(d);
        }) {
            SendState::Waiting { next_ms } => {
                let wait = next_ms.saturating_sub(now()).max(1);
                sock.set_read_timeout(Some(Duration::from_millis(wait)))
                    .unwrap();
                if let Ok(n) = sock.recv(&mut rx) {
                    s.handle(&rx[..n]);
                }
            }
            SendState::Acked => return,
            other => panic!("record from {from_ip} not acked: {other:?}"),
        }
    }
}

fn record(n: u32, steps: &[(Step, Outcome, u32)]) -> CrashRecord {
    let mut r = capture::testutil::sample_record(n);
    r.boot_id = [n as u8; 16];
    r.boot_id[0] = (n >> 8) as u8;
    r.seq = 1;
    r.steps.clear();
    for &(step, outcome, elapsed_us) in steps {
        r.steps
            .push(StepRecord {
                step,
                outcome,
                elapsed_us,
            })
            .unwrap();
    }
    r
}

/// Three simulated hosts (127.0.0.2-4) whose UNLOAD takes 1x, 10x and 100x as long: `stats
/// --steps` gives each host its own p50/p99 per step; a pending step has no time.
#[test]
fn stats_steps_on_records_from_three_hosts_prints_p50_and_p99_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let mut n = 0;
    for (ip, scale) in [("127.0.0.2", 1u32), ("127.0.0.3", 10), ("127.0.0.4", 100)] {
        for i in 1..=20u32 {
            n += 1;
            let r = record(
                n,
                &[
                    (Step::Freeze, Outcome::Done, 400 + i),
                    (Step::VmbusUnload, Outcome::Done, 100 * i * scale),
                    (Step::Ship, Outcome::Pending, 0),
                ],
            );
            send_from(srv.addr, ip, &r);
        }
    }
    let o = run_db(&db, &["stats", "--steps", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json(&o);
    let get = |host: &str, step: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == host && r["step"] == step)
            .unwrap_or_else(|| panic!("no {host} {step}: {rows:#}"))
            .clone()
    };
    for (host, scale) in [("127.0.0.2", 1u64), ("127.0.0.3", 10), ("127.0.0.4", 100)] {
        let u = get(host, "vmbus-unload");
        assert_eq!(u["records"], 20, "{u}");
        // Nearest rank over 100*i*scale, i = 1..=20: p50 is the 10th, p99 the 20th.
        assert_eq!(u["p50_us"], 1000 * scale, "{u}");
        assert_eq!(u["p99_us"], 2000 * scale, "{u}");
        let f = get(host, "freeze");
        assert_eq!(
            (f["p50_us"].as_u64(), f["p99_us"].as_u64()),
            (Some(410), Some(420))
        );
    }
    assert!(
        !rows.as_array().unwrap().iter().any(|r| r["step"] == "ship"),
        "a pending step has no time: {rows:#}"
    );
    // The table, and one host.
    let o = run_db(&db, &["stats", "--steps"]);
    let t = stdout(&o);
    assert!(t.starts_with("HOST"), "{t}");
    assert!(
        t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["127.0.0.3", "vmbus-unload", "20", "10000", "20000", "20000"]),
        "{t}"
    );
    let o = run_db(&db, &["stats", "--steps", "--host", "127.0.0.4", "--json"]);
    let only = json(&o);
    assert!(only
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["host"] == "127.0.0.4"));
    assert_eq!(only.as_array().unwrap().len(), 2);
    srv.stop("TERM");
}

#[inline(never)]
fn a_function_that_crashed() -> u32 {
    std::hint::black_box(7)
}

/// The run-time address of this test binary's lowest segment and of `a_function_that_crashed`.
fn own_image() -> (Vec<u8>, u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let id = file
        .build_id()
        .unwrap()
        .expect("test binary has a build id");
    let low = file.segments().map(|s| s.address()).min().unwrap();
    let sym = file
        .symbols()
        .find(|s| {
            s.name()
                .is_ok_and(|n| n.contains("a_function_that_crashed"))
        })
        .expect("symbol");
    let f = a_function_that_crashed as *const () as u64;
    assert_eq!(a_function_that_crashed(), 7);
    (id.to_vec(), f - sym.address() + low, f)
}

/// A fault record naming this test binary by build id: raw addresses and a note before
/// `symbols add`, `function+0xoff (file:line)` after; registers by name; the #PF spelled out.
#[test]
fn show_resolves_after_symbols_add_and_says_addresses_are_raw_before() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let syms = dir.path().join("syms");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let (id, base, f) = own_image();
    let mut r = record(1, &[(Step::Freeze, Outcome::Done, 10)]);
    r.ext.image_id_kind = ImageIdKind::GnuBuildId;
    r.ext.image_id.extend_from_slice(&id).unwrap();
    r.ext.load_base = base;
    r.kind = CrashKind::Fault {
        vector: 14 | 2 << 8,
        addr: 0xdead_0000,
    };
    r.registers.pc = f + 2;
    r.registers.gpr.clear();
    for i in 0..23u64 {
        r.registers
            .gpr
            .push(if i == 20 { 0xdead_0000 } else { i })
            .unwrap();
    }
    r.backtrace.clear();
    r.backtrace.push(f + 2).unwrap();
    r.backtrace.push(0x10).unwrap();
    send_from(srv.addr, "127.0.0.1", &r);
    let sd = syms.to_str().unwrap();
    let show = || json(&run_db(&db, &["show", "--json", "--symbols", sd]));
    let v = show();
    assert_eq!(v["symbols"]["status"], "not-in-store", "{v:#}");
    assert!(
        v["symbols"]["note"]
            .as_str()
            .unwrap()
            .contains("host-collector symbols add"),
        "{v:#}"
    );
    assert_eq!(v["pc"]["text"], format!("{:#x}", f + 2));
    let human = stdout(&run_db(&db, &["show", "--symbols", sd]));
    assert!(human.contains("addresses are raw"), "{human}");
    // Named registers and the fault, with or without symbols.
    assert_eq!(v["named_registers"][0]["name"], "rax");
    assert_eq!(v["named_registers"][20]["name"], "cr2");
    assert_eq!(v["fault"]["name"], "page fault (#PF)");
    assert_eq!(v["fault"]["address"], "0xdead0000");
    assert!(human.contains("write (W/R=1)"), "{human}");
    assert!(human.contains("cr2=0xdead0000"), "{human}");

    let exe = std::env::current_exe().unwrap();
    let o = run_db(
        &db,
        &["symbols", "--symbols", sd, "add", exe.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let list = json(&run_db(
        &db,
        &["symbols", "--symbols", sd, "list", "--json"],
    ));
    assert_eq!(list[0]["kind"], "gnu-build-id");
    assert_eq!(v["image"]["id"], list[0]["id"]);
    let v = show();
    assert_eq!(v["symbols"]["status"], "resolved", "{v:#}");
    let pc = &v["pc"];
    assert!(
        pc["function"]
            .as_str()
            .unwrap()
            .ends_with("inspect::a_function_that_crashed"),
        "{v:#}"
    );
    assert_eq!(pc["offset"], "0x2");
    assert!(
        pc["file"].as_str().unwrap().ends_with("tests/inspect.rs"),
        "{v:#}"
    );
    assert!(pc["line"].as_u64().unwrap() > 0);
    // The fault's first frame is the pc itself; the second is outside the image.
    assert_eq!(v["frames"][0]["function"], pc["function"]);
    assert_eq!(v["frames"][1]["text"], "0x10");
    let human = stdout(&run_db(&db, &["show", "--symbols", sd]));
    assert!(
        human.contains("a_function_that_crashed+0x2 (") && human.contains("inspect.rs:"),
        "{human}"
    );
    srv.stop("TERM");
}

/// A record without an image id (schema 1.0 fields only) shows raw addresses and says why.
#[test]
fn a_record_without_an_image_id_shows_raw_addresses_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let r = record(2, &[(Step::Freeze, Outcome::Done, 10)]);
    send_from(srv.addr, "127.0.0.1", &r);
    let v = json(&run_db(&db, &["show", "--json"]));
    assert_eq!(v["symbols"]["status"], "no-image-id", "{v:#}");
    assert_eq!(v["image"]["id_kind"], "none");
    assert_eq!(v["frames"].as_array().unwrap().len(), r.backtrace.len());
    assert_eq!(
        v["frames"][0]["text"],
        format!("{:#x}", r.backtrace[0]),
        "{v:#}"
    );
    srv.stop("TERM");
}
