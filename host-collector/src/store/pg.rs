//! The PostgreSQL backend of the store (`--db postgres://…`): several collectors write one
//! fleet database. The database does what the SQLite backend's single writer does in
//! memory: the unique key `(boot_id, seq, record_crc)` with `ON CONFLICT DO NOTHING
//! RETURNING` says which records of a batch this transaction stored, so the acks are
//! truthful across collectors. A lost connection fails the batch (nothing is acked, the
//! canaries retransmit) and is opened again with backoff on the next call.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres::{Client, Config, GenericClient, Statement};

use super::*;

mod read;
pub(super) mod schema;
#[doc(hidden)]
pub mod testing;
mod tls;
mod writer;
pub use schema::{PG_MIGRATIONS, PG_SCHEMA_VERSION};
/// `put_followup`'s statements, which the race tests run as another collector.
#[cfg(test)]
pub(super) use writer::{
    FOLLOWUP_HELD, FOLLOWUP_INSERT, FOLLOWUP_RECORD, FOLLOWUP_REPLACE, FOLLOWUP_STEP_TIMES,
};

/// The URL when `path` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn pg_url(path: &Path) -> Option<&str> {
    let s = path.to_str()?;
    (s.starts_with("postgres://") || s.starts_with("postgresql://")).then_some(s)
}

/// The password set by `--db-password-file` (or `db_password_file`), used when the URL has
/// none; else `$PGPASSWORD`.
static PASSWORD: Mutex<Option<String>> = Mutex::new(None);

/// Sets the password for PostgreSQL connections (from `--db-password-file`): the file's
/// first line.
pub fn set_password(p: Option<String>) {
    *PASSWORD.lock().unwrap_or_else(|e| e.into_inner()) = p;
}

/// `url` without its password, for messages: `postgres://user:secret@h/db` ->
/// `postgres://user@h/db`, `?password=secret` -> `?password=…`.
pub fn redact(url: &str) -> String {
    let url = &redact_userinfo(url);
    match url.find("password=") {
        Some(i) => {
            let start = i + "password=".len();
            let end = url[start..].find('&').map_or(url.len(), |e| start + e);
            format!("{}…{}", &url[..start], &url[end..])
        }
        None => url.to_string(),
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth_end, _) = rest
        .char_indices()
        .find(|(_, c)| matches!(c, '/' | '?'))
        .unwrap_or((rest.len(), ' '));
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Whether the URL carries a password (`user:password@`): refused on the command line.
pub fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    rest[..end]
        .rfind('@')
        .is_some_and(|at| rest[..at].contains(':'))
        || url.contains("password=")
}

/// A PostgreSQL database to connect to: the parsed URL, its TLS settings (`sslmode`,
/// `sslrootcert`: see [`tls`]) and its name without password.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: tls::Tls,
    name: String,
}

impl PgTarget {
    /// Parses `url`; with TLS, reads the `sslrootcert` file now (an error names it).
    pub fn parse(url: &str) -> Result<PgTarget> {
        let name = redact(url);
        let bad = |e: String| StoreError::BadUrl(format!("--db {name}: {e}"));
        let (rest, params) = tls::split_url(url).map_err(bad)?;
        let tls = tls::Tls::new(params).map_err(bad)?;
        let mut config: Config = rest
            .parse()
            .map_err(|e: postgres::Error| bad(pg_text(&e)))?;
        config.ssl_mode(tls.driver_mode());
        if config.get_password().is_none() {
            let p = PASSWORD
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .or_else(|| std::env::var("PGPASSWORD").ok());
            if let Some(p) = p {
                config.password(p);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("host-collector");
        }
        // A dead server or network is noticed by the writer's next commit, not hours later.
        config.keepalives_idle(Duration::from_secs(30));
        Ok(PgTarget { config, tls, name })
    }

    /// The URL without password.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn connect(&self) -> Result<Client> {
        let r = match self.tls.connector() {
            None => self.config.connect(postgres::NoTls),
            Some(c) => self.config.connect(c.clone()),
        };
        r.map_err(|e| {
            let mut reason = pg_text(&e);
            // A handshake that failed in the TLS library (not a server without TLS, said
            // well enough by the driver): what to do about it.
            let in_tls = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<native_tls::Error>().is_some());
            let advice = if in_tls {
                self.tls.advice(&reason, &self.host())
            } else {
                self.tls.client_refused_advice(&reason)
            };
            if let Some(a) = advice {
                reason.push_str("; ");
                reason.push_str(&a);
            }
            StoreError::Unavailable {
                target: self.name.clone(),
                reason,
            }
        })
    }

    /// The host the certificate must name, for messages.
    fn host(&self) -> String {
        match self.config.get_hosts() {
            [postgres::config::Host::Tcp(h)] => h.clone(),
            _ => "the host connected to".to_string(),
        }
    }
}

