//! Several `serve` processes on one PostgreSQL database (`$CANARY_TEST_PG`; skipped without
//! it unless `CANARY_REQUIRE_PG=1`, see `store::pg::testing`): the same records sent to
//! two collectors at 20% loss each way are stored once and acked by both; a collector
//! killed with SIGKILL loses no record it acked; a collector whose database goes away
//! stops acking and acks again once it is back.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capture::sender::{SendState, Sender, SenderConfig};
use capture::wire::AckStatus;
use common::*;
use host_collector::store::pg::testing::TestDb;

/// xorshift64*: the test's loss is reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Sends one record to `to`, losing `loss` of the datagrams each way. The final state and
/// the ack's status.
fn send_lossy(
    to: SocketAddr,
    boot_id: [u8; 16],
    seq: u32,
    bytes: &[u8],
    loss: f64,
    rng: &mut Rng,
    deadline_ms: u64,
) -> (SendState, Option<AckStatus>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(to).unwrap();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let cfg = SenderConfig {
        initial_rto_ms: 100,
        max_rto_ms: 400,
        deadline_ms,
    };
    let mut s = Sender::new(cfg, boot_id, seq, bytes, None, now()).unwrap();
    let mut buf = [0u8; 2048];
    loop {
        let st = s.poll(now(), &mut |d| {
            if !rng.chance(loss) {
                let _ = sock.send(d);
            }
        });
        match st {
            SendState::Waiting { next_ms } => {
                let wait = next_ms.saturating_sub(now()).max(1);
                sock.set_read_timeout(Some(Duration::from_millis(wait)))
                    .unwrap();
                if let Ok(n) = sock.recv(&mut buf) {
                    if !rng.chance(loss) {
                        s.handle(&buf[..n]);
                    }
                }
            }
            other => return (other, s.ack_status()),
        }
    }
}

/// The records of the test: `canaries` boots of `per` records each.
fn records(tag: u8, canaries: u32, per: u32) -> Vec<([u8; 16], u32, Vec<u8>)> {
    let mut v = Vec::new();
    for c in 0..canaries {
        let mut boot = [tag; 16];
        boot[..4].copy_from_slice(&c.to_be_bytes());
        for seq in 0..per {
            v.push((boot, seq, sample_bytes(boot, seq)));
        }
    }
    v
}

