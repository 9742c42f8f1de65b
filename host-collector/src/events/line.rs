//! The log lines of events: `key=value`, one line, every control character escaped.

use std::fmt::Write as _;

use super::Event;
use crate::liveness::State;
use crate::output::esc;

/// Lower-case hex of `bytes` (as [`hex`]) appended to `o`.
pub(super) fn push_hex(o: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        o.push(DIGITS[(b >> 4) as usize] as char);
        o.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// `key=value`, the value quoted when it is empty or holds a space, `"`, `=` or `\`, and
/// every control character escaped (see [`esc`]).
pub(super) fn kv(o: &mut String, key: &str, v: &str) {
    let v = esc(v);
    if !o.is_empty() {
        o.push(' ');
    }
    o.push_str(key);
    o.push('=');
    if v.is_empty() || v.contains([' ', '"', '=', '\\']) {
        o.push('"');
        // Whole runs between the characters that need a backslash (this runs for every
        // stored record's message).
        let mut rest: &str = &v;
        while let Some(i) = rest.find(['"', '\\']) {
            o.push_str(&rest[..i]);
            o.push('\\');
            o.push_str(&rest[i..i + 1]);
            rest = &rest[i + 1..];
        }
        o.push_str(rest);
        o.push('"');
    } else {
        o.push_str(&v);
    }
}

/// [`kv`] for a number, without an intermediate `String`.
pub(super) fn kv_num(o: &mut String, key: &str, v: impl std::fmt::Display) {
    if !o.is_empty() {
        o.push(' ');
    }
    let _ = write!(o, "{key}={v}");
}

/// The log line of an event (one line, no control characters).
pub fn log_line(e: &Event) -> String {
    let mut o = String::new();
    match e {
        Event::CrashStored(c) => {
            o.push_str("crash stored");
            kv_num(&mut o, "id", c.id);
            kv(&mut o, "boot", &c.boot_id);
            kv_num(&mut o, "seq", c.seq);
            kv(&mut o, "host", &c.host);
            kv(&mut o, "source", &c.source);
            kv(&mut o, "arch", &c.arch);
            kv(&mut o, "kind", &c.kind);
            if c.drill {
                kv(&mut o, "drill", "scheduled");
            }
            if let Some(l) = &c.location {
                kv(&mut o, "location", l);
            }
            kv(&mut o, "message", &c.message);
        }
        Event::CrashPath(p) => super::path::path_line(&mut o, p),
        Event::CanaryState(s) => {
            let _ = write!(o, "canary {}", s.to);
            kv(&mut o, "address", &s.address);
            kv(&mut o, "boot", &s.boot_id);
            kv(&mut o, "from", s.from.map(State::as_str).unwrap_or("new"));
            kv(&mut o, "to", s.to.as_str());
            kv(&mut o, "reason", &s.reason);
            kv(&mut o, "last_seen", &s.last_seen);
            if let Some(id) = s.record_id {
                kv_num(&mut o, "record", id);
            }
        }
    }
    o
}