/// The text of a PostgreSQL error, once: the server's message (with its detail), or the
/// driver's.
pub(super) fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                let t = c.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                src = c.source();
            }
            s
        }
    }
}

/// The connection, opened again after it broke: at most once per backoff interval, which
/// doubles from 100 ms to 5 s while the server stays away.
struct Conn {
    client: Option<Client>,
    /// The statements prepared on `client`: dropped with it.
    stmts: Stmts,
    next_try: Instant,
    backoff: Duration,
}

/// Statements prepared once per connection and reused: a statement sent as text is parsed
/// and described again on every call, one more round trip each time.
#[derive(Default)]
pub(super) struct Stmts(HashMap<&'static str, Statement>);

impl Stmts {
    /// `sql` prepared on this connection (`c` is the connection or a transaction on it).
    pub(super) fn get(
        &mut self,
        c: &mut impl GenericClient,
        sql: &'static str,
    ) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql)?;
        self.0.insert(sql, s.clone());
        Ok(s)
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The PostgreSQL store.
pub struct PgStore {
    target: PgTarget,
    conn: Mutex<Conn>,
    last_ids: Vec<i64>,
    rejected_budget: u64,
    /// The bytes of rejected records kept, as this collector last counted them (`None`:
    /// not counted yet).
    rejected_bytes: Option<u64>,
    /// The crash count of each canary's liveness row as this collector last read or wrote
    /// it: a save adds only this collector's new crashes to the row.
    crash_base: Mutex<HashMap<String, u64>>,
    /// The counter rows this store adds to (`counters.shard`, see [`next_shard`]).
    shard: i16,
}

/// Counter rows per counter: connections add to rows of their own, spread over this many.
const SHARDS: u32 = 64;

/// The shard of a new store: the next of this process (its connections never share rows
/// while it has fewer than [`SHARDS`]), from a start that differs between processes (other
/// collectors likely write other rows; when two share one, they only wait for each other).
fn next_shard() -> i16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = || {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (std::process::id() ^ t) % SHARDS
    };
    let _ = NEXT.compare_exchange(u32::MAX, start(), Ordering::Relaxed, Ordering::Relaxed);
    (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS) as i16
}

