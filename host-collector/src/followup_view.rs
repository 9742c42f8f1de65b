//! The panic path's seven steps as `show` prints them: the sealed record's own steps (those
//! that finished before the seal: freeze) merged with the follow-up frame's (screen-flush,
//! unload, cleanup, ship, crash registers, end), or "not reported" for a step neither has.
//!
//! The record is sealed at the panic screen (docs/architecture.md, "Sealed at the screen"):
//! what the screen's QR code shows is exactly what ships, so the later steps cannot be in it.
//! The end step's follow-up entry is "started": the follow-up is sent from inside it.
use capture::followup::FollowupRepr;
use capture::panic::{Outcome, Step, StepRecord};
use capture::wire::{Frame, Repr};
use serde::{Deserialize, Serialize};

use crate::store::{RecordKey, StepView};

/// Outcome text for a step neither the record nor its follow-up reports.
pub const NOT_REPORTED: &str = "not reported";
/// Outcome text for the end step in a follow-up (it is sent from inside that step).
pub const STARTED: &str = "started";

/// Whether the follow-up arrived, for `show` and `show --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupView {
    /// The follow-up frame is stored with the record.
    pub received: bool,
    /// Steps it reported.
    pub steps: usize,
    /// In words.
    pub note: String,
}

/// The dedupe key of a stored record from its bytes (boot id and seq from the body, the CRC
/// of the bytes), `None` if they do not decode.
pub fn key_of_raw(raw: &[u8], schema: &str) -> Option<RecordKey> {
    let mut it = schema.split('.').map(|p| p.parse::<u16>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (it.next(), it.next()) else {
        return None;
    };
    let r = capture::record::CrashRecord::decode(major, minor, raw).ok()?;
    Some(RecordKey {
        boot_id: r.boot_id,
        seq: r.seq,
        record_crc: crc32fast::hash(raw),
    })
}

/// The follow-up in a stored frame (checked when it arrived, with the key if one was set;
/// here its CRC and layout are checked again, its tag is not: the key is not at hand).
pub fn parse_stored(raw: &[u8]) -> Option<FollowupRepr> {
    let frame = Frame::new_checked(raw).ok()?;
    match Repr::parse(&frame) {
        Ok(Repr::Followup(f)) => Some(f),
        _ => None,
    }
}

/// Whether `f` is the end step's follow-up: nothing pending but the end step's own entry
/// (the one sent when the record was acked has crash registers and end pending).
fn from_end_step(f: &FollowupRepr) -> bool {
    f.steps()
        .iter()
        .all(|s| s.outcome != Outcome::Pending || s.step == Step::End)
}

/// A follow-up's step as `show` prints it: the end step's own pending entry in the end
/// step's follow-up is "started"; a step that had not run when the follow-up went (crash
/// registers and end in the ship step's) is "not reported".
fn view(s: &StepRecord, f: &FollowupRepr) -> StepView {
    let outcome = match s.outcome {
        Outcome::Pending if s.step == Step::End && from_end_step(f) => STARTED.to_string(),
        Outcome::Pending => NOT_REPORTED.to_string(),
        o => o.to_string(),
    };
    StepView {
        step: s.step.name().to_string(),
        outcome,
        elapsed_us: s.elapsed_us,
    }
}

/// Merges the record's steps with its follow-up (`None`: none arrived) into the seven steps
/// in order, then any step the record has that is not one of the seven (a nested entry's).
pub fn merge(
    record: &[StepView],
    followup: Option<&FollowupRepr>,
) -> (Vec<StepView>, FollowupView) {
    let mut out = Vec::new();
    for step in Step::ALL {
        let name = step.name();
        let in_rec = record.iter().find(|s| s.step == name);
        let in_fu = followup.and_then(|f| f.steps().iter().find(|s| s.step == step).zip(Some(f)));
        let v = match (in_rec, in_fu) {
            (Some(r), _) if r.outcome != "pending" => r.clone(),
            (_, Some((s, f))) => view(s, f),
            (Some(r), None) => r.clone(),
            (None, None) => StepView {
                step: name.to_string(),
                outcome: NOT_REPORTED.to_string(),
                elapsed_us: 0,
            },
        };
        out.push(v);
    }
    // A nested entry's second crash-registers and end entries, as the record has them.
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for s in record {
        let n = seen.entry(s.step.as_str()).or_default();
        *n += 1;
        let known = Step::ALL.iter().any(|k| k.name() == s.step);
        if !known || *n > 1 {
            out.push(s.clone());
        }
    }
    let fv = match followup {
        Some(f) if from_end_step(f) => FollowupView {
            received: true,
            steps: f.steps().len(),
            note: format!(
                "received: {} steps after the seal (the record is sealed at the panic screen)",
                f.steps().len()
            ),
        },
        Some(f) => FollowupView {
            received: true,
            steps: f.reported(),
            note: format!(
                "received when the record was acked: {} steps after the seal; the end step's \
                 did not arrive (the VM stopped or failed before it: some hosts stop it at \
                 the crash registers)",
                f.reported()
            ),
        },
        None => FollowupView {
            received: false,
            steps: 0,
            note: "not received: the outcomes of the steps after the seal (screen-flush to \
                   end) are not reported"
                .to_string(),
        },
    };
    (out, fv)
}

/// How many steps a stored follow-up frame reports (its entries not pending; 0 if it does
/// not parse): the store keeps the follow-up reporting more.
pub fn reported(raw: &[u8]) -> usize {
    parse_stored(raw).map_or(0, |f| f.reported())
}

/// The step times a follow-up frame gives, indexed by step code - 1 (freeze .. end), for the
/// store's `step_*_us` columns: `None` for a step it does not have or reports as pending (no
/// time yet), and for a frame that does not parse.
pub fn step_times(raw: &[u8]) -> [Option<u32>; 7] {
    let mut t = [None; 7];
    if let Some(f) = parse_stored(raw) {
        for s in f.steps() {
            let code = usize::from(u8::from(s.step));
            if (1..=7).contains(&code) && s.outcome != Outcome::Pending && t[code - 1].is_none() {
                t[code - 1] = Some(s.elapsed_us);
            }
        }
    }
    t
}

/// Merges the follow-up stored for the record in `view` (its bytes `raw`) into the view's
/// steps, and says whether one arrived.
pub fn attach(
    view: &mut crate::show::ShowView,
    store: &crate::store::Store,
    raw: &[u8],
) -> Result<(), crate::store::StoreError> {
    let stored = match key_of_raw(raw, &view.record.schema) {
        Some(key) => store.followup(&key)?,
        None => None,
    };
    let f = stored.as_deref().and_then(parse_stored);
    let (steps, fv) = merge(&view.record.fields.steps, f.as_ref());
    view.record.fields.steps = steps;
    view.followup = Some(fv);
    Ok(())
}

/// The dedupe key of a record view (its boot id, seq and CRC as `list`/`export` print them).
fn key_of_view(v: &crate::store::RecordView) -> Option<RecordKey> {
    Some(RecordKey {
        boot_id: crate::util::parse_hex16(&v.boot_id)?,
        seq: v.seq,
        record_crc: u32::from_str_radix(&v.record_crc, 16).ok()?,
    })
}

/// Gives each of `views` (what `export` writes) the seven steps `show` gives it: its own
/// merged with its stored follow-up's (one store read per record).
pub fn merge_into(
    store: &crate::store::Store,
    views: &mut [crate::store::RecordView],
) -> Result<(), crate::store::StoreError> {
    for v in views {
        let stored = match key_of_view(v) {
            Some(key) => store.followup(&key)?,
            None => None,
        };
        let f = stored.as_deref().and_then(parse_stored);
        v.fields.steps = merge(&v.fields.steps, f.as_ref()).0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture::chunk::RecordId;

    fn sv(step: &str, outcome: &str) -> StepView {
        StepView {
            step: step.into(),
            outcome: outcome.into(),
            elapsed_us: 1,
        }
    }

    #[test]
    fn a_sealed_record_with_its_followup_shows_seven_steps() {
        let rec = [sv("freeze", "done")];
        let steps: Vec<StepRecord> = Step::ALL[1..]
            .iter()
            .map(|&step| StepRecord {
                step,
                outcome: if step == Step::End {
                    Outcome::Pending
                } else {
                    Outcome::Done
                },
                elapsed_us: 7,
            })
            .collect();
        let id = RecordId {
            boot_id: [1; 16],
            seq: 1,
            record_crc: 2,
        };
        let f = FollowupRepr::new(&id, &steps);
        let mut buf = [0u8; 256];
        let n = Repr::Followup(f).emit(None, &mut buf).unwrap();
        let parsed = parse_stored(&buf[..n]).unwrap();
        let (m, v) = merge(&rec, Some(&parsed));
        let names: Vec<&str> = m.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            names,
            [
                "freeze",
                "screen-flush",
                "vmbus-unload",
                "arch-cleanup",
                "ship",
                "crash-registers",
                "end"
            ]
        );
        assert_eq!(m[4].outcome, "done");
        assert_eq!(m[4].elapsed_us, 7);
        assert_eq!(m[6].outcome, STARTED);
        assert!(v.received);
        assert_eq!(v.steps, 6);
        // The store's step columns: every step after the seal but the pending end.
        assert_eq!(
            step_times(&buf[..n]),
            [None, Some(7), Some(7), Some(7), Some(7), Some(7), None]
        );
        assert_eq!(step_times(b"junk"), [None; 7]);
    }

    #[test]
    fn the_ship_steps_followup_shows_crash_registers_and_end_not_reported() {
        let steps: Vec<StepRecord> = Step::ALL[1..]
            .iter()
            .map(|&step| {
                let ran = !matches!(step, Step::CrashRegisters | Step::End);
                StepRecord {
                    step,
                    outcome: if ran { Outcome::Done } else { Outcome::Pending },
                    elapsed_us: if ran { 9 } else { 0 },
                }
            })
            .collect();
        let id = RecordId {
            boot_id: [1; 16],
            seq: 1,
            record_crc: 2,
        };
        let f = FollowupRepr::new(&id, &steps);
        let (m, v) = merge(&[sv("freeze", "done")], Some(&f));
        let got: Vec<(&str, &str)> = m
            .iter()
            .map(|s| (s.step.as_str(), s.outcome.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("freeze", "done"),
                ("screen-flush", "done"),
                ("vmbus-unload", "done"),
                ("arch-cleanup", "done"),
                ("ship", "done"),
                ("crash-registers", NOT_REPORTED),
                ("end", NOT_REPORTED)
            ]
        );
        assert!(v.received);
        assert_eq!(v.steps, 4);
        assert!(v.note.contains("end step's did not arrive"), "{}", v.note);
    }

    /// `export` gives each record the seven steps `show` gives it: the sealed record's
    /// freeze with its follow-up's steps, or "not reported" without one.
    #[test]
    fn exported_records_carry_their_followups_steps() {
        use crate::store::{Filter, Store, Sync};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
        let mut keys = Vec::new();
        for seq in [1u32, 2] {
            let mut r = capture::testutil::sample_record(seq);
            r.seq = seq;
            let n = crate::store::tests::sealed(&mut r, "10.0.0.3:4000", i64::from(seq));
            store
                .commit_batch(std::slice::from_ref(&n), &[], &[], &[])
                .unwrap();
            keys.push(n.key);
        }
        // Record 1 has the ship step's follow-up; record 2 none.
        let steps: Vec<StepRecord> = Step::ALL[1..5]
            .iter()
            .map(|&step| StepRecord {
                step,
                outcome: Outcome::Done,
                elapsed_us: 8,
            })
            .collect();
        let k = keys[0];
        let frame = crate::store::tests::followup_frame(&k, &steps);
        store.put_followup(&k, &frame, 5).unwrap();
        let mut recs = store.records(&Filter::default(), false).unwrap();
        merge_into(&store, &mut recs).unwrap();
        let of = |seq: u32| -> Vec<String> {
            recs.iter()
                .find(|v| v.seq == seq)
                .unwrap()
                .fields
                .steps
                .iter()
                .map(|s| format!("{}={}", s.step, s.outcome))
                .collect()
        };
        assert_eq!(
            of(1),
            [
                "freeze=done",
                "screen-flush=done",
                "vmbus-unload=done",
                "arch-cleanup=done",
                "ship=done",
                "crash-registers=not reported",
                "end=not reported"
            ]
        );
        let two = of(2);
        assert_eq!(two.len(), 7);
        assert!(
            two[1..].iter().all(|s| s.ends_with("=not reported")),
            "{two:?}"
        );
    }

    #[test]
    fn without_a_followup_the_later_steps_are_not_reported() {
        let (m, v) = merge(&[sv("freeze", "done")], None);
        assert_eq!(m.len(), 7);
        assert!(m[1..].iter().all(|s| s.outcome == NOT_REPORTED));
        assert!(!v.received);
        assert!(v.note.contains("not received"));
    }

    #[test]
    fn an_unsealed_older_record_keeps_its_own_steps() {
        let rec = [
            sv("freeze", "done"),
            sv("screen-flush", "not present"),
            sv("vmbus-unload", "done"),
            sv("arch-cleanup", "done"),
            sv("ship", "pending"),
        ];
        let (m, _) = merge(&rec, None);
        assert_eq!(m[2].outcome, "done");
        assert_eq!(m[4].outcome, "pending");
        assert_eq!(m[5].outcome, NOT_REPORTED);
    }

    #[test]
    fn a_stored_frame_that_is_not_a_followup_is_ignored() {
        assert!(parse_stored(b"not a frame").is_none());
        assert!(parse_stored(b"").is_none());
    }
}
