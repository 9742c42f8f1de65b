//! The file whose exclusive lock marks the one writer of a database ([`super::Store::lock_writer`]).
//!
//! Unix: the database file itself. `flock` locks do not meet the POSIX byte-range locks
//! SQLite takes, and every name of the file meets the same lock.
//!
//! Windows: `<database>-writer` beside it. Windows file locks are byte-range locks that other
//! handles must obey, std's `try_lock` locks the whole file, and SQLite holds a shared lock
//! on a byte range of the database file while a WAL connection is open: a whole-file lock on
//! the database fails there (the second `serve` error for every first `serve`) and, taken
//! first, would stop SQLite's own reads and writes. Names that reach the database by a
//! link meet a different `-writer` file on Windows.

use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(unix)]
pub(super) fn open(db: &Path) -> io::Result<File> {
    File::open(db)
}

#[cfg(not(unix))]
pub(super) fn open(db: &Path) -> io::Result<File> {
    let mut name = db.as_os_str().to_owned();
    name.push("-writer");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(name)
}
