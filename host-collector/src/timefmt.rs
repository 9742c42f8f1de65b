//! Times on the command line: what `--since`/`--until` accept, and how tables show times
//! (local time by default, UTC with `--utc`), with jiff for time zones.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::util::{before_us, TimeArgError};

/// Parses a `--since`/`--until` value into Unix microseconds. Accepted, in this order:
/// - `now`, `today`, `yesterday`, `tomorrow` (the last three: midnight, local time);
/// - RFC 3339 with `Z` or any offset (`2026-12-07T01:06:00+01:00`);
/// - a local date and time (`2026-12-07 01:06`, `2026-12-07T01:06:00`) or a bare date
///   (`2026-12-07`: its midnight), in `tz`;
/// - a duration ago: `2h`, `-7d`, `30min ago`.
pub fn parse_time_in(s: &str, now_us: i64, tz: &TimeZone) -> Result<i64, TimeArgError> {
    let t = s.trim();
    let bad = || TimeArgError::BadTime(s.into());
    let range = |_| TimeArgError::OutOfRange(s.into());
    let today = || -> Result<Date, TimeArgError> {
        Ok(Timestamp::from_microsecond(now_us)
            .map_err(range)?
            .to_zoned_datetime(tz.clone())
            .date())
    };
    let midnight = |d: Date| -> Result<i64, TimeArgError> {
        Ok(d.to_zoned_datetime(tz.clone())
            .map_err(range)?
            .timestamp()
            .as_microsecond())
    };
    match t.to_ascii_lowercase().as_str() {
        "now" => return Ok(now_us),
        "today" => return midnight(today()?),
        "yesterday" => return midnight(today()?.yesterday().map_err(range)?),
        "tomorrow" => return midnight(today()?.tomorrow().map_err(range)?),
        _ => {}
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    if let Ok(dt) = t.parse::<DateTime>() {
        return Ok(dt
            .to_zoned_datetime(tz.clone())
            .map_err(range)?
            .timestamp()
            .as_microsecond());
    }
    if let Ok(d) = t.parse::<Date>() {
        return midnight(d);
    }
    let d = t.strip_prefix('-').unwrap_or(t);
    let d = d.strip_suffix("ago").unwrap_or(d).trim();
    if d.is_empty() || !d.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    match humantime::parse_duration(d) {
        Ok(d) => before_us(now_us, d).ok_or_else(|| TimeArgError::TooLong(s.into())),
        Err(_) => Err(bad()),
    }
}

/// [`parse_time_in`] in the system's time zone.
pub fn parse_time(s: &str, now_us: i64) -> Result<i64, TimeArgError> {
    parse_time_in(s, now_us, &TimeZone::system())
}

/// How tables show times.
#[derive(Debug, Clone)]
pub struct TimeStyle {
    tz: TimeZone,
}

impl TimeStyle {
    /// Local time, or UTC.
    pub fn new(utc: bool) -> TimeStyle {
        TimeStyle {
            tz: if utc {
                TimeZone::UTC
            } else {
                TimeZone::system()
            },
        }
    }

    pub fn in_zone(tz: TimeZone) -> TimeStyle {
        TimeStyle { tz }
    }

    fn fmt(&self, us: i64, f: &str) -> String {
        match Timestamp::from_microsecond(us) {
            Ok(ts) => ts
                .to_zoned_datetime(self.tz.clone())
                .strftime(f)
                .to_string(),
            Err(_) => format!("@{us}us"),
        }
    }

    /// `Dec 07 02:04:05` (15 columns; the year and zone are in `--wide` and `--json`).
    pub fn short(&self, us: i64) -> String {
        self.fmt(us, "%b %d %H:%M:%S")
    }

    /// `2026-12-07 02:04:05 +01:00`.
    pub fn full(&self, us: i64) -> String {
        self.fmt(us, "%Y-%m-%d %H:%M:%S %:z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T01:30:00Z.
    const NOW: i64 = 1_796_607_000_000_000;
    const H: i64 = 3_600_000_000;

    #[test]
    fn the_time_arguments_table() {
        let cet = TimeZone::fixed(jiff::tz::offset(1));
        let at = |s: &str| parse_time_in(s, NOW, &cet);
        let ok: &[(&str, i64)] = &[
            ("now", NOW),
            ("2h", NOW - 2 * H),
            ("-7d", NOW - 7 * 24 * H),
            ("30min ago", NOW - H / 2),
            ("1h 30min", NOW - 3 * H / 2),
            // RFC 3339 with Z and with any offset (the example was refused).
            ("2026-12-07T01:30:00Z", NOW),
            ("2026-12-07T02:30:00+01:00", NOW),
            ("2026-12-06T20:30:00-05:00", NOW),
            ("2026-12-07T01:30:00.5Z", NOW + 500_000),
            // Local (here UTC+1) date and time, with T or a space, and a bare date.
            ("2026-12-07 02:30:00", NOW),
            ("2026-12-07T02:30", NOW),
            ("2026-12-07", NOW - 2 * H - H / 2),
            // Midnights, local: it is 02:30 on the 7th in UTC+1.
            ("today", NOW - 2 * H - H / 2),
            ("yesterday", NOW - 2 * H - H / 2 - 24 * H),
            ("tomorrow", NOW - 2 * H - H / 2 + 24 * H),
            ("  Yesterday ", NOW - 2 * H - H / 2 - 24 * H),
        ];
        for (s, want) in ok {
            assert_eq!(at(s), Ok(*want), "{s:?}");
        }
        let bad = [
            "",
            "yesterday-ish",
            "2026-13-01",
            "2026-12-07T25:00:00Z",
            "h",
            "-",
            "ago",
        ];
        for s in bad {
            assert_eq!(at(s), Err(TimeArgError::BadTime(s.into())), "{s:?}");
        }
        assert_eq!(
            at("300000years"),
            Err(TimeArgError::TooLong("300000years".into()))
        );
    }

    #[test]
    fn tables_show_local_time_or_utc() {
        let cet = TimeStyle::in_zone(TimeZone::fixed(jiff::tz::offset(1)));
        assert_eq!(cet.short(NOW), "Dec 07 02:30:00");
        assert_eq!(cet.full(NOW), "2026-12-07 02:30:00 +01:00");
        let utc = TimeStyle::new(true);
        assert_eq!(utc.short(NOW), "Dec 07 01:30:00");
        assert_eq!(utc.full(NOW), "2026-12-07 01:30:00 +00:00");
    }
}
