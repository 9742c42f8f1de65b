//! Operator mistakes and odd inputs (issue 12, items 1, 2, 3, 5, 7, 8 and 9): every test here
//! failed on d5727b9.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const HOUR_US: i64 = 3_600_000_000;

/// Three records received 3 h, 2 h and 1 h ago.
fn three_records(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("c.db");
    let now = host_collector::util::now_us();
    db_with(
        &db,
        &[
            (1, now - 3 * HOUR_US, "one"),
            (2, now - 2 * HOUR_US, "two"),
            (3, now - HOUR_US, "three"),
        ],
    );
    db
}

fn records(db: &Path) -> u64 {
    stats(db)["records"].as_u64().unwrap()
}

// Item 1: durations are checked, not wrapped; prune says what it deletes and refuses to
// delete everything without --all.
#[test]
fn durations_that_do_not_fit_are_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let db = three_records(dir.path());
    let o = run_db(&db, &["prune", "--older-than", "300000years"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("300000years"), "{}", stderr(&o));
    assert_eq!(records(&db), 3, "nothing was deleted");
    let o = run_db(&db, &["list", "--until", "300000years", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    // A duration that fits but reaches before 1970 simply matches nothing.
    let o = run_db(&db, &["list", "--until", "60years"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn prune_refuses_to_delete_every_record_without_all_and_says_what_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let db = three_records(dir.path());
    for args in [
        &["prune", "--older-than", "0"][..],
        &["prune", "--keep", "0"],
        &["prune", "--older-than", "1s"],
    ] {
        let o = run_db(&db, args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stderr(&o).contains("--all"), "{args:?}: {}", stderr(&o));
        assert_eq!(records(&db), 3, "{args:?} deleted records");
    }
    let o = run_db(&db, &["prune", "--older-than", "90min", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Would delete 2 of 3 crash records"),
        "{}",
        stdout(&o)
    );
    assert_eq!(records(&db), 3, "--dry-run deletes nothing");
    let o = run_db(&db, &["prune", "--older-than", "150min"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Deleted 1 of 3 crash records"),
        "{}",
        stdout(&o)
    );
    assert_eq!(records(&db), 2);
    let o = run_db(&db, &["prune", "--keep", "0", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(records(&db), 0);
}

// Item 2: one writer per database file, whatever name reaches it.
// Unix: symlinks as std::os::unix makes them.
#[cfg(unix)]
#[test]
fn one_serve_per_database_file_through_symlinks_hard_links_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let db = dir.path().join("a.db");
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    std::os::unix::fs::symlink(&db, dir.path().join("sym.db")).unwrap();
    std::fs::hard_link(&db, dir.path().join("hard.db")).unwrap();
    for name in ["sym.db", "hard.db", "./sub/../a.db", "a.db"] {
        let r = serve_exits(name, dir.path(), &[], Duration::from_secs(5));
        let (code, err) = r.unwrap_or_else(|| panic!("a second serve on {name} kept running"));
        assert_eq!(code, 3, "{name}: {err}");
        assert!(
            err.contains("another `host-collector serve`"),
            "{name}: {err}"
        );
    }
    assert_eq!(srv.stop("TERM"), 0);
}

// Item 3: storage that is not durable, or not sound, is refused before anything is acked.
#[test]
fn serve_refuses_in_memory_and_uri_databases() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        ":memory:",
        "file:x.db?mode=memory",
        "file::memory:?cache=shared",
    ] {
        let r = serve_exits(name, dir.path(), &[], Duration::from_secs(5));
        let (code, err) = r.unwrap_or_else(|| panic!("serve --db {name:?} kept running"));
        assert_eq!(code, 2, "{name:?}: {err}");
        assert!(err.contains("file"), "{name:?}: {err}");
    }
}

#[test]
fn serve_refuses_a_corrupt_or_foreign_database_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let now = host_collector::util::now_us();
    let recs: Vec<(u32, i64, String)> = (0..200).map(|i| (i, now, "x".repeat(3000))).collect();
    let recs: Vec<(u32, i64, &str)> = recs.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
    db_with(&db, &recs);
    // Overwrite the records table's root page, after its page header, with garbage (its page
    // number and the page size read from the database: new databases have 8 KiB pages, older
    // ones 16 KiB).
    let (root, page): (i64, i64) = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let root = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'records'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let page = c
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        (root, page)
    };
    assert!(file_len(&db) > 8 * page as u64, "{}", file_len(&db));
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(((root - 1) * page + 8) as u64))
            .unwrap();
        f.write_all(&[0xa5; 4000]).unwrap();
    }
    let dbs = db.to_str().unwrap();
    let r = serve_exits(dbs, dir.path(), &[], Duration::from_secs(10));
    let (code, err) = r.expect("serve on a corrupt database kept running");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(!err.contains("listening"), "{err}");

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "these are not crash records\n".repeat(200)).unwrap();
    let r = serve_exits(
        foreign.to_str().unwrap(),
        dir.path(),
        &[],
        Duration::from_secs(5),
    );
    let (code, err) = r.expect("serve on a text file kept running");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not a SQLite database"), "{err}");

    // A SQLite database of some other program.
    let other = dir.path().join("other.db");
    let c = rusqlite::Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('x');")
        .unwrap();
    drop(c);
    let r = serve_exits(
        other.to_str().unwrap(),
        dir.path(),
        &[],
        Duration::from_secs(5),
    );
    let (code, err) = r.expect("serve on another program's database kept running");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not a canary database"), "{err}");
}

