//! TLS to PostgreSQL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) against the throwaway
//! server of `scripts/pg-cluster`: it serves TLS with a certificate for DNS:localhost and
//! IP:127.0.0.1 signed by a throwaway CA (`$CANARY_TEST_PG_CA`), admits the role
//! `canary_tls` only over TLS, and the role `canary_cert` only over TLS with a client
//! certificate for CN=canary_cert signed by that CA (`$CANARY_TEST_PG_CLIENT_CERT`,
//! `$CANARY_TEST_PG_CLIENT_KEY`). Skipped without those variables and `$CANARY_TEST_PG`
//! unless `CANARY_REQUIRE_PG=1` (see `store::pg::testing`).
//!
//! Each test would fail if TLS were not used (the server reports the session unencrypted in
//! `pg_stat_ssl`, or refuses `canary_tls`) or not verified (a certificate the collector
//! should refuse would open the store), or if the client certificate were not shown (the
//! server refuses `canary_cert`).

mod common;

use std::path::{Path, PathBuf};

use capture::sender::SendState;
use capture::wire::AckStatus;
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
        let ca = env_path(test, "CANARY_TEST_PG_CA")?;
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

/// The path in `$var`; `None` to skip (said on stderr), a panic when `CANARY_REQUIRE_PG=1`.
fn env_path(test: &str, var: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if std::env::var("CANARY_REQUIRE_PG").as_deref() == Ok("1") {
                panic!(
                    "{test}: CANARY_REQUIRE_PG=1 but {var} is not set: start the server with \
                     scripts/pg-cluster start (it makes the CA and the client certificate)"
                );
            }
            eprintln!("{test}: skipped ({var} not set)");
            None
        }
    }
}

/// The test server with canary_cert's client certificate and key.
struct CertTls {
    tls: Tls,
    cert: PathBuf,
    key: PathBuf,
}

impl CertTls {
    fn new(test: &str) -> Option<CertTls> {
        let tls = Tls::new(test)?;
        let cert = env_path(test, "CANARY_TEST_PG_CLIENT_CERT")?;
        let key = env_path(test, "CANARY_TEST_PG_CLIENT_KEY")?;
        Some(CertTls { tls, cert, key })
    }

    /// The URL as canary_cert, verifying the server, with the client key `key` and `extra`
    /// parameters.
    fn url_with_key(&self, key: &Path, extra: &str) -> String {
        self.tls.url(
            "canary_cert",
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}{extra}",
                self.tls.ca(),
                self.cert.display(),
                key.display()
            ),
        )
    }

    fn url(&self, extra: &str) -> String {
        self.url_with_key(&self.key, extra)
    }
}

