//! The panic-path orchestrator: order, recorded outcomes, failures not stopping the next
//! step, nested entries.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::vec::Vec;

use crate::panic::*;
use crate::record::CrashRecord;

/// A scripted implementation: logs calls, returns configured outcomes, checks that every
/// earlier step's outcome is already in the record when a step starts.
struct Script<'a> {
    clock: u64,
    calls: Vec<Step>,
    outcomes: [Outcome; 7],
    /// Shared across "CPUs": UNLOAD count and the crash registers' write-once flag.
    unloads: &'a AtomicUsize,
    crash_written: &'a AtomicBool,
    seen_at_start: Vec<Vec<StepRecord>>,
}

impl<'a> Script<'a> {
    fn new(unloads: &'a AtomicUsize, crash_written: &'a AtomicBool) -> Self {
        Script {
            clock: 1_000,
            calls: Vec::new(),
            outcomes: [Outcome::Done; 7],
            unloads,
            crash_written,
            seen_at_start: Vec::new(),
        }
    }
    fn enter(&mut self, step: Step, rec: &CrashRecord) -> Outcome {
        self.calls.push(step);
        self.seen_at_start.push(rec.steps.to_vec());
        // Each step takes (index + 1) * 10 µs of scripted time.
        let i = Step::ALL.iter().position(|s| *s == step).unwrap();
        self.clock += (i as u64 + 1) * 10;
        self.outcomes[i]
    }
}

impl PanicSteps for Script<'_> {
    fn now_us(&mut self) -> u64 {
        self.clock
    }
    fn freeze(&mut self, rec: &mut CrashRecord) -> Outcome {
        rec.set_message("frozen");
        self.enter(Step::Freeze, rec)
    }
    fn flush_screen(&mut self, rec: &mut CrashRecord) -> Outcome {
        self.enter(Step::ScreenFlush, rec)
    }
    fn unload_vmbus(&mut self) -> Outcome {
        self.unloads.fetch_add(1, Ordering::SeqCst);
        self.calls.push(Step::VmbusUnload);
        self.clock += 30;
        self.outcomes[2]
    }
    fn arch_cleanup(&mut self) -> Outcome {
        self.calls.push(Step::ArchCleanup);
        self.clock += 40;
        self.outcomes[3]
    }
    fn ship(&mut self, rec: &CrashRecord) -> Outcome {
        self.enter(Step::Ship, rec)
    }
    fn crash_registers(&mut self, rec: &CrashRecord) -> Outcome {
        let o = self.enter(Step::CrashRegisters, rec);
        if self.crash_written.swap(true, Ordering::SeqCst) {
            Outcome::Skipped(SkipReason::AlreadyDone)
        } else {
            o
        }
    }
    fn end(&mut self, rec: &CrashRecord) {
        self.enter(Step::End, rec);
    }
}

#[test]
fn first_entry_runs_the_seven_steps_in_order_and_records_each() {
    let (u, c) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut s = Script::new(&u, &c);
    s.outcomes[1] = Outcome::SkippedBusy;
    let mut rec = CrashRecord::empty();
    run(&mut s, &mut rec, Entry::First);
    assert_eq!(s.calls, Step::ALL);
    let got: Vec<(Step, Outcome, u32)> = rec
        .steps
        .iter()
        .map(|r| (r.step, r.outcome, r.elapsed_us))
        .collect();
    assert_eq!(
        got,
        [
            (Step::Freeze, Outcome::Done, 10),
            (Step::ScreenFlush, Outcome::SkippedBusy, 20),
            (Step::VmbusUnload, Outcome::Done, 30),
            (Step::ArchCleanup, Outcome::Done, 40),
            (Step::Ship, Outcome::Done, 50),
            (Step::CrashRegisters, Outcome::Done, 60),
            (Step::End, Outcome::Done, 70),
        ]
    );
    assert_eq!(rec.message.as_str(), "frozen");
}

