//! Human output: tables (`list`, `list --canaries`, `stats`) and the record view (`show`).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::store::{CanaryView, RecordSummary, RecordView, RejectionView, Stats};

/// `s` made safe for a terminal: every control character (C0 but `\n` where `newlines`, DEL,
/// C1) and every bidirectional override is written as a visible escape (`\x1b`, `\u{9b}`),
/// so record text from a sender cannot move the cursor, retitle the window or reorder what is
/// shown. A backslash stays as it is. JSON output does not go through this: it is exact.
pub fn esc_text(s: &str, newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && !(newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            o.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(o, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(o, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(o)
}

/// [`esc_text`] for one line.
pub fn esc(s: &str) -> Cow<'_, str> {
    esc_text(s, false)
}

/// Left-aligned columns separated by two spaces; the last column is not padded. Every cell is
/// escaped ([`esc`]).
pub fn table(header: &[&str], rows: &[Vec<String>], legend: bool) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| esc(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        let cells: Vec<&str> = cells.collect();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                l.push_str(c);
                l.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    if legend {
        line(&mut header.iter().copied());
    }
    for r in &rows {
        line(&mut r.iter().map(|c| c.as_ref()));
    }
    out
}

fn ellipsize(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The `list --rejected` table.
pub fn rejections_table(rows: &[RejectionView], legend: bool) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.received_at.clone(),
                r.boot_id.chars().take(12).collect(),
                r.seq.to_string(),
                r.schema.clone(),
                r.source.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "TIME", "BOOT", "SEQ", "SCHEMA", "SOURCE", "REASON"],
        &body,
        legend,
    )
}

/// The `list` table.
pub fn records_table(rows: &[RecordSummary], legend: bool) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.received_at.clone(),
                r.boot_id.chars().take(12).collect(),
                r.seq.to_string(),
                r.arch.clone(),
                r.kind.clone(),
                r.source.clone(),
                ellipsize(&r.message, 60),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "TIME", "BOOT", "SEQ", "ARCH", "KIND", "SOURCE", "MESSAGE",
        ],
        &body,
        legend,
    );
    if legend {
        let _ = writeln!(
            out,
            "\n{} crash record{} listed.",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        );
    }
    out
}

/// The `list --canaries` table.
pub fn canaries_table(rows: &[CanaryView], legend: bool) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.boot_id.clone(),
                c.source.clone(),
                c.arch.clone(),
                c.last_seen.clone(),
                format_uptime_ms(c.uptime_ms),
                c.heartbeats.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "BOOT",
            "SOURCE",
            "ARCH",
            "LAST SEEN",
            "UPTIME",
            "HEARTBEATS",
        ],
        &body,
        legend,
    );
    if legend {
        let _ = writeln!(
            out,
            "\n{} canar{} seen.",
            rows.len(),
            if rows.len() == 1 { "y" } else { "ies" }
        );
    }
    out
}

fn format_uptime_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{:03}s", s, ms % 1000)
    }
}