/// A copy of `key` in `dir` with `mode`.
#[cfg(unix)]
fn key_copy(key: &Path, dir: &Path, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("client-{mode:o}.key"));
    std::fs::copy(key, &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Runs `openssl ARGS`, which must succeed.
fn openssl<S: AsRef<std::ffi::OsStr>>(args: &[S]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {}: {}",
        args[0].as_ref().to_string_lossy(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Mode 0600 for the key file `p` (Unix; nothing elsewhere).
fn owner_only(p: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = p;
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
    self_signed(dir, "other-ca", "other CA").0
}

/// A self-signed certificate for CN=`cn` and its PKCS#8 key (mode 0600): `dir/NAME.pem`
/// and `dir/NAME.key`.
fn self_signed(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let (pem, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={cn}"),
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        pem.to_str().unwrap(),
    ]);
    owner_only(&key);
    (pem, key)
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

#[test]
fn a_client_certificate_logs_in_where_the_server_requires_one() {
    let Some(c) = CertTls::new("pg_tls_cert") else {
        return;
    };
    let t = &c.tls;
    let a = app("cert");
    let url = c.url(&format!("&application_name={a}"));
    let mut s = open(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(
        write_and_read(&mut s, 1, "by certificate"),
        ["by certificate"]
    );
    assert!(
        t.session_encrypted(&a),
        "{url}: the session is not encrypted"
    );
    // The server saw the certificate and logged the session in as its role.
    let mut admin = postgres::Client::connect(&t.admin, postgres::NoTls).unwrap();
    let row = admin
        .query_one(
            "SELECT coalesce(s.client_dn, ''), a.usename::text FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&a],
        )
        .unwrap();
    let (dn, user): (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        (dn.as_str(), user.as_str()),
        ("/CN=canary_cert", "canary_cert")
    );
    drop(s);

    // The controls: the server refuses canary_cert without the certificate, and plain.
    let e = refused(&t.url(
        "canary_cert",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", t.ca()),
    ));
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    let e = refused(&t.url("canary_cert", "127.0.0.1", "sslmode=disable"));
    assert!(e.contains("no encryption"), "{e}");

    // The CLI: stats and list read, and serve stores an acked record, as canary_cert.
    let o = run(&["--db", &url, "list"]);
    assert!(o.status.success(), "list: {}", stderr(&o));
    assert!(stdout(&o).contains("by certificate"), "{}", stdout(&o));
    let srv = Server::start(Path::new(&url), "127.0.0.1:0", &[], &[]);
    let bytes = sample_bytes([9; 16], 1);
    let (st, status) = send_record_status(srv.addr, [9; 16], 1, &bytes, None, None);
    assert_eq!((st, status), (SendState::Acked, Some(AckStatus::Stored)));
    assert_eq!(srv.stop("TERM"), 0);
    let o = run(&["--db", &url, "stats", "--json"]);
    assert!(o.status.success(), "stats: {}", stderr(&o));
    assert_eq!(json(&o)["records"], 2, "{}", stdout(&o));
    // The same URL as the config file's `db`.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(&cfg, format!("db = \"{url}\"\n")).unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "stats", "--json"]);
    assert!(o.status.success(), "stats --config: {}", stderr(&o));
    assert_eq!(json(&o)["records"], 2, "{}", stdout(&o));
}

#[test]
fn sslcert_without_sslkey_or_tls_is_refused_before_connecting() {
    let Some(c) = CertTls::new("pg_tls_cert_params") else {
        return;
    };
    let t = &c.tls;
    let cert = c.cert.display().to_string();
    let only_cert = t.url(
        "canary_cert",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}&sslcert={cert}", t.ca()),
    );
    let e = refused(&only_cert);
    assert!(e.contains("sslcert without sslkey: give both"), "{e}");
    let o = run(&["--db", &only_cert, "list"]);
    // A configuration error (exit 3), as any other bad parameter of the URL.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("sslcert without sslkey").count(),
        1,
        "{}",
        stderr(&o)
    );
    let e = refused(&t.url(
        "canary_cert",
        "localhost",
        &format!("sslkey={}", c.key.display()),
    ));
    assert!(e.contains("sslkey without sslcert: give both"), "{e}");
    let e = refused(&t.url(
        "canary_cert",
        "127.0.0.1",
        &format!("sslmode=disable&sslcert={cert}&sslkey={}", c.key.display()),
    ));
    assert!(e.contains("sslcert and sslkey need TLS"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_key_file_others_may_read_is_refused() {
    let Some(c) = CertTls::new("pg_tls_cert_mode") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o640, 0o644] {
        let key = key_copy(&c.key, dir.path(), mode);
        let e = refused(&c.url_with_key(&key, ""));
        assert!(
            e.contains(&format!(
                "sslkey {}: group or others have access to it (mode {mode:04o})",
                key.display()
            )) && e.contains(&format!("chmod 600 {}", key.display())),
            "{e}"
        );
    }
    // The same key with mode 0600 logs in: it was the mode.
    let key = key_copy(&c.key, dir.path(), 0o600);
    open(&c.url_with_key(&key, "")).unwrap_or_else(|e| panic!("mode 0600: {e}"));
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let Some(c) = CertTls::new("pg_tls_cert_wrong_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, alg) in [("other-ec", "ec"), ("other-rsa", "rsa")] {
        let key = dir.path().join(format!("{name}.key"));
        let mut args = vec!["genpkey", "-algorithm", alg];
        if alg == "ec" {
            args.extend(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        }
        args.extend(["-out", key.to_str().unwrap()]);
        openssl(&args);
        owner_only(&key);
        let e = refused(&c.url_with_key(&key, ""));
        assert!(
            e.contains(&format!(
                "sslkey {} does not belong to the certificate in sslcert {}",
                key.display(),
                c.cert.display()
            )),
            "{name}: {e}"
        );
    }
    // A SEC1 key (the certificate's own, as `openssl ec` writes it): how to convert it.
    let sec1 = dir.path().join("client-sec1.key");
    openssl(&[
        "ec".as_ref(),
        "-in".as_ref(),
        c.key.as_os_str(),
        "-out".as_ref(),
        sec1.as_os_str(),
    ]);
    owner_only(&sec1);
    let e = refused(&c.url_with_key(&sec1, ""));
    assert!(
        e.contains(&format!("sslkey {}: a SEC1 EC key", sec1.display()))
            && e.contains(&format!(
                "openssl pkcs8 -topk8 -nocrypt -in {} -out {}",
                sec1.display(),
                dir.path().join("client-sec1.pk8").display()
            )),
        "{e}"
    );
}

#[test]
fn a_client_certificate_the_server_did_not_sign_is_refused_by_the_server() {
    let Some(c) = CertTls::new("pg_tls_cert_other_ca") else {
        return;
    };
    // Self-signed for CN=canary_cert: the right name, not signed by the server's CA.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "self", "canary_cert");
    let other = CertTls {
        tls: c.tls,
        cert,
        key,
    };
    // The server ends the connection with TLS alert 48 (after the handshake, in TLS 1.3),
    // which the client reads, or finds the connection reset first.
    let e = refused(&other.url(""));
    assert!(
        e.contains("error communicating with the server")
            && (e.contains("alert unknown ca") || e.contains("reset")),
        "{e}"
    );
    // What to do about it, with the files named.
    assert!(
        e.contains("the server may have refused the client certificate")
            && e.contains(&other.cert.display().to_string()),
        "{e}"
    );
}
