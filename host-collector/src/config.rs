//! The collector's configuration file (`configs/host-collector.toml`): the same keys as the
//! `serve` flags. Flags given on the command line win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::store::Sync;

/// The default listen address: loopback only, so a collector never listens on a network by
/// accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7373";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

/// `[serve]`-level keys of the config file. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// UDP address to listen on.
    pub listen: Option<SocketAddr>,
    /// The database: an SQLite file path, or `postgres://USER@HOST:PORT/DBNAME[?sslmode=…&sslrootcert=CA.pem]`
    /// (a fleet database several collectors share). Give PostgreSQL's password with
    /// `db_password_file` or `$PGPASSWORD`, not in the URL.
    pub db: Option<PathBuf>,
    /// File whose first line is the PostgreSQL password (`--db-password-file`).
    pub db_password_file: Option<PathBuf>,
    /// File holding the fleet key (hex); absent means unauthenticated frames are accepted.
    pub key_file: Option<PathBuf>,
    /// `normal` (default) or `full`.
    pub sync: Option<Sync>,
    /// Most partial records reassembled at once from one source address.
    pub max_pending_per_source: Option<usize>,
    /// Most partial records reassembled at once in total.
    pub max_pending_total: Option<usize>,
    /// Most records committed in one transaction.
    pub batch_max: Option<usize>,
    /// Capacity of the queue between the receiver and the writer, in records.
    pub queue_capacity: Option<usize>,
    /// SO_RCVBUF for the UDP socket, in bytes.
    pub recv_buffer_bytes: Option<usize>,
    /// Bytes of the queued records (default 64 MiB); beyond it records are dropped unacked
    /// and counted as `queue_full_drops` (their senders retransmit).
    pub queue_max_bytes: Option<u64>,
    /// Bytes set aside for partial records in all (default 32 MiB).
    pub reassembly_max_bytes: Option<u64>,
    /// Bytes set aside for one source's partial records (default: an eighth of
    /// `reassembly_max_bytes`).
    pub reassembly_max_bytes_per_source: Option<u64>,
    /// Bytes of rejected records kept in the `rejections` table (default 16 MiB); further
    /// ones are acked as rejected and counted (`rejected_not_kept`) only.
    pub rejected_max_bytes: Option<u64>,
    /// The WAL is checkpointed and cut back once it exceeds this many bytes (default
    /// 64 MiB); also SQLite's `journal_size_limit`.
    pub wal_max_bytes: Option<u64>,
    /// Retention: delete records received longer ago than this (e.g. "90d").
    pub max_age: Option<String>,
    /// Retention: keep at most the newest N records.
    pub max_records: Option<u64>,
    /// Retention: delete the oldest records while the stored data exceeds this many bytes
    /// (SQLite: pages in use; PostgreSQL: the records' data).
    pub max_bytes: Option<u64>,
    /// How often `serve` applies the retention limits (default "1min").
    pub retention_interval: Option<String>,
    /// Check with `PRAGMA integrity_check` instead of `quick_check` before serving.
    pub integrity_check: Option<bool>,
    /// A canary is silent after this many heartbeat intervals without one.
    pub silence: Option<u32>,
    /// Command run per event by the system shell (`sh -c` on Unix, `cmd /C` on Windows), the
    /// event as JSON on stdin.
    pub on_event: Option<String>,
    /// `http://` URL each event is POSTed to.
    pub webhook: Option<String>,
    /// At most this many "crash stored" log lines a second, the rest summed up once a second
    /// (default 100; 0: a line for every record).
    pub event_log_rate: Option<u32>,
    /// Where to serve `/metrics` and `/healthz`.
    pub metrics: Option<SocketAddr>,
    /// Drill every live canary once per this period (e.g. "1d").
    pub drill_every: Option<String>,
    /// How long a scheduled drill may take to bring its record (default "60s").
    pub drill_deadline: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_file_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/host-collector.toml");
        let c = FileConfig::load(&p).unwrap();
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert!(c.db.is_some());
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_key_named() {
        let e = toml::from_str::<FileConfig>("listne = \"1.2.3.4:5\"").unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
    }
}
