//! `serve` end to end with nothing Unix-only (no signals, no /proc, no setpriv): the tests
//! `scripts/test-windows` runs on the Windows build under Wine, and every platform runs.

mod common;

use capture::sender::SendState;
use common::*;

/// A record sent by a real capture sender is acked, then 200 canaries of `load` are all
/// acked; what was acked is in the database even though the collector is then killed without
/// warning (`TerminateProcess` on Windows): acks go out only after the commit.
#[test]
fn acked_records_are_stored_and_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let st = send_record(srv.addr, [5; 16], 1, &sample_bytes([5; 16], 1), None, None);
    assert!(matches!(st, SendState::Acked), "{st:?}");
    let out = run(&[
        "load",
        "--target",
        &srv.addr.to_string(),
        "--canaries",
        "200",
        "--records",
        "200",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["acked"], 200, "{r:#}");
    srv.kill9();
    assert_eq!(count_rows(&db), (201, 201));
    let list = run_db(&db, &["list", "--json"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
}

/// A second `serve` on a database another `serve` writes is refused (exit 3) and says why.
#[test]
fn a_second_writer_is_refused_while_the_first_serves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let out = run_db(&db, &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another `host-collector serve`"),
        "{}",
        stderr(&out)
    );
    srv.kill9();
}
