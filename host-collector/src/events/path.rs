//! `crash_path`: how a crash's panic path went after its record was sealed, one event per
//! follow-up frame stored (or replacing a less complete one).
//!
//! The record is sealed (and shipped, and sent out as `crash_stored`) before VMBus UNLOAD, so
//! its own steps stop at freeze; screen-flush, vmbus-unload, arch-cleanup, ship,
//! crash-registers and end arrive in one or two follow-up frames (`server::followup`). This
//! event carries them, so that a hook or webhook sees a host whose crash path fails after
//! the seal: `failed_step` names the first step that failed or timed out, `complete` says the
//! end step was reached.
//!
//! The appliance sends a follow-up when its record is acked (crash registers and end have not
//! run yet: `complete` false, both "not reported") and the more complete one from the end step
//! (`complete` true, `replaced` true); a host that stops the VM at the crash registers never
//! sends the second. So an unfinished path is a `crash_path` with `complete` false and no
//! later one with `complete` true for the same record; a failed step is known at once.

use capture::followup::FollowupRepr;
use capture::panic::{Outcome, Step, StepRecord};
use serde::Serialize;

use super::host_of;
use super::line::{kv, kv_num};
use crate::followup_view::merge;
use crate::store::StepView;
use crate::util::{format_time_us, hex};

/// A stored follow-up, as sent out (`{"event": "crash_path", ...}`).
#[derive(Debug, Clone, Serialize)]
pub struct PathEvent {
    /// The record's id (`serve` has it from `Store::put_followup`; `null` if unknown).
    pub id: Option<i64>,
    pub boot_id: String,
    pub seq: u32,
    pub record_crc: String,
    /// The record's sending host (its IP address), as in `crash_stored`.
    pub host: String,
    /// The record's source address.
    pub source: String,
    /// When the follow-up arrived.
    pub received_at: String,
    pub received_at_us: i64,
    /// It replaced a less complete follow-up (the end step's after the one sent at the ack).
    pub replaced: bool,
    /// The path reached its end step (the end step's follow-up, or an end outcome).
    pub complete: bool,
    /// The first step (in the order they ran) that failed or timed out; `null` if none.
    pub failed_step: Option<String>,
    /// The steps after the seal, screen-flush to end, as `show` prints them ("not reported":
    /// not run yet when the follow-up was sent; "started": the end step, which sends it).
    pub steps: Vec<StepView>,
}

/// A follow-up as the writer queues it: the frame (a copy, 140 bytes) and what the store
/// reported of its record when attaching it; the dispatcher renders the event and the line from it (hex,
/// times, step names), off the writer.
#[derive(Debug, Clone)]
pub struct StoredPath {
    /// The record's id (`None`: unknown).
    pub id: Option<i64>,
    /// The record's source address.
    pub source: String,
    /// When the follow-up arrived.
    pub received_at_us: i64,
    pub replaced: bool,
    pub followup: FollowupRepr,
}

/// A step that went wrong: it failed or gave up at its deadline. Skips (on purpose, a busy
/// lock, a feature not present) are not failures.
fn failed(o: Outcome) -> bool {
    matches!(o, Outcome::Failed(_) | Outcome::TimedOut)
}

impl StoredPath {
    /// The first step that failed or timed out.
    pub fn failed(&self) -> Option<&StepRecord> {
        self.followup.steps().iter().find(|s| failed(s.outcome))
    }

    /// Whether the path reached its end step: the follow-up has the end step's entry with an
    /// outcome, or pending in the end step's own follow-up (nothing else pending: it is sent
    /// from inside the end step), as `show` prints "started".
    pub fn complete(&self) -> bool {
        let steps = self.followup.steps();
        let end_started = steps.iter().any(|s| s.step == Step::End)
            && steps
                .iter()
                .all(|s| s.outcome != Outcome::Pending || s.step == Step::End);
        let end_done = steps
            .iter()
            .any(|s| s.step == Step::End && s.outcome != Outcome::Pending);
        end_started || end_done
    }

    /// The six steps after the seal as `show` prints them (`followup_view::merge` without the
    /// record's own steps, freeze left out).
    pub fn steps(&self) -> Vec<StepView> {
        let (steps, _) = merge(&[], Some(&self.followup));
        steps
            .into_iter()
            .filter(|s| s.step != Step::Freeze.name())
            .collect()
    }

    /// The event sent to hooks and webhooks.
    pub fn event(&self) -> PathEvent {
        let f = &self.followup;
        PathEvent {
            id: self.id,
            boot_id: hex(&f.boot_id),
            seq: f.seq,
            record_crc: format!("{:08x}", f.record_crc),
            host: host_of(&self.source),
            source: self.source.clone(),
            received_at: format_time_us(self.received_at_us),
            received_at_us: self.received_at_us,
            replaced: self.replaced,
            complete: self.complete(),
            failed_step: self.failed().map(|s| s.step.name().to_string()),
            steps: self.steps(),
        }
    }

    /// Its log line ([`super::log_line`] of [`StoredPath::event`]: follow-ups are a few a
    /// crash, rendered by the dispatcher).
    pub fn log_line(&self) -> String {
        let mut o = String::with_capacity(160);
        path_line(&mut o, &self.event());
        o
    }

    /// Bytes held, roughly (for the queue's byte budget).
    pub(super) fn cost(&self) -> usize {
        256 + std::mem::size_of::<FollowupRepr>() + self.source.len()
    }
}

/// `id=N`, or `id=-` when the record's id is unknown.
fn id_kv(o: &mut String, id: Option<i64>) {
    match id {
        Some(id) => kv_num(o, "id", id),
        None => kv(o, "id", "-"),
    }
}

/// The log line of a [`PathEvent`]: `crash path id=… boot=… seq=… host=… complete=…
/// reported=… failed=…` (and the failed step's `outcome=`).
pub(super) fn path_line(o: &mut String, p: &PathEvent) {
    o.push_str("crash path");
    id_kv(o, p.id);
    kv(o, "boot", &p.boot_id);
    kv_num(o, "seq", p.seq);
    kv(o, "host", &p.host);
    kv_num(o, "complete", p.complete);
    let reported = p
        .steps
        .iter()
        .filter(|s| {
            s.outcome != crate::followup_view::NOT_REPORTED
                && s.outcome != crate::followup_view::STARTED
        })
        .count();
    kv_num(o, "reported", reported);
    match p.failed_step.as_deref() {
        Some(f) => {
            kv(o, "failed", f);
            if let Some(s) = p.steps.iter().find(|s| s.step == f) {
                kv(o, "outcome", &s.outcome);
            }
        }
        None => kv(o, "failed", "-"),
    }
}
