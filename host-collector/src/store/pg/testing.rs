//! Test support: a fresh database per test on the server `$CANARY_TEST_PG` names
//! (`scripts/pg-cluster start` makes one; `scripts/test` exports it). Without the variable
//! the PostgreSQL half of a test is skipped, said on stderr, unless `CANARY_REQUIRE_PG=1`:
//! then it fails, so CI cannot pass without a server.

use std::sync::atomic::{AtomicU32, Ordering};

/// A database created for one test, dropped (with its connections) when this is dropped.
pub struct TestDb {
    /// The database's URL.
    pub url: String,
    admin: String,
    name: String,
}

/// `url` with its database name replaced by `db`.
pub fn with_dbname(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = base.split('/').next().unwrap_or(base);
    let mut u = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        u.push('?');
        u.push_str(q);
    }
    u
}

/// The server URL to test against: `None` to skip (said on stderr), or a panic when
/// `CANARY_REQUIRE_PG=1` and no URL is set.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("CANARY_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CANARY_REQUIRE_PG").as_deref() == Ok("1") {
                panic!(
                    "{test}: CANARY_REQUIRE_PG=1 but CANARY_TEST_PG is not set: start a \
                     server (eval \"$(scripts/pg-cluster start)\")"
                );
            }
            eprintln!("{test}: PostgreSQL half skipped (CANARY_TEST_PG not set)");
            None
        }
    }
}

impl TestDb {
    /// A new empty database for `test`, or `None` (see [`server_url`]). Panics when the
    /// server does not answer.
    pub fn create(test: &str) -> Option<TestDb> {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = server_url(test)?;
        let name = format!(
            "canary_t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(20)
                .collect::<String>()
                .to_ascii_lowercase()
        );
        let mut c = postgres::Client::connect(&admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{test}: cannot reach CANARY_TEST_PG {admin}: {e}"));
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("{test}: CREATE DATABASE {name}: {e}"));
        Some(TestDb {
            url: with_dbname(&admin, &name),
            admin,
            name,
        })
    }

    /// Runs SQL as the server's admin user (in the admin database).
    pub fn admin(&self, sql: &str) -> Result<(), postgres::Error> {
        let mut c = postgres::Client::connect(&self.admin, postgres::NoTls)?;
        c.batch_execute(sql)
    }

    /// Runs SQL in this database.
    pub fn exec(&self, sql: &str) -> Result<(), postgres::Error> {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls)?;
        c.batch_execute(sql)
    }

    /// One `i64` from a query in this database.
    pub fn query_i64(&self, sql: &str) -> Result<i64, postgres::Error> {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls)?;
        Ok(c.query_one(sql, &[])?.get(0))
    }

    /// Ends every connection to this database and refuses new ones until
    /// [`TestDb::allow_connections`]: the database "goes away" for its clients.
    pub fn refuse_connections(&self) -> Result<(), postgres::Error> {
        self.admin(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
            self.name
        ))
    }

    pub fn allow_connections(&self) -> Result<(), postgres::Error> {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
    }

    /// Ends every connection to this database (they may connect again).
    pub fn terminate_connections(&self) -> Result<(), postgres::Error> {
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            super::with_dbname("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            super::with_dbname("postgres://u@h:5/postgres?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(super::with_dbname("postgres://h", "x"), "postgres://h/x");
    }
}
