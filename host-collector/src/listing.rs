//! The `list` and `tail` tables: 80 columns by default (the message is cut to what is
//! left), everything with `--wide`; local time unless `--utc`; `list --group` folds identical
//! crashes (same kind, message and location) into one row with a count and first/last seen.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::output::table;
use crate::store::RecordSummary;
use crate::timefmt::TimeStyle;

/// Width of the default table.
pub const WIDTH: usize = 80;
/// Hex digits of a boot id in the default table (`show` takes any unique prefix).
pub const BOOT_DIGITS: usize = 8;
/// The message column never gets narrower than this (the line is longer then).
const MIN_MESSAGE: usize = 16;

/// How a table is drawn.
#[derive(Debug, Clone)]
pub struct Style {
    pub time: TimeStyle,
    pub wide: bool,
    pub legend: bool,
    /// Bold header (only when stdout is a terminal and `NO_COLOR` is not set).
    pub colour: bool,
}

fn cut(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Width of the widest cell of column `i` (escaped as [`table`] will show it) and its header.
fn col_width(header: &str, rows: &[Vec<String>], i: usize) -> usize {
    rows.iter()
        .map(|r| crate::output::esc(&r[i]).chars().count())
        .chain([header.chars().count()])
        .max()
        .unwrap_or(0)
}

/// Cuts the last column so that every line fits [`WIDTH`].
fn fit_last(header: &[&str], rows: &mut [Vec<String>]) {
    let n = header.len();
    let fixed: usize = (0..n - 1).map(|i| col_width(header[i], rows, i) + 2).sum();
    let room = WIDTH.saturating_sub(fixed).max(MIN_MESSAGE);
    for r in rows.iter_mut() {
        r[n - 1] = cut(&r[n - 1], room);
    }
}

fn finish(mut out: String, style: &Style, footer: Option<String>) -> String {
    if style.colour && style.legend {
        if let Some(end) = out.find('\n') {
            out.insert_str(end, "\x1b[0m");
            out.insert_str(0, "\x1b[1m");
        }
    }
    if let (true, Some(f)) = (style.legend, footer) {
        let _ = writeln!(out, "\n{f}");
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Width of the `VM@HOST` column of the narrow table: with it the table still fits 80
/// columns with the message at its minimum.
const WHO_WIDTH: usize = 16;

/// `vm@host` for the narrow table (either part may be missing; the host's first label only:
/// `HV07.corp.example` is `HV07`), `-` when neither is known.
fn who(r: &RecordSummary) -> String {
    let host = r
        .host_name
        .as_deref()
        .map(|h| h.split('.').next().unwrap_or(h).to_string());
    match (&r.vm_name, &host) {
        (Some(v), Some(h)) => format!("{v}@{h}"),
        (Some(v), None) => v.clone(),
        (None, Some(h)) => format!("@{h}"),
        (None, None) => "-".into(),
    }
}

/// Inserts the identity columns (schema 1.2: the VM and the physical host, from Hyper-V KVP)
/// before column `at`, only when some row has a name, so tables of older records stay as
/// they were.
fn with_who(
    header: &[&'static str],
    body: &mut [Vec<String>],
    rows: &[RecordSummary],
    at: usize,
    wide: bool,
) -> Vec<&'static str> {
    let mut h = header.to_vec();
    if !rows
        .iter()
        .any(|r| r.vm_name.is_some() || r.host_name.is_some())
    {
        return h;
    }
    if wide {
        h.splice(at..at, ["VM", "HOST"]);
        for (b, r) in body.iter_mut().zip(rows) {
            let dash = || "-".to_string();
            b.insert(at, r.host_name.clone().unwrap_or_else(dash));
            b.insert(at, r.vm_name.clone().unwrap_or_else(dash));
        }
    } else {
        h.insert(at, "VM@HOST");
        for (b, r) in body.iter_mut().zip(rows) {
            b.insert(at, cut(&who(r), WHO_WIDTH));
        }
    }
    h
}

/// The `list`/`tail` table.
pub fn records_table(rows: &[RecordSummary], style: &Style) -> String {
    let (header, mut body): (&[&str], Vec<Vec<String>>) = if style.wide {
        (
            &[
                "ID", "TIME", "BOOT", "SEQ", "ARCH", "KIND", "SOURCE", "LOCATION", "MESSAGE",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        style.time.full(r.received_at_us),
                        r.boot_id.clone(),
                        r.seq.to_string(),
                        r.arch.clone(),
                        r.kind.clone(),
                        r.source.clone(),
                        r.location.clone().unwrap_or_else(|| "-".into()),
                        cut(&r.message, usize::MAX),
                    ]
                })
                .collect(),
        )
    } else {
        (
            &["ID", "TIME", "BOOT:SEQ", "KIND", "MESSAGE"],
            rows.iter()
                .map(|r| {
                    let boot: String = r.boot_id.chars().take(BOOT_DIGITS).collect();
                    vec![
                        r.id.to_string(),
                        style.time.short(r.received_at_us),
                        format!("{boot}:{}", r.seq),
                        r.kind.clone(),
                        r.message.clone(),
                    ]
                })
                .collect(),
        )
    };
    // Before SOURCE (wide) or MESSAGE (narrow).
    let header = &with_who(
        header,
        &mut body,
        rows,
        header.len() - if style.wide { 3 } else { 1 },
        style.wide,
    )[..];
    if !style.wide {
        fit_last(header, &mut body);
    }
    let out = table(header, &body, style.legend);
    finish(
        out,
        style,
        Some(format!(
            "{} listed.",
            plural(rows.len(), "crash record", "crash records")
        )),
    )
}

/// Identical crashes: same kind, message and location.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub count: u64,
    pub kind: String,
    pub message: String,
    pub location: Option<String>,
    pub first_seen: String,
    pub first_seen_us: i64,
    pub last_seen: String,
    pub last_seen_us: i64,
    /// Distinct boots (canary runs) among them.
    pub boots: u64,
    /// Distinct sources among them.
    pub sources: u64,
    pub first_id: i64,
    pub last_id: i64,
}

