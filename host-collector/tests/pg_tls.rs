//! TLS to PostgreSQL (`sslmode`, `sslrootcert`) against the throwaway server of
//! `scripts/pg-cluster`: it serves TLS with a certificate for DNS:localhost and IP:127.0.0.1
//! signed by a throwaway CA (`$CANARY_TEST_PG_CA`), and admits the role `canary_tls` only
//! over TLS. Skipped without `$CANARY_TEST_PG` / `$CANARY_TEST_PG_CA` unless
//! `CANARY_REQUIRE_PG=1` (see `store::pg::testing`).
//!
//! Each test would fail if TLS were not used (the server reports the session unencrypted in
//! `pg_stat_ssl`, or refuses `canary_tls`) or not verified (a certificate the collector
//! should refuse would open the store).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use host_collector::store::pg::testing::{server_url, TestDb};
use host_collector::store::{
    Filter, NewRecord, RecordFields, RecordKey, RowText, Store, StoreError, Sync,
};

/// A fresh database on the TLS-serving test server, and how to reach it.
struct Tls {
    db: TestDb,
    ca: PathBuf,
    port: u16,
    dbname: String,
    admin: String,
}

impl Tls {
    /// `None` to skip (said on stderr); a panic when `CANARY_REQUIRE_PG=1` and the server or
    /// its CA is not given.
    fn new(test: &str) -> Option<Tls> {
        let admin = server_url(test)?;
        let ca = match std::env::var("CANARY_TEST_PG_CA") {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                if std::env::var("CANARY_REQUIRE_PG").as_deref() == Ok("1") {
                    panic!(
                        "{test}: CANARY_REQUIRE_PG=1 but CANARY_TEST_PG_CA is not set: start \
                         the server with scripts/pg-cluster start (it makes the CA)"
                    );
                }
                eprintln!("{test}: skipped (CANARY_TEST_PG_CA not set)");
                return None;
            }
        };
        let db = TestDb::create(test)?;
        // postgres://USER@HOST:PORT/DB?…
        let rest = db.url.split_once("://").unwrap().1;
        let (authority, path) = rest.split_once('/').unwrap();
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let port = hostport.rsplit_once(':').unwrap().1.parse().unwrap();
        let dbname = path.split('?').next().unwrap().to_string();
        Some(Tls {
            db,
            ca,
            port,
            dbname,
            admin,
        })
    }

    /// The database's URL as `user` at `host` with the query `params`.
    fn url(&self, user: &str, host: &str, params: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/{}?{params}",
            self.port, self.dbname
        )
    }

    fn ca(&self) -> &str {
        self.ca.to_str().unwrap()
    }

    /// Whether the server's one session named `app` is encrypted (`pg_stat_ssl`), asked on
    /// an admin connection of its own.
    fn session_encrypted(&self, app: &str) -> bool {
        let mut c = postgres::Client::connect(&self.admin, postgres::NoTls).unwrap();
        let rows = c
            .query(
                "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                &[&app],
            )
            .unwrap();
        assert_eq!(rows.len(), 1, "sessions named {app}");
        let (ssl, version): (bool, String) = (rows[0].get(0), rows[0].get(1));
        assert_eq!(
            ssl,
            version.starts_with("TLS"),
            "ssl {ssl}, version {version:?}"
        );
        ssl
    }
}

/// Opens the store at `url` (creating the schema).
fn open(url: &str) -> Result<Store, StoreError> {
    Store::open(Path::new(url), Sync::Normal)
}

/// The error of opening `url`, which must fail.
fn refused(url: &str) -> String {
    match open(url) {
        Ok(_) => panic!("{url}: opened, expected a refusal"),
        Err(e) => e.to_string(),
    }
}

/// Writes one record (message `msg`) and reads the store's records back.
fn write_and_read(s: &mut Store, seq: u32, msg: &str) -> Vec<String> {
    let f = RecordFields {
        build_id: "b".into(),
        arch: "x86_64".into(),
        boot_mode: "pvh".into(),
        hypervisor: serde_json::json!({"vendor": "none"}),
        kind: "panic".into(),
        message: msg.into(),
        registers: serde_json::json!({}),
        ..RecordFields::default()
    };
    let r = NewRecord {
        key: RecordKey {
            boot_id: [7; 16],
            seq,
            record_crc: seq,
        },
        received_at_us: 1_000 + i64::from(seq),
        schema_major: 1,
        schema_minor: 0,
        uptime_us: 1,
        line_col: (0, 0),
        text: RowText::from_fields("127.0.0.1:9", &f),
        raw: vec![1, 2, 3],
    };
    s.commit_batch(&[r], &[], &[], &[]).unwrap();
    s.list(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.message)
        .collect()
}

/// The session's application name, unique per test and step.
fn app(tag: &str) -> String {
    format!("canary-tls-{}-{tag}", std::process::id())
}