#[test]
fn each_step_sees_every_earlier_outcome_and_itself_pending() {
    let (u, c) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut s = Script::new(&u, &c);
    s.outcomes[2] = Outcome::TimedOut;
    let mut rec = CrashRecord::empty();
    run(&mut s, &mut rec, Entry::First);
    // What ship() saw: steps 1-4 final, then Ship pending.
    let at_ship = &s.seen_at_start[2];
    let steps: Vec<(Step, Outcome)> = at_ship.iter().map(|r| (r.step, r.outcome)).collect();
    assert_eq!(
        steps,
        [
            (Step::Freeze, Outcome::Done),
            (Step::ScreenFlush, Outcome::Done),
            (Step::VmbusUnload, Outcome::TimedOut),
            (Step::ArchCleanup, Outcome::Done),
            (Step::Ship, Outcome::Pending),
        ]
    );
    // What end() saw: six final outcomes and End pending.
    let at_end = s.seen_at_start.last().unwrap();
    assert_eq!(at_end.len(), 7);
    assert_eq!(at_end[6].outcome, Outcome::Pending);
    assert!(at_end[..6].iter().all(|r| r.outcome != Outcome::Pending));
}

#[test]
fn failing_steps_do_not_stop_the_next_ones() {
    let (u, c) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut s = Script::new(&u, &c);
    s.outcomes = [
        Outcome::Failed(1),
        Outcome::Failed(2),
        Outcome::TimedOut,
        Outcome::Failed(4),
        Outcome::TimedOut,
        Outcome::NotPresent,
        Outcome::Done,
    ];
    let mut rec = CrashRecord::empty();
    run(&mut s, &mut rec, Entry::First);
    assert_eq!(s.calls, Step::ALL);
    let outcomes: Vec<Outcome> = rec.steps.iter().map(|r| r.outcome).collect();
    assert_eq!(&outcomes[..6], &s.outcomes[..6]);
    assert_eq!(outcomes[6], Outcome::Done);
}

#[test]
fn a_freeze_that_rebuilds_the_record_still_gets_its_outcome_recorded() {
    struct Rebuild<'a>(Script<'a>);
    impl PanicSteps for Rebuild<'_> {
        fn now_us(&mut self) -> u64 {
            self.0.now_us()
        }
        fn freeze(&mut self, rec: &mut CrashRecord) -> Outcome {
            *rec = CrashRecord::empty();
            Outcome::Done
        }
        fn flush_screen(&mut self, r: &mut CrashRecord) -> Outcome {
            self.0.flush_screen(r)
        }
        fn unload_vmbus(&mut self) -> Outcome {
            self.0.unload_vmbus()
        }
        fn arch_cleanup(&mut self) -> Outcome {
            self.0.arch_cleanup()
        }
        fn ship(&mut self, r: &CrashRecord) -> Outcome {
            self.0.ship(r)
        }
        fn crash_registers(&mut self, r: &CrashRecord) -> Outcome {
            self.0.crash_registers(r)
        }
        fn end(&mut self, r: &CrashRecord) {
            self.0.end(r)
        }
    }
    let (u, c) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut s = Rebuild(Script::new(&u, &c));
    let mut rec = CrashRecord::empty();
    run(&mut s, &mut rec, Entry::First);
    let steps: Vec<Step> = rec.steps.iter().map(|r| r.step).collect();
    assert_eq!(steps, Step::ALL);
    assert_eq!(rec.steps[0].outcome, Outcome::Done);
}

#[test]
fn nested_entry_writes_crash_registers_and_ends_without_unloading() {
    let (u, c) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut s = Script::new(&u, &c);
    let mut rec = CrashRecord::empty();
    // The first entry died inside UNLOAD: its record says so.
    let _ = rec.steps.push(StepRecord {
        step: Step::Freeze,
        outcome: Outcome::Done,
        elapsed_us: 5,
    });
    let _ = rec.steps.push(StepRecord {
        step: Step::VmbusUnload,
        outcome: Outcome::Pending,
        elapsed_us: 0,
    });
    run(&mut s, &mut rec, Entry::Nested);
    assert_eq!(s.calls, [Step::CrashRegisters, Step::End]);
    assert_eq!(u.load(Ordering::SeqCst), 0);
    let steps: Vec<(Step, Outcome)> = rec.steps.iter().map(|r| (r.step, r.outcome)).collect();
    assert_eq!(
        steps,
        [
            (Step::Freeze, Outcome::Done),
            (Step::VmbusUnload, Outcome::Pending),
            (Step::CrashRegisters, Outcome::Done),
            (Step::End, Outcome::Done),
        ]
    );
}