// Items 3 and 7: reading commands open read-only and never create or change a database.
#[test]
fn reading_commands_never_turn_an_empty_file_into_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    for args in [
        &["list"][..],
        &["stats"],
        &["show"],
        &["export"],
        &["prune", "--keep", "1"],
    ] {
        let o = run_db(&empty, args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("empty"), "{args:?}: {}", stderr(&o));
        assert_eq!(file_len(&empty), 0, "{args:?} wrote to the empty file");
        assert!(!wal_of(&empty).exists(), "{args:?} made a WAL");
    }
}

/// Runs the binary as user `nobody` (who may read but not write the database).
#[cfg(unix)]
fn run_as_nobody(db: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--db",
        ])
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

// Unix: Unix permissions and setpriv.
#[cfg(unix)]
#[test]
fn reading_commands_work_with_read_only_access() {
    let dir = tempfile::tempdir().unwrap();
    let db = three_records(dir.path());
    // Readable by everyone, writable by nobody but root; the directory too.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    for args in [
        &["list"][..],
        &["show", "1"],
        &["export"],
        &["stats"],
        &["stats", "--json"],
        &["tail", "-n", "2", "--count", "0"],
    ] {
        let o = run_as_nobody(&db, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    // Also while serve runs (it made the WAL and shared-memory files, as root).
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let o = run_as_nobody(&db, &["list", "--no-legend"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    assert_eq!(srv.stop("TERM"), 0);
}

// Item 5: record text never reaches the terminal raw.
#[test]
fn human_output_escapes_control_characters_and_json_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let evil = "clear\x1b[2J title\x1b]0;pwned\x07 red\x1b[31m bell\x07 c1\u{9b}31m";
    db_with(&db, &[(1, host_collector::util::now_us(), evil)]);
    for args in [
        &["list"][..],
        &["show"],
        &["show", "1"],
        &["tail", "-n", "1", "--count", "0"],
        &["stats"],
    ] {
        let o = run_db(&db, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let out = &o.stdout;
        let raw_controls: Vec<u8> = out
            .iter()
            .copied()
            .filter(|b| (*b < 0x20 && *b != b'\n') || *b == 0x7f)
            .collect();
        assert!(raw_controls.is_empty(), "{args:?} printed {raw_controls:?}");
        assert!(
            !stdout(&o).contains('\u{9b}'),
            "{args:?} printed a C1 control"
        );
        if args[0] != "stats" {
            assert!(stdout(&o).contains("\\x1b[2J"), "{args:?}: {}", stdout(&o));
        }
    }
    let o = run_db(&db, &["list", "--json"]);
    assert_eq!(json(&o)[0]["message"], evil);
    let o = run_db(&db, &["show", "--json"]);
    assert_eq!(json(&o)["message"], evil);
}

// Item 8: `load` checks its arguments against the machine, and has one deadline.
#[test]
fn load_refuses_what_the_machine_cannot_do() {
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = dead.local_addr().unwrap().to_string();
    for args in [
        &["--canaries", "4294967295", "--records", "1"][..],
        &["--canaries", "1", "--records", "18446744073709551615"],
        &["--canaries", "2", "--records", "9000000000"],
    ] {
        // An address space limit, so that a load that tries anyway fails fast instead of
        // eating the machine.
        let o = std::process::Command::new("prlimit")
            .args(["--as=2147483648", "--", BIN, "load", "--target", &target])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("at most"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn load_has_one_deadline_for_the_whole_run() {
    // Nobody answers: every record would time out in turn.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = dead.local_addr().unwrap().to_string();
    let t = Instant::now();
    let mut child = std::process::Command::new(BIN)
        .args([
            "load",
            "--target",
            &target,
            "--canaries",
            "1",
            "--records",
            "20",
        ])
        .args(["--deadline", "2s", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("load kept running past its 2 s deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(4));
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn list_n_accepts_any_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = three_records(dir.path());
    let o = run_db(&db, &["list", "-n", "18446744073709551615", "--no-legend"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3);
    let o = run_db(&db, &["tail", "-n", "18446744073709551615", "--count", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3);
}

// Item 9: each cause once; usage errors exit 2.
#[test]
fn errors_name_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "--db",
        "/nonexistent-dir/x.db",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let e = stderr(&o);
    assert_eq!(e.matches("/nonexistent-dir/x.db").count(), 1, "{e}");
    assert_eq!(e.to_lowercase().matches("unable to open").count(), 1, "{e}");
    let o = run(&["--config", "/nonexistent.toml", "stats"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).matches("No such file").count(),
        1,
        "{}",
        stderr(&o)
    );
    let db = dir.path().join("c.db");
    let o = run_db(&db, &["serve", "--listen", "192.0.2.1:7"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).matches("Cannot assign").count(),
        1,
        "{}",
        stderr(&o)
    );
    let foreign = dir.path().join("f.db");
    std::fs::write(&foreign, "hello").unwrap();
    let o = run_db(&foreign, &["list"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o).to_lowercase().matches("not a").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_found_after_parsing_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = three_records(dir.path());
    for args in [
        &["list", "--since", "yesterday-ish"][..],
        &["export", "--until", "soon"],
        &["show", "zz:1"],
        &["tail", "--interval", "often"],
        &["tail", "--count", "1", "--timeout", "later"],
        &["prune", "--older-than", "ages"],
        &["load", "--loss", "2", "--records", "1"],
        &["load", "--canaries", "0"],
        &["load", "--deadline", "never"],
        &["serve", "--listen", "127.0.0.1:0", "--max-age", "forever"],
    ] {
        let o = run_db(&db, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("host-collector: error: "),
            "{args:?}: {}",
            stderr(&o)
        );
        assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {}", stderr(&o));
    }
    let o = run(&["--help"]);
    assert!(stdout(&o).contains("2  bad usage"), "{}", stdout(&o));
}