impl PgStore {
    /// Connects to `url`; with `create`, applies the missing migrations (under an advisory
    /// lock: one collector at a time), else requires a canary schema of this version.
    pub fn open(url: &str, create: bool) -> Result<PgStore> {
        let target = PgTarget::parse(url)?;
        let client = target.connect()?;
        let s = PgStore {
            target,
            conn: Mutex::new(Conn {
                client: Some(client),
                stmts: Stmts::default(),
                next_try: Instant::now(),
                backoff: BACKOFF_MIN,
            }),
            last_ids: Vec::new(),
            rejected_budget: u64::MAX,
            rejected_bytes: None,
            crash_base: Mutex::new(HashMap::new()),
            shard: next_shard(),
        };
        if create {
            s.with(schema::migrate)??;
        } else {
            let found = s.schema_version()?;
            if found == 0 {
                return Err(StoreError::Unavailable {
                    target: s.target.name.clone(),
                    reason: "not a canary database: no collector has written it (run \
                             `host-collector serve --db URL` once)"
                        .into(),
                });
            }
            if found > PG_SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    found,
                    supported: PG_SCHEMA_VERSION,
                });
            }
            if found < PG_SCHEMA_VERSION {
                s.with(schema::migrate)??;
            }
        }
        Ok(s)
    }

    /// Runs `f` on the connection, connecting again first if it broke (not more often than
    /// the backoff allows: until then the call fails at once). A connection that is closed
    /// after `f` failed is dropped, to be opened again by a later call.
    ///
    /// The driver blocks on a runtime of its own, which cannot run inside another one: called
    /// from an async context (`serve`'s last commit), `f` runs on a scoped thread.
    pub(super) fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error> + Send,
    ) -> Result<T> {
        self.with_stmts(|c, _| f(c))
    }

    /// [`Self::with`], and the statements prepared on this connection.
    pub(super) fn with_stmts<T: Send>(
        &self,
        f: impl FnOnce(&mut Client, &mut Stmts) -> std::result::Result<T, postgres::Error> + Send,
    ) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|sc| sc.spawn(|| self.with_here(f)).join()).unwrap_or_else(
                |_| Err(StoreError::Postgres("the database thread panicked".into())),
            );
        }
        self.with_here(f)
    }

    fn with_here<T>(
        &self,
        f: impl FnOnce(&mut Client, &mut Stmts) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let g = &mut *guard;
        if g.client.as_ref().is_none_or(|c| c.is_closed()) {
            g.client = None;
            g.stmts = Stmts::default();
            let now = Instant::now();
            if now < g.next_try {
                return Err(StoreError::Unavailable {
                    target: self.target.name.clone(),
                    reason: format!(
                        "connection lost; connecting again in {} ms",
                        (g.next_try - now).as_millis()
                    ),
                });
            }
            match self.target.connect() {
                Ok(c) => {
                    tracing::info!(db = %self.target.name, "connected to PostgreSQL again");
                    g.client = Some(c);
                    g.backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    g.next_try = Instant::now() + g.backoff;
                    g.backoff = (g.backoff * 2).min(BACKOFF_MAX);
                    return Err(e);
                }
            }
        }
        let c = g.client.as_mut().expect("connected above");
        match f(c, &mut g.stmts) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Class 08: connection exception; 57: operator intervention (the server
                // shutting down, the backend terminated).
                let gone = e
                    .code()
                    .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"));
                let closed = gone || c.is_closed() || e.is_closed() || e.as_db_error().is_none();
                // Prepared again after any error (a migration by another collector may
                // have changed what a statement returns).
                g.stmts = Stmts::default();
                let err = if closed {
                    g.client = None;
                    g.next_try = Instant::now();
                    StoreError::Unavailable {
                        target: self.target.name.clone(),
                        reason: pg_text(&e),
                    }
                } else {
                    StoreError::Postgres(pg_text(&e))
                };
                Err(err)
            }
        }
    }

    /// The schema version (0 when no collector has migrated this database).
    pub fn schema_version(&self) -> Result<u32> {
        self.with(schema::version)
    }

    pub fn set_rejected_budget(&mut self, bytes: u64) {
        self.rejected_budget = bytes;
    }

    pub fn last_stored_ids(&self) -> &[i64] {
        &self.last_ids
    }

    /// The database this store writes, without password.
    pub fn name(&self) -> &str {
        &self.target.name
    }
}

impl Drop for PgStore {
    /// The driver closes a connection by blocking on its own runtime, which cannot run
    /// inside another one: inside an async context the connection is closed on a thread.
    fn drop(&mut self) {
        let c = self
            .conn
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .client
            .take();
        if let Some(c) = c {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::spawn(move || drop(c)).join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_and_redacted() {
        assert!(url_has_password("postgres://u:pw@h:5432/db"));
        assert!(url_has_password("postgres://h/db?password=x"));
        assert!(!url_has_password("postgres://u@h/db"));
        assert!(!url_has_password("postgres://h/db?user=a:b"));
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgresql://h/db?x=@"), "postgresql://h/db?x=@");
        assert_eq!(
            redact("postgres://h/db?password=pw&sslmode=require"),
            "postgres://h/db?password=…&sslmode=require"
        );
        assert_eq!(
            pg_url(Path::new("postgres://h/db")),
            Some("postgres://h/db")
        );
        assert_eq!(pg_url(Path::new("canary.db")), None);
    }
}