#[test]
fn require_with_the_private_ca_stores_and_reads_over_tls() {
    let Some(t) = Tls::new("pg_tls_require") else {
        return;
    };
    // The control: the same check sees a plain session as plain.
    let a = app("plain");
    let mut s = open(&t.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=disable&application_name={a}"),
    ))
    .unwrap();
    assert_eq!(write_and_read(&mut s, 1, "plain"), ["plain"]);
    assert!(!t.session_encrypted(&a), "sslmode=disable used TLS");
    drop(s);

    let ca = t.ca();
    for (i, (host, params)) in [
        ("127.0.0.1", format!("sslmode=require&sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        // prefer (the default) uses TLS when the server offers it.
        ("127.0.0.1", format!("sslrootcert={ca}")),
    ]
    .into_iter()
    .enumerate()
    {
        let a = app(&format!("tls{i}"));
        let url = t.url("postgres", host, &format!("{params}&application_name={a}"));
        let mut s = open(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let seq = 2 + i as u32;
        let msgs = write_and_read(&mut s, seq, &format!("over tls {i}"));
        assert_eq!(msgs.len(), seq as usize, "{msgs:?}");
        assert!(msgs.contains(&format!("over tls {i}")), "{msgs:?}");
        assert!(
            t.session_encrypted(&a),
            "{url}: the session is not encrypted"
        );
    }
    // The records are in the database, whichever way they came.
    assert_eq!(t.db.query_i64("SELECT count(*) FROM records").unwrap(), 5);
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused() {
    let Some(t) = Tls::new("pg_tls_untrusted") else {
        return;
    };
    // The throwaway CA is not among the system's roots: require, verify-full and prefer
    // (the default, which never falls back to plain text or to an unverified certificate)
    // all refuse, saying it was TLS and what to do.
    for params in [
        "sslmode=require",
        "sslmode=verify-full",
        "sslmode=prefer",
        "",
    ] {
        let url = t.url("postgres", "127.0.0.1", params);
        let e = refused(&url);
        assert!(e.contains("TLS handshake"), "{params}: {e}");
        assert!(e.contains("certificate"), "{params}: {e}");
        assert!(e.contains("add sslrootcert=PATH"), "{params}: {e}");
    }
    // Another CA in sslrootcert: refused, naming that file.
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path());
    let url = t.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", other.display()),
    );
    let e = refused(&url);
    assert!(e.contains("TLS handshake"), "{e}");
    assert!(
        e.contains(&format!(
            "not signed by one of the CA certificates in sslrootcert {}",
            other.display()
        )),
        "{e}"
    );
}

/// A CA certificate (PEM) in `dir` that signed nothing the server has.
fn other_ca(dir: &Path) -> PathBuf {
    let pem = dir.join("other-ca.pem");
    let o = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other CA",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    pem
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let Some(t) = Tls::new("pg_tls_hostname") else {
        return;
    };
    let ca = t.ca();
    // Connect to 127.0.0.1 by a name the certificate does not carry.
    let host = "canary-db.invalid";
    for mode in ["verify-full", "require"] {
        let url = t.url(
            "postgres",
            host,
            &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}"),
        );
        let e = refused(&url);
        assert!(e.contains("TLS handshake"), "{mode}: {e}");
        assert!(
            e.contains(&format!("certificate is not issued for {host}")),
            "{mode}: {e}"
        );
    }
    let a = app("verify-ca");
    let url = t.url(
        "postgres",
        host,
        &format!("hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}&application_name={a}"),
    );
    let mut s = open(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(write_and_read(&mut s, 1, "verify-ca"), ["verify-ca"]);
    assert!(
        t.session_encrypted(&a),
        "verify-ca: the session is not encrypted"
    );
    drop(s);
    // verify-ca still checks the chain: another CA is refused.
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path());
    let e = refused(&t.url(
        "postgres",
        host,
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={}",
            other.display()
        ),
    ));
    assert!(
        e.contains("TLS handshake") && e.contains("not signed by"),
        "{e}"
    );
    // ... and never trusts the system's roots (any public CA would sign for anyone).
    let e = refused(&t.url(
        "postgres",
        host,
        "hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert=system",
    ));
    assert!(e.contains("verify-ca needs sslrootcert=PATH"), "{e}");
}

#[test]
fn a_bad_root_file_is_an_error_naming_it() {
    let Some(t) = Tls::new("pg_tls_rootfile") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let e = refused(&t.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", missing.display()),
    ));
    assert!(
        e.contains(&format!("sslrootcert {}: cannot read", missing.display())),
        "{e}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM\n").unwrap();
    let e = refused(&t.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", junk.display()),
    ));
    assert!(
        e.contains(&format!("sslrootcert {}", junk.display())),
        "{e}"
    );
}

#[test]
fn the_cli_reads_over_tls_and_refuses_an_untrusted_certificate() {
    let Some(t) = Tls::new("pg_tls_cli") else {
        return;
    };
    let ca = t.ca();
    let mut s = open(&t.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={ca}"),
    ))
    .unwrap();
    write_and_read(&mut s, 1, "read by the cli");
    drop(s);

    // The server admits canary_tls only over TLS: the control shows it refuses it plain.
    let plain = run(&[
        "--db",
        &t.url("canary_tls", "127.0.0.1", "sslmode=disable"),
        "list",
    ]);
    assert!(!plain.status.success(), "canary_tls got in without TLS");
    assert!(
        stderr(&plain).contains("no encryption"),
        "{}",
        stderr(&plain)
    );

    let url = t.url(
        "canary_tls",
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={ca}"),
    );
    let o = run(&["--db", &url, "list"]);
    assert!(o.status.success(), "list over TLS: {}", stderr(&o));
    assert!(stdout(&o).contains("read by the cli"), "{}", stdout(&o));

    let o = run(&[
        "--db",
        &t.url("canary_tls", "127.0.0.1", "sslmode=require"),
        "list",
    ]);
    assert!(!o.status.success(), "an untrusted certificate was accepted");
    let e = stderr(&o);
    assert!(
        e.contains("TLS handshake") && e.contains("certificate"),
        "{e}"
    );
    assert!(e.contains("add sslrootcert=PATH"), "{e}");
    // Said once, not again by a cause chain.
    assert_eq!(e.matches("add sslrootcert").count(), 1, "{e}");
}