/// Groups `rows` (any order); the group seen last comes last.
pub fn group(rows: &[RecordSummary]) -> Vec<Group> {
    type Key<'a> = (&'a str, &'a str, Option<&'a str>);
    let mut at: HashMap<Key<'_>, usize> = HashMap::new();
    let mut groups: Vec<(Group, Vec<&str>, Vec<&str>)> = Vec::new();
    for r in rows {
        let k = (r.kind.as_str(), r.message.as_str(), r.location.as_deref());
        let i = *at.entry(k).or_insert_with(|| {
            groups.push((
                Group {
                    count: 0,
                    kind: r.kind.clone(),
                    message: r.message.clone(),
                    location: r.location.clone(),
                    first_seen: String::new(),
                    first_seen_us: i64::MAX,
                    last_seen: String::new(),
                    last_seen_us: i64::MIN,
                    boots: 0,
                    sources: 0,
                    first_id: r.id,
                    last_id: r.id,
                },
                Vec::new(),
                Vec::new(),
            ));
            groups.len() - 1
        });
        let (g, boots, sources) = &mut groups[i];
        g.count += 1;
        if r.received_at_us < g.first_seen_us {
            g.first_seen_us = r.received_at_us;
            g.first_id = r.id;
        }
        if r.received_at_us >= g.last_seen_us {
            g.last_seen_us = r.received_at_us;
            g.last_id = r.id;
        }
        boots.push(&r.boot_id);
        sources.push(&r.source);
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .map(|(mut g, mut boots, mut sources)| {
            boots.sort_unstable();
            boots.dedup();
            sources.sort_unstable();
            sources.dedup();
            g.boots = boots.len() as u64;
            g.sources = sources.len() as u64;
            g.first_seen = crate::util::format_time_us(g.first_seen_us);
            g.last_seen = crate::util::format_time_us(g.last_seen_us);
            g
        })
        .collect();
    out.sort_by_key(|g| (g.last_seen_us, g.last_id));
    out
}

