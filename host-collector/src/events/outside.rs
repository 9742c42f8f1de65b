//! Hooks and webhooks: bounded queues of JSON events and the threads that run them.

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::warn;

use super::EventConfig;
use crate::server::Counters;

/// Jobs and "closed", and the condition workers wait on.
type JobQueue = Arc<(Mutex<(VecDeque<String>, bool)>, Condvar)>;

/// A bounded queue of JSON events and the worker threads that take from it.
pub(super) struct Work {
    q: JobQueue,
    cap: usize,
    pending: Arc<AtomicUsize>,
}

impl Work {
    pub(super) fn start(
        name: &str,
        workers: usize,
        cap: usize,
        pending: Arc<AtomicUsize>,
        f: impl Fn(&str) + Send + Sync + 'static,
    ) -> std::io::Result<Work> {
        let q: JobQueue = Arc::default();
        let f = Arc::new(f);
        for i in 0..workers {
            let q = q.clone();
            let f = f.clone();
            let pending = pending.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = {
                        let mut g = q.0.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if let Some(j) = g.0.pop_front() {
                                break Some(j);
                            }
                            if g.1 {
                                break None;
                            }
                            g = q.1.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    let Some(job) = job else { return };
                    f(&job);
                    pending.fetch_sub(1, Ordering::AcqRel);
                })?;
        }
        Ok(Work { q, cap, pending })
    }

    /// Queues `json`; false (dropped) when the queue is full.
    pub(super) fn push(&self, json: String) -> bool {
        let mut g = self.q.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= self.cap {
            return false;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        g.0.push_back(json);
        self.q.1.notify_one();
        true
    }

    pub(super) fn close(&self) {
        self.q.0.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.q.1.notify_all();
    }
}

/// The system shell running `cmd` as typed at its prompt: `sh -c CMD` (Unix), in a process
/// group of its own, so that [`kill_all`] reaches whatever the command starts.
#[cfg(unix)]
fn shell_command(cmd: &str) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).process_group(0);
    c
}

/// The system shell running `cmd` as typed at its prompt: `%ComSpec%` (else `cmd.exe`)
/// `/S /C "CMD"` (Windows).
#[cfg(windows)]
fn shell_command(cmd: &str) -> Command {
    use std::os::windows::process::CommandExt as _;
    let shell = std::env::var_os("ComSpec")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cmd.exe".into());
    let mut c = Command::new(shell);
    // cmd parses its command line itself, not by the rules std quotes an argument for (it
    // would escape the command's quotes with backslashes), so the command goes unquoted by
    // std. With /S, cmd takes off only the first and the last quote: those put around the
    // command here, so that one starting with a quoted program keeps its own quotes.
    c.raw_arg(format!("/S /C \"{cmd}\""));
    c
}