/// A JSON value on one line (objects as `k=v` pairs).
pub fn value_inline(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", value_inline(v)))
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(value_inline).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The human view of one record (`show`).
pub fn record_view(r: &RecordView) -> String {
    let f = &r.fields;
    let mut o = String::new();
    let pad = "               ";
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(o, "{k:>13}: {}", esc(v));
    };
    kv("ID", &r.id.to_string());
    kv("Boot ID", &r.boot_id);
    kv("Sequence", &r.seq.to_string());
    kv("Received", &format!("{} from {}", r.received_at, r.source));
    kv(
        "Record",
        &format!(
            "schema {}, {} bytes, CRC {}",
            r.schema, r.raw_len, r.record_crc
        ),
    );
    kv("Build ID", &f.build_id);
    kv("Arch", &format!("{} (boot: {})", f.arch, f.boot_mode));
    kv("Hypervisor", &value_inline(&f.hypervisor));
    kv(
        "VMBus",
        f.vmbus_version.as_deref().unwrap_or("not connected"),
    );
    kv(
        "Uptime",
        &format!(
            "{}.{:06} s",
            f.uptime_us / 1_000_000,
            f.uptime_us % 1_000_000
        ),
    );
    let kind = match &f.kind_detail {
        Some(d) => format!("{} ({})", f.kind, value_inline(d)),
        None => f.kind.clone(),
    };
    kv("Kind", &kind);
    kv("Message", &f.message);
    if let Some(l) = &f.location {
        kv("Location", &format!("{}:{}:{}", l.file, l.line, l.column));
    }
    let reg = |k: &str| esc(f.registers[k].as_str().unwrap_or("?")).into_owned();
    let _ = writeln!(
        o,
        "{:>13}: pc={} sp={} fp={}",
        "Registers",
        reg("pc"),
        reg("sp"),
        reg("fp")
    );
    if let Some(gpr) = f.registers["gpr"].as_array() {
        for (row, regs) in gpr.chunks(4).enumerate() {
            let vals: Vec<String> = regs
                .iter()
                .map(|v| format!("{:>18}", esc(v.as_str().unwrap_or("?"))))
                .collect();
            let _ = writeln!(o, "{pad}gpr[{:>2}] {}", row * 4, vals.join(" "));
        }
    }
    if f.backtrace.is_empty() {
        let _ = writeln!(o, "{:>13}: (empty)", "Backtrace");
    } else {
        for (i, a) in f.backtrace.iter().enumerate() {
            let a = esc(a);
            if i == 0 {
                let _ = writeln!(o, "{:>13}: #{i:<2} {a}", "Backtrace");
            } else {
                let _ = writeln!(o, "{pad}#{i:<2} {a}");
            }
        }
    }
    if f.steps.is_empty() {
        let _ = writeln!(o, "{:>13}: (no steps recorded)", "Panic path");
    } else {
        let w = f.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
        let wo = f.steps.iter().map(|s| s.outcome.len()).max().unwrap_or(0);
        for (i, s) in f.steps.iter().enumerate() {
            let line = format!("{:<w$}  {:<wo$}  {} us", s.step, s.outcome, s.elapsed_us);
            let line = esc(&line);
            if i == 0 {
                let _ = writeln!(o, "{:>13}: {line}", "Panic path");
            } else {
                let _ = writeln!(o, "{pad}{line}");
            }
        }
    }
    if f.log_tail.is_empty() {
        let _ = writeln!(o, "{:>13}: (empty)", "Log tail");
    } else {
        let _ = writeln!(o, "{:>13}:", "Log tail");
        for l in f.log_tail.lines() {
            let _ = writeln!(o, "{pad}{}", esc(l));
        }
    }
    o
}

/// The human `stats` output.
pub fn stats_view(s: &Stats) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:>18}: {}", "records", s.records);
    let _ = writeln!(o, "{:>18}: {}", "canaries", s.canaries);
    for (k, v) in &s.counters {
        let _ = writeln!(o, "{:>18}: {v}", esc(k));
    }
    let _ = writeln!(o, "{:>18}: {}", "schema_version", s.schema_version);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_can_drop_the_header() {
        let rows = vec![
            vec!["1".to_string(), "abc".to_string(), "x".to_string()],
            vec!["100".to_string(), "d".to_string(), "y".to_string()],
        ];
        let t = table(&["ID", "NAME", "M"], &rows, true);
        assert_eq!(t, "ID   NAME  M\n1    abc   x\n100  d     y\n");
        let t = table(&["ID", "NAME", "M"], &rows, false);
        assert_eq!(t, "1    abc   x\n100  d     y\n");
    }

    #[test]
    fn control_characters_are_escaped_visibly() {
        assert_eq!(esc("plain ✓"), "plain ✓");
        assert_eq!(esc("a\x1b[2Jb\x07"), "a\\x1b[2Jb\\x07");
        assert_eq!(esc("\u{9b}31m \u{202e}x"), "\\u{9b}31m \\u{202e}x");
        assert_eq!(esc_text("a\nb\r", true), "a\nb\\x0d");
        let t = table(
            &["A", "B"],
            &[vec!["\x1b]0;t\x07".into(), "x".into()]],
            false,
        );
        assert_eq!(t, "\\x1b]0;t\\x07  x\n");
    }

    #[test]
    fn long_messages_are_cut_to_one_line() {
        assert_eq!(ellipsize("a\nb", 10), "a b");
        assert_eq!(ellipsize("abcdef", 4), "abc…");
    }
}
