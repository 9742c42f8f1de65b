//! A pager for long tables on a terminal, as `coredumpctl` does: `$SYSTEMD_PAGER` or
//! `$PAGER` (default `less` with `LESS=FRSXMK` unless `LESS` is set: quits when the text fits
//! one screen, keeps colours, does not wrap). Off with `--no-pager`, when stdout is not a
//! terminal, or when the pager is `cat` or empty.

use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

static OFF: AtomicBool = AtomicBool::new(false);

/// `--no-pager`.
pub(crate) fn disable() {
    OFF.store(true, Ordering::Relaxed);
}

/// The pager command to run, if any.
fn command(tty: bool, off: bool, systemd: Option<&str>, pager: Option<&str>) -> Option<String> {
    if off || !tty {
        return None;
    }
    let p = systemd.or(pager).unwrap_or("less").trim();
    (!p.is_empty() && p != "cat").then(|| p.to_string())
}

/// Writes `text` through the pager, or straight to stdout. A pager that cannot start is
/// skipped.
pub(crate) fn page(text: &str) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let cmd = command(
        std::io::stdout().is_terminal(),
        OFF.load(Ordering::Relaxed),
        env("SYSTEMD_PAGER").as_deref(),
        env("PAGER").as_deref(),
    );
    let Some(cmd) = cmd else {
        return crate::print(text);
    };
    let mut c = Command::new("sh");
    c.arg("-c").arg(&cmd).stdin(Stdio::piped());
    if std::env::var_os("LESS").is_none() {
        c.env("LESS", "FRSXMK");
    }
    let Ok(mut child) = c.spawn() else {
        return crate::print(text);
    };
    if let Some(mut stdin) = child.stdin.take() {
        // The reader may quit early (q): not an error.
        let _ = stdin.write_all(text.as_bytes());
    }
    let _ = child.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pager_runs_only_on_a_terminal_and_can_be_turned_off() {
        assert_eq!(command(true, false, None, None).as_deref(), Some("less"));
        assert_eq!(command(false, false, None, None), None);
        assert_eq!(command(true, true, None, None), None);
        assert_eq!(
            command(true, false, None, Some("most")).as_deref(),
            Some("most")
        );
        assert_eq!(
            command(true, false, Some("less -R"), Some("most")).as_deref(),
            Some("less -R")
        );
        assert_eq!(command(true, false, None, Some("cat")), None);
        assert_eq!(command(true, false, Some(""), None), None);
    }
}