/// Kills a hook that outlived its timeout and everything in its process group (Unix), then
/// reaps it.
#[cfg(unix)]
fn kill_all(child: &mut std::process::Child) {
    use rustix::process::{kill_process_group, Pid, Signal};
    // The group's id is the shell's pid (`process_group(0)`); the shell is not reaped yet,
    // so the id cannot have been reused.
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills a hook that outlived its timeout, then reaps it. Windows: `cmd` only; a program it
/// started may outlive it.
#[cfg(not(unix))]
fn kill_all(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(super) fn run_hook(cmd: &str, json: &str, timeout: Duration, counters: &Counters) {
    Counters::add(&counters.hook_runs, 1);
    if let Err(why) = run(shell_command(cmd), json, timeout) {
        Counters::add(&counters.hook_failures, 1);
        warn!("--on-event command: {why}");
    }
}

/// Runs `c` with `json` and a newline on its stdin and its stdout discarded; an error unless
/// it exits with 0 within `timeout` (then it is killed).
fn run(mut c: Command, json: &str, timeout: Duration) -> Result<(), String> {
    use wait_timeout::ChildExt;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", c.get_program().to_string_lossy()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Written by a thread of its own: a command that does not read an event larger than
        // the pipe holds (4 KiB on Windows) is still killed at the timeout. The thread ends
        // when the command and whatever it started have exited. A command that does not
        // read its input is not a failure.
        let input = format!("{json}\n");
        let feed = move || {
            let _ = stdin.write_all(input.as_bytes());
        };
        if let Err(e) = std::thread::Builder::new()
            .name("hook-stdin".into())
            .spawn(feed)
        {
            kill_all(&mut child);
            return Err(format!("cannot start a thread for its stdin: {e}"));
        }
    }
    match child.wait_timeout(timeout) {
        Ok(Some(st)) if st.success() => Ok(()),
        Ok(Some(st)) => Err(format!("exited with {st}")),
        Ok(None) => {
            kill_all(&mut child);
            Err(format!("killed after {timeout:?}"))
        }
        Err(e) => Err(format!("wait: {e}")),
    }
}

pub(super) fn post_webhook(
    agent: &ureq::Agent,
    url: &str,
    json: &str,
    cfg: &EventConfig,
    c: &Counters,
) {
    let mut delay = cfg.webhook_backoff;
    let attempts = cfg.webhook_attempts.max(1);
    for attempt in 1..=attempts {
        match agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(json)
        {
            Ok(_) => {
                Counters::add(&c.webhook_sent, 1);
                return;
            }
            Err(e) if attempt == attempts => {
                Counters::add(&c.webhook_failures, 1);
                warn!("--webhook {url}: giving up after {attempts} attempts: {e}");
            }
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;

    /// A hook, as an operator would type it at the system shell's prompt, writing its stdin
    /// to `path`: `cat` on Unix; on Windows `find "}"` (every event line has one: Wine 8's
    /// `find` has no `/V ""`, its `findstr` prints nothing and it has no `more`). The
    /// program is quoted too, as a path with spaces would be: `cmd /C` without `/S` drops
    /// the first and the last quote of such a command.
    fn stdin_to(path: &Path) -> String {
        if cfg!(windows) {
            format!("\"find\" \"}}\" > \"{}\"", path.display())
        } else {
            format!("'cat' > '{}'", path.display())
        }
    }

    /// A hook that does not read its stdin and runs for 10 s.
    fn sleeps() -> &'static str {
        if cfg!(windows) {
            "ping -n 10 127.0.0.1 > NUL"
        } else {
            "sleep 10"
        }
    }

    fn counts(c: &Counters) -> (u64, u64) {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        (n(&c.hook_runs), n(&c.hook_failures))
    }

    /// The event is one JSON line on the hook's stdin, through the system shell (`sh -c`,
    /// `cmd /C`), characters the shell would take as its own included.
    #[test]
    fn a_hook_gets_the_event_as_one_json_line_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("with space");
        std::fs::create_dir(&sub).unwrap();
        let out = sub.join("event.json");
        let json = r#"{"event":"crash_stored","message":"a & b | c ^ % ! <x> 'q' \"d\""}"#;
        let c = Counters::default();
        run_hook(&stdin_to(&out), json, Duration::from_secs(60), &c);
        assert_eq!(counts(&c), (1, 0));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        assert_eq!(text.lines().collect::<Vec<_>>(), [json]);
    }

    /// A zero exit is a run; a non-zero one a failure too.
    #[test]
    fn a_hook_exiting_non_zero_is_a_failure() {
        let c = Counters::default();
        run_hook("exit 0", "{}", Duration::from_secs(60), &c);
        assert_eq!(counts(&c), (1, 0));
        run_hook("exit 3", "{}", Duration::from_secs(60), &c);
        assert_eq!(counts(&c), (2, 1));
    }

    /// A shell that cannot start is a failure naming it.
    #[test]
    fn a_shell_that_cannot_start_is_named() {
        let why = run(
            Command::new("no-such-shell-7f3a"),
            "{}",
            Duration::from_secs(60),
        );
        let why = why.unwrap_err();
        assert!(
            why.starts_with("cannot start no-such-shell-7f3a: "),
            "{why}"
        );
    }

    /// A hook that does not read a large event and does not exit is killed at the timeout
    /// all the same: its stdin (a pipe buffer: 4 KiB on Windows, 64 KiB on Linux) does not
    /// hold the worker.
    #[test]
    fn a_hook_not_reading_a_large_event_is_killed_at_the_timeout() {
        let json = format!("{{\"message\":\"{}\"}}", "x".repeat(1 << 20));
        let c = Counters::default();
        let t = Instant::now();
        run_hook(sleeps(), &json, Duration::from_millis(500), &c);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(counts(&c), (1, 1));
    }

    /// A hook killed at its timeout takes what it started with it (Unix: its process group),
    /// so a hook that hangs does not leave a process behind per event.
    #[cfg(unix)]
    #[test]
    fn a_hook_killed_at_the_timeout_takes_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let cmd = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let c = Counters::default();
        run_hook(&cmd, "{}", Duration::from_millis(300), &c);
        assert_eq!(counts(&c), (1, 1));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie left for whoever reaps orphans here; not still sleeping.
        let t = Instant::now();
        let state = loop {
            let state = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().chars().next()))
                .flatten();
            if matches!(state, None | Some('Z')) || t.elapsed() > Duration::from_secs(3) {
                break state;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            matches!(state, None | Some('Z')),
            "the hook's child is {state:?}"
        );
    }
}
