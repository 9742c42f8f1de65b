//! Small helpers: hex, time formatting and parsing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses hex (any case, no prefix) into bytes; `None` on odd length or a non-hex digit.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// Parses exactly 32 hex digits into a boot id.
pub fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    parse_hex(s)?.try_into().ok()
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC, second precision.
pub fn format_time_us(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeArgError {
    #[error(
        "cannot read time {0:?}: give an RFC 3339 time with any offset \
         (2026-11-26T10:00:00Z, 2026-11-26T11:00:00+01:00), a local date or time \
         (2026-11-26, 2026-11-26 11:00), today, yesterday, or a duration ago (30min, 2h, -7d)"
    )]
    BadTime(String),
    #[error("cannot read duration {0:?}: use e.g. 30s, 15min, 12h, 7d, 2weeks")]
    BadDuration(String),
    #[error("duration {0:?} is too long: give at most 290000years")]
    TooLong(String),
    #[error("time {0:?} is out of range")]
    OutOfRange(String),
}

/// `d` in microseconds, if that fits an `i64` (about 292,000 years).
pub fn duration_us(d: Duration) -> Option<i64> {
    i64::try_from(d.as_micros()).ok()
}

/// `now_us - d`, checked: `None` if `d` does not fit or the result would wrap.
pub fn before_us(now_us: i64, d: Duration) -> Option<i64> {
    now_us.checked_sub(duration_us(d)?)
}

/// Parses a duration like `7d` or `12h 30min`.
pub fn parse_duration(s: &str) -> Result<Duration, TimeArgError> {
    humantime::parse_duration(s.trim()).map_err(|_| TimeArgError::BadDuration(s.into()))
}

/// Parses `--since`/`--until` (see [`crate::timefmt::parse_time_in`] for the forms) in the
/// system's time zone. Returns Unix microseconds.
pub fn parse_time_arg(s: &str, now_us: i64) -> Result<i64, TimeArgError> {
    crate::timefmt::parse_time(s, now_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(parse_hex("0001ABff").unwrap(), b);
        assert_eq!(parse_hex("0"), None);
        assert_eq!(parse_hex("zz"), None);
    }

    #[test]
    fn time_args_accept_rfc3339_and_durations_ago() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_time_arg("1h", now).unwrap(), now - 3_600_000_000);
        assert_eq!(parse_time_arg("-1h", now).unwrap(), now - 3_600_000_000);
        assert_eq!(parse_time_arg("2min ago", now).unwrap(), now - 120_000_000);
        assert_eq!(
            parse_time_arg("1970-01-01T00:00:10Z", now).unwrap(),
            10_000_000
        );
        assert!(parse_time_arg("yesterday-ish", now).is_err());
        // Too long to count in microseconds: refused, never wrapped into the future.
        assert_eq!(
            parse_time_arg("300000years", now),
            Err(TimeArgError::TooLong("300000years".into()))
        );
        assert!(parse_time_arg("200000years", now).unwrap() < 0);
        assert_eq!(before_us(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(format_time_us(10_000_000), "1970-01-01T00:00:10Z");
    }
}