#[test]
fn a_nested_entry_after_a_full_run_reports_crash_registers_already_done() {
    let (u, c) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut rec = CrashRecord::empty();
    run(&mut Script::new(&u, &c), &mut rec, Entry::First);
    run(&mut Script::new(&u, &c), &mut rec, Entry::Nested);
    assert_eq!(u.load(Ordering::SeqCst), 1);
    assert_eq!(rec.steps.len(), 9);
    assert_eq!(
        rec.steps[7].outcome,
        Outcome::Skipped(SkipReason::AlreadyDone)
    );
    // A full list drops further entries instead of panicking.
    for _ in 0..5 {
        run(&mut Script::new(&u, &c), &mut rec, Entry::Nested);
    }
    assert_eq!(rec.steps.len(), crate::record::STEPS_CAP);
}

#[test]
fn unload_is_sent_once_under_concurrent_panics() {
    for _ in 0..50 {
        let guard = Arc::new(PanicGuard::new());
        let unloads = Arc::new(AtomicUsize::new(0));
        let crash = Arc::new(AtomicBool::new(false));
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (g, u, c, b) = (
                    guard.clone(),
                    unloads.clone(),
                    crash.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    b.wait();
                    let entry = g.enter();
                    let mut s = Script::new(&u, &c);
                    let mut rec = CrashRecord::empty();
                    run(&mut s, &mut rec, entry);
                    (entry, s.calls)
                })
            })
            .collect();
        let results: Vec<(Entry, Vec<Step>)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let firsts: Vec<_> = results.iter().filter(|(e, _)| *e == Entry::First).collect();
        assert_eq!(firsts.len(), 1);
        assert_eq!(firsts[0].1, Step::ALL);
        let nested = results.iter().filter(|(e, _)| *e == Entry::Nested).count();
        assert_eq!(nested, 1, "exactly one nested entry; the rest are terminal");
        for (e, calls) in &results {
            match e {
                Entry::Nested => assert_eq!(calls, &[Step::CrashRegisters, Step::End]),
                Entry::Terminal => assert!(calls.is_empty(), "{calls:?}"),
                Entry::First => {}
            }
        }
        assert_eq!(unloads.load(Ordering::SeqCst), 1);
        assert!(guard.entered());
    }
}

#[test]
fn elapsed_time_saturates_and_survives_a_clock_going_backwards() {
    struct Clock(std::vec::IntoIter<u64>);
    impl PanicSteps for Clock {
        fn now_us(&mut self) -> u64 {
            self.0.next().unwrap_or(0)
        }
        fn freeze(&mut self, _: &mut CrashRecord) -> Outcome {
            Outcome::Done
        }
        fn flush_screen(&mut self, _: &mut CrashRecord) -> Outcome {
            Outcome::Done
        }
        fn unload_vmbus(&mut self) -> Outcome {
            Outcome::Done
        }
        fn arch_cleanup(&mut self) -> Outcome {
            Outcome::Done
        }
        fn ship(&mut self, _: &CrashRecord) -> Outcome {
            Outcome::Done
        }
        fn crash_registers(&mut self, _: &CrashRecord) -> Outcome {
            Outcome::Done
        }
        fn end(&mut self, _: &CrashRecord) {}
    }
    let times = std::vec![0, u64::MAX, 500, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut rec = CrashRecord::empty();
    run(&mut Clock(times.into_iter()), &mut rec, Entry::First);
    assert_eq!(rec.steps[0].elapsed_us, u32::MAX);
    assert_eq!(rec.steps[1].elapsed_us, 0);
}

#[test]
fn a_fault_inside_the_nested_path_is_terminal_and_runs_no_step() {
    // Issue 11: the guard had two states, so a fault inside the nested path re-entered it
    // (x86_64 looped; arm64 stopped after 3 and halted whatever panic_action said).
    let g = PanicGuard::new();
    assert!(!g.entered());
    assert_eq!(g.enter(), Entry::First);
    assert_eq!(g.enter(), Entry::Nested);
    for _ in 0..1000 {
        assert_eq!(
            g.enter(),
            Entry::Terminal,
            "never wraps back to First or Nested"
        );
    }
    let u = AtomicUsize::new(0);
    let c = AtomicBool::new(false);
    let mut s = Script::new(&u, &c);
    let mut rec = CrashRecord::empty();
    run(&mut s, &mut rec, Entry::Terminal);
    assert!(s.calls.is_empty(), "{:?}", s.calls);
    assert!(rec.steps.is_empty());
}