/// The `list --group` table.
pub fn groups_table(groups: &[Group], style: &Style) -> String {
    let (header, mut body): (&[&str], Vec<Vec<String>>) = if style.wide {
        (
            &[
                "COUNT", "BOOTS", "FIRST", "LAST", "LAST ID", "KIND", "LOCATION", "MESSAGE",
            ],
            groups
                .iter()
                .map(|g| {
                    vec![
                        g.count.to_string(),
                        g.boots.to_string(),
                        style.time.full(g.first_seen_us),
                        style.time.full(g.last_seen_us),
                        g.last_id.to_string(),
                        g.kind.clone(),
                        g.location.clone().unwrap_or_else(|| "-".into()),
                        cut(&g.message, usize::MAX),
                    ]
                })
                .collect(),
        )
    } else {
        (
            &["COUNT", "FIRST", "LAST", "KIND", "MESSAGE"],
            groups
                .iter()
                .map(|g| {
                    vec![
                        g.count.to_string(),
                        style.time.short(g.first_seen_us),
                        style.time.short(g.last_seen_us),
                        g.kind.clone(),
                        g.message.clone(),
                    ]
                })
                .collect(),
        )
    };
    if !style.wide {
        fit_last(header, &mut body);
    }
    let n: u64 = groups.iter().map(|g| g.count).sum();
    let out = table(header, &body, style.legend);
    finish(
        out,
        style,
        Some(format!(
            "{} in {}.",
            plural(n as usize, "crash record", "crash records"),
            plural(groups.len(), "group", "groups")
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, at_s: i64, boot: &str, kind: &str, msg: &str) -> RecordSummary {
        RecordSummary {
            id,
            received_at_us: at_s * 1_000_000,
            received_at: String::new(),
            boot_id: boot.repeat(32 / boot.len()),
            seq: 1,
            source: "10.1.2.3:7375".into(),
            arch: "x86_64".into(),
            kind: kind.into(),
            message: msg.into(),
            location: Some("appliance/src/main.rs:10:5".into()),
            vm_name: None,
            host_name: None,
        }
    }

    fn style(wide: bool) -> Style {
        Style {
            time: TimeStyle::new(true),
            wide,
            legend: true,
            colour: false,
        }
    }

    #[test]
    fn the_default_table_fits_80_columns_and_wide_shows_everything() {
        let long = "x".repeat(300);
        let rows = vec![
            rec(1, 1_796_607_000, "ab", "panic", &long),
            rec(123456, 1_796_607_001, "cd", "self-check", "short \x1b[2J"),
        ];
        let t = records_table(&rows, &style(false));
        for l in t.lines() {
            assert!(
                l.chars().count() <= WIDTH,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        assert!(t.contains("Dec 07 01:30:00"), "{t}");
        assert!(t.contains("abababab:1"), "{t}");
        assert!(t.contains("short \\x1b[2J"), "escaped: {t}");
        assert!(t.contains('…'));
        let w = records_table(&rows, &style(true));
        assert!(w.contains(&long) && w.contains(&"ab".repeat(16)), "{w}");
        assert!(w.contains("2026-12-07 01:30:00 +00:00"), "{w}");
        assert!(w.contains("appliance/src/main.rs:10:5"));
    }

    #[test]
    fn identical_crashes_are_grouped_with_counts_and_first_and_last_seen() {
        let rows = vec![
            rec(1, 100, "aa", "panic", "boom"),
            rec(2, 200, "bb", "panic", "other"),
            rec(3, 300, "cc", "panic", "boom"),
            rec(4, 400, "cc", "panic", "boom"),
            rec(5, 500, "dd", "fault", "boom"),
        ];
        let g = group(&rows);
        assert_eq!(g.len(), 3);
        let boom = g
            .iter()
            .find(|g| g.kind == "panic" && g.message == "boom")
            .unwrap();
        assert_eq!(boom.count, 3);
        assert_eq!(boom.boots, 2);
        assert_eq!(
            (boom.first_seen_us, boom.last_seen_us),
            (100_000_000, 400_000_000)
        );
        assert_eq!((boom.first_id, boom.last_id), (1, 4));
        // Ordered by last seen.
        assert_eq!(
            g.iter().map(|g| g.last_id).collect::<Vec<_>>(),
            vec![2, 4, 5]
        );
        let t = groups_table(&g, &style(false));
        assert!(t.contains("5 crash records in 3 groups."), "{t}");
        assert!(t.lines().all(|l| l.chars().count() <= WIDTH));
    }
}
