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

pub(super) fn run_hook(cmd: &str, json: &str, timeout: Duration, counters: &Counters) {
    use wait_timeout::ChildExt;
    Counters::add(&counters.hook_runs, 1);
    let fail = |why: String| {
        Counters::add(&counters.hook_failures, 1);
        warn!("--on-event command: {why}");
    };
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start sh: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not a failure.
        let _ = stdin.write_all(json.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    match child.wait_timeout(timeout) {
        Ok(Some(st)) if st.success() => {}
        Ok(Some(st)) => fail(format!("exited with {st}")),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            fail(format!("killed after {timeout:?}"));
        }
        Err(e) => fail(format!("wait: {e}")),
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