/// Sends every record to `to` from `threads` threads; returns (boot, seq, state, status) of
/// each.
fn send_all(
    to: SocketAddr,
    recs: &[([u8; 16], u32, Vec<u8>)],
    threads: usize,
    seed: u64,
    deadline_ms: u64,
    gone: &AtomicBool,
) -> Vec<([u8; 16], u32, SendState, Option<AckStatus>)> {
    let per = recs.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let hs: Vec<_> = recs
            .chunks(per)
            .enumerate()
            .map(|(i, chunk)| {
                sc.spawn(move || {
                    let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    chunk
                        .iter()
                        .map(|(b, s, bytes)| {
                            if gone.load(Ordering::Relaxed) {
                                // The collector is dead: nothing more to learn from it.
                                return (*b, *s, SendState::TimedOut, None);
                            }
                            let (st, status) =
                                send_lossy(to, *b, *s, bytes, 0.2, &mut rng, deadline_ms);
                            (*b, *s, st, status)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn start(db: &TestDb) -> Server {
    Server::start(Path::new(&db.url), "127.0.0.1:0", &[], &[])
}

fn rows(db: &TestDb) -> (i64, i64) {
    (
        db.query_i64("SELECT count(*) FROM records").unwrap(),
        db.query_i64(
            "SELECT count(*) FROM (SELECT DISTINCT boot_id, seq, record_crc FROM records) k",
        )
        .unwrap(),
    )
}

#[test]
fn two_collectors_given_the_same_records_at_20_percent_loss_store_each_once_and_both_ack_all() {
    let Some(db) = TestDb::create("two_collectors_same_records") else {
        return;
    };
    let a = start(&db);
    let b = start(&db);
    let recs = records(0xa1, 100, 20);
    assert_eq!(recs.len(), 2000);
    let t = Instant::now();
    let (ra, rb) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| send_all(a.addr, &recs, 24, 1, 30_000, &AtomicBool::new(false)));
        let hb = sc.spawn(|| send_all(b.addr, &recs, 24, 2, 30_000, &AtomicBool::new(false)));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    eprintln!("2 x 2000 records at 20% loss each way: {:?}", t.elapsed());
    for (name, r) in [("a", &ra), ("b", &rb)] {
        let not_acked: Vec<_> = r
            .iter()
            .filter(|x| x.2 != SendState::Acked)
            .map(|x| (x.1, x.2))
            .collect();
        assert!(
            not_acked.is_empty(),
            "collector {name} left {} unacked: {:?}",
            not_acked.len(),
            &not_acked[..not_acked.len().min(5)]
        );
    }
    assert_eq!(rows(&db), (2000, 2000), "one row per record");
    // The stored acks add up: every record was stored by one transaction of one of them.
    let stored = db
        .query_i64("SELECT sum(value)::int8 FROM counters WHERE name = 'records_stored'")
        .unwrap();
    assert_eq!(stored, 2000);
    // A record acked `stored` to one sender was not also stored by the other collector:
    // the keys both senders saw `stored` for can only be the first ack of one collector
    // and a lost-ack retransmit answered `duplicate`... so no key is `stored` on both.
    let sa: HashSet<_> = ra
        .iter()
        .filter(|x| x.3 == Some(AckStatus::Stored))
        .map(|x| (x.0, x.1))
        .collect();
    let sb: HashSet<_> = rb
        .iter()
        .filter(|x| x.3 == Some(AckStatus::Stored))
        .map(|x| (x.0, x.1))
        .collect();
    assert!(
        sa.is_disjoint(&sb),
        "a record acked `stored` by both collectors"
    );
    assert_eq!(a.stop("TERM"), 0);
    assert_eq!(b.stop("TERM"), 0);
    // The reading commands see the whole fleet's records.
    let st = json(&run(&["--db", &db.url, "stats", "--json"]));
    assert_eq!(st["records"], 2000, "{st}");
    let boot = hex(&recs[7].0);
    let o = run(&["--db", &db.url, "show", &format!("{boot}:7"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["seq"], 7, "{v}");
    assert_eq!(v["boot_id"], boot.as_str(), "{v}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_password_in_the_db_url_on_the_command_line_is_refused() {
    let o = run(&[
        "--db",
        "postgres://canary:s3cret@127.0.0.1:1/fleet",
        "stats",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--db-password-file"), "{e}");
    assert!(!e.contains("s3cret"), "the password is repeated: {e}");
}

#[test]
fn a_collector_killed_mid_run_loses_no_record_it_acked() {
    let Some(db) = TestDb::create("kill9_fleet") else {
        return;
    };
    let a = start(&db);
    let b = start(&db);
    let recs = records(0xb2, 50, 20);
    let a_gone = AtomicBool::new(false);
    let pid = a.child.as_ref().unwrap().id();
    let (ra, rb) = std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
            a_gone.store(true, Ordering::Relaxed);
        });
        let ha = sc.spawn(|| send_all(a.addr, &recs, 16, 3, 3_000, &a_gone));
        let hb = sc.spawn(|| send_all(b.addr, &recs, 16, 4, 30_000, &AtomicBool::new(false)));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let acked_a: Vec<_> = ra.iter().filter(|x| x.2 == SendState::Acked).collect();
    assert!(
        !acked_a.is_empty(),
        "collector a acked nothing before it was killed"
    );
    assert!(
        acked_a.len() < recs.len(),
        "collector a was not killed mid-run"
    );
    // Every record the killed collector acked is stored.
    let conn_url = db.url.clone();
    let mut c = postgres::Client::connect(&conn_url, postgres::NoTls).unwrap();
    for x in &acked_a {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM records WHERE boot_id = $1 AND seq = $2",
                &[&&x.0[..], &(x.1 as i64)],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            n,
            1,
            "record {:?}:{} acked by the killed collector is not stored",
            &x.0[..4],
            x.1
        );
    }
    assert!(
        rb.iter().all(|x| x.2 == SendState::Acked),
        "the surviving collector acks all"
    );
    assert_eq!(rows(&db), (1000, 1000));
    drop(a);
    assert_eq!(b.stop("TERM"), 0);
}

#[test]
fn a_collector_whose_database_goes_away_stops_acking_and_resumes() {
    let Some(db) = TestDb::create("database_goes_away") else {
        return;
    };
    let mut s = start(&db);
    let recs = records(0xc3, 1, 3);
    let mut rng = Rng(7);
    let send = |r: &([u8; 16], u32, Vec<u8>), deadline: u64, rng: &mut Rng| {
        send_lossy(s.addr, r.0, r.1, &r.2, 0.0, rng, deadline)
    };
    assert_eq!(send(&recs[0], 5_000, &mut rng).1, Some(AckStatus::Stored));
    db.refuse_connections().unwrap();
    let (st, _) = send(&recs[1], 2_000, &mut rng);
    assert_eq!(st, SendState::TimedOut, "acked while the database was away");
    db.allow_connections().unwrap();
    let t = Instant::now();
    let (st, status) = send(&recs[1], 20_000, &mut rng);
    assert_eq!((st, status), (SendState::Acked, Some(AckStatus::Stored)));
    eprintln!(
        "acking again {:?} after the database came back",
        t.elapsed()
    );
    assert_eq!(send(&recs[2], 5_000, &mut rng).1, Some(AckStatus::Stored));
    assert_eq!(rows(&db), (3, 3));
    assert!(
        s.wait_line(
            |l| l.contains("commit of") && l.contains("failed"),
            Duration::from_secs(1)
        )
        .is_some(),
        "the failed commits are logged"
    );
    assert_eq!(s.stop("TERM"), 0);
}
