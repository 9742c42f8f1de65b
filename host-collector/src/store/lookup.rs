//! Naming a record on the command line: an ID, or a boot id by any unique prefix of its hex
//! (`list` prints the first 8 digits), with or without `:SEQ`.

use thiserror::Error;

use super::*;
use crate::util::hex;

/// Why a reference names no single record.
#[derive(Debug, Error)]
pub enum RefError {
    #[error(
        "invalid record reference {0:?}: give a record ID or BOOTID:SEQ (BOOTID: any unique \
         prefix of the boot id's hex digits, at least 4; without :SEQ, the boot's newest record)"
    )]
    Bad(String),
    #[error(
        "boot id prefix {prefix:?} matches {count} boots ({}); give more digits",
        examples.join(", ")
    )]
    Ambiguous {
        prefix: String,
        count: usize,
        examples: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for RefError {
    fn from(e: rusqlite::Error) -> RefError {
        RefError::Store(e.into())
    }
}

/// Fewest hex digits taken as a boot id prefix.
pub const MIN_PREFIX: usize = 4;

/// Parses `s` without a database: `N` (a record ID), `BOOT[:SEQ]` with BOOT a hex prefix.
/// Returns the ID, or the lower-case prefix and the sequence number.
pub fn parse_ref(s: &str) -> Result<Result<i64, (String, Option<u32>)>, RefError> {
    let bad = || RefError::Bad(s.into());
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Ok).map_err(|_| bad());
    }
    let (boot, seq) = match t.split_once(':') {
        Some((b, "")) => (b, None),
        Some((b, q)) => (b, Some(q.parse::<u32>().map_err(|_| bad())?)),
        None => (t, None),
    };
    if boot.len() < MIN_PREFIX || boot.len() > 32 || !boot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(Err((boot.to_ascii_lowercase(), seq)))
}

impl Store {
    /// Resolves a reference (see [`parse_ref`]): `Ok(None)` when it names no stored record;
    /// a boot without `:SEQ` names its newest record.
    pub fn resolve_ref(&self, s: &str) -> std::result::Result<Option<RecordRef>, RefError> {
        let (prefix, seq) = match parse_ref(s)? {
            Ok(id) => return Ok(Some(RecordRef::Id(id))),
            Err(p) => p,
        };
        let boots = self.boots_with_prefix(&prefix, 4)?;
        let boot = match boots.as_slice() {
            [] => return Ok(None),
            [b] => *b,
            many => {
                let count = self.count_boots_with_prefix(&prefix)?;
                return Err(RefError::Ambiguous {
                    prefix,
                    count: count as usize,
                    examples: many.iter().take(3).map(|b| hex(b)).collect(),
                });
            }
        };
        Ok(Some(match seq {
            Some(seq) => RecordRef::BootSeq(boot, seq),
            None => match self.newest_id_of_boot(&boot)? {
                Some(id) => RecordRef::Id(id),
                None => return Ok(None),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reference_table() {
        type Want<'a> = Result<i64, (&'a str, Option<u32>)>;
        let ok: &[(&str, Want)] = &[
            ("12", Ok(12)),
            (" 7 ", Ok(7)),
            ("3cc1", Err(("3cc1", None))),
            ("3CC1E044", Err(("3cc1e044", None))),
            ("3cc1e044:2", Err(("3cc1e044", Some(2)))),
            ("3cc1e044:", Err(("3cc1e044", None))),
            (
                "3cc1e044548fd5fd29cdcc62f21f283d:1",
                Err(("3cc1e044548fd5fd29cdcc62f21f283d", Some(1))),
            ),
            ("1234:5", Err(("1234", Some(5)))),
        ];
        for (s, want) in ok {
            let got = parse_ref(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            let want = (*want).map_err(|(p, q)| (p.to_string(), q));
            assert_eq!(got, want, "{s:?}");
        }
        for s in [
            "",
            "abc",
            "xyz1",
            "3cc1:x",
            "3cc1:-1",
            "0123456789abcdef0123456789abcdef0",
            ":1",
        ] {
            assert!(matches!(parse_ref(s), Err(RefError::Bad(_))), "{s:?}");
        }
    }
}
