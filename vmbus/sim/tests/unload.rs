//! UNLOAD (panic step 3): run once under concurrent callers, reply on another CPU, bounded
//! timeouts, host differences, and reconnect afterwards; the core cases on every host
//! personality.

mod common;

use common::{config, hyperv, sim, ARCHES, PERSONALITIES};
use vmbus::{ConnectOptions, Connection, SynicMode, UnloadOutcome, UnloadSkip};
use vmbus_sim::{Guest, Personality, Sim, SimArch};

const SECOND: u64 = 10_000_000;

fn connect<'g>(g: &'g Guest<'_>, vp: u32) -> Connection<'g> {
    let opts = ConnectOptions {
        target_vp: Some(vp),
        ..ConnectOptions::default()
    };
    Connection::connect(g.hv(vp), &g.clock, &g.sim.mem, &g.synic, &opts).unwrap()
}

#[test]
fn unload_is_sent_once_under_concurrent_callers() {
    for (arch, p) in ARCHES
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let mut cfg = config(arch, p);
        cfg.cpus = 4;
        let s = Sim::new(cfg);
        let g = Guest::boot(&s, SynicMode::Polling);
        let c = connect(&g, 0);
        let deadline = s.now() + 10 * SECOND;
        let outcomes: Vec<UnloadOutcome> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|vp| {
                    let (g, c) = (&g, &c);
                    scope.spawn(move || c.unload(g.hv(vp), &g.clock, deadline))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let done = outcomes
            .iter()
            .filter(|o| matches!(o, UnloadOutcome::Done { .. }))
            .count();
        let skipped = outcomes
            .iter()
            .filter(|o| **o == UnloadOutcome::Skipped(UnloadSkip::AlreadyUnloaded))
            .count();
        assert_eq!((done, skipped), (1, 3), "{arch:?} {p:?}: {outcomes:?}");
        assert_eq!(
            s.guest_messages_of(16).len(),
            1,
            "exactly one UNLOAD posted"
        );
        // And once more from the same CPU afterwards.
        assert_eq!(
            c.unload(g.hv(0), &g.clock, deadline),
            UnloadOutcome::Skipped(UnloadSkip::AlreadyUnloaded)
        );
    }
}

#[test]
fn unload_finds_the_reply_on_another_cpus_slot() {
    for (arch, p) in ARCHES
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let s = sim(arch, p);
        let g = Guest::boot(&s, SynicMode::Polling);
        let c = connect(&g, 0);
        // The panicking CPU is 1; Hyper-V answers on the connect CPU (0) only.
        let o = c.unload(g.hv(1), &g.clock, s.now() + 10 * SECOND);
        assert!(
            matches!(
                o,
                UnloadOutcome::Done {
                    responder_vp: 0,
                    ..
                }
            ),
            "{arch:?} {p:?}: {o:?}"
        );
        // The reply can also land on a CPU that is neither (fault: another VP).
        let mut cfg = config(arch, p);
        cfg.cpus = 3;
        let s = Sim::new(cfg);
        let g = Guest::boot(&s, SynicMode::Polling);
        let c = connect(&g, 0);
        s.faults(|f| f.unload_reply_vp = Some(2));
        let o = c.unload(g.hv(1), &g.clock, s.now() + 10 * SECOND);
        assert!(
            matches!(
                o,
                UnloadOutcome::Done {
                    responder_vp: 2,
                    ..
                }
            ),
            "{arch:?} {p:?}: {o:?}"
        );
        // Every slot is cleared afterwards.
        for vp in 0..3 {
            assert_eq!(s.slot_type(vp, 2), 0);
        }
    }
}

#[test]
fn unload_timeout_is_bounded_by_the_deadline() {
    for (arch, p) in ARCHES
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let mut cfg = config(arch, p);
        cfg.clock_step = SECOND / 10;
        let s = Sim::new(cfg);
        let g = Guest::boot(&s, SynicMode::Polling);
        let c = connect(&g, 0);
        s.faults(|f| f.drop_unload_response = true);
        let start = s.now();
        let deadline = start + 100 * SECOND;
        let o = c.unload(g.hv(1), &g.clock, deadline);
        let UnloadOutcome::TimedOut { waited } = o else {
            panic!("{arch:?} {p:?}: {o:?}")
        };
        assert!(s.now() >= deadline);
        assert!(
            s.now() - deadline <= SECOND,
            "overshoot {}",
            s.now() - deadline
        );
        assert!((99 * SECOND..=101 * SECOND).contains(&waited), "{waited}");
    }
}

#[test]
fn slow_unload_response_within_the_deadline_completes() {
    let mut cfg = config(SimArch::X86_64, hyperv());
    cfg.clock_step = SECOND / 100;
    let s = Sim::new(cfg);
    let g = Guest::boot(&s, SynicMode::Polling);
    let c = connect(&g, 0);
    // Azure has been seen taking 50 s (ref §2.4).
    s.faults(|f| f.unload_delay = 50 * SECOND);
    let o = c.unload(g.hv(0), &g.clock, s.now() + 100 * SECOND);
    let UnloadOutcome::Done {
        waited,
        responder_vp: 0,
    } = o
    else {
        panic!("{o:?}")
    };
    assert!((50 * SECOND..51 * SECOND).contains(&waited), "{waited}");
}

#[test]
fn reply_queued_behind_a_busy_slot_arrives_after_eom_on_the_owning_cpu() {
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let c = connect(&g, 0);
    // An unrelated message occupies CPU 0's slot (nobody polled it yet).
    s.inject(0, 1, 8, &[99, 0, 0, 0, 0, 0, 0, 0]);
    let o = c.unload(g.hv(0), &g.clock, s.now() + 10 * SECOND);
    assert!(
        matches!(
            o,
            UnloadOutcome::Done {
                responder_vp: 0,
                ..
            }
        ),
        "{o:?}"
    );
    assert!(s.eoms(0) >= 1, "the pending flag made CPU 0 write EOM");
}

#[test]
fn reply_stuck_behind_a_cpu_that_never_polls_times_out_bounded() {
    // The connect CPU (0) is stopped with a message in its slot; the reply queues behind it
    // and only an EOM from CPU 0 would release it (EOM acts on the writing CPU). Linux has the
    // same limit; the deadline bounds it.
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let c = connect(&g, 0);
    s.inject(0, 1, 8, &[99, 0, 0, 0, 0, 0, 0, 0]);
    let deadline = s.now() + 2 * SECOND;
    let o = c.unload(g.hv(1), &g.clock, deadline);
    assert!(matches!(o, UnloadOutcome::TimedOut { .. }), "{o:?}");
    assert_eq!(s.eoms(0), 0);
    assert!(s.eoms(1) >= 1, "CPU 1 EOMed the stale message it found");
}

#[test]
fn openvmm_drops_unload_when_not_connected_and_the_wait_stays_bounded() {
    let s = sim(SimArch::Aarch64, Personality::OpenVmm);
    let g = Guest::boot(&s, SynicMode::Polling);
    let c = connect(&g, 0);
    s.reset_bus();
    let o = c.unload(g.hv(0), &g.clock, s.now() + SECOND);
    assert!(matches!(o, UnloadOutcome::TimedOut { .. }), "{o:?}");
    assert_eq!(s.guest_messages_of(16).len(), 1);
}

#[test]
fn reconnect_after_unload_works_on_every_host() {
    for arch in ARCHES {
        for p in [hyperv(), Personality::Qemu, Personality::OpenVmm] {
            let s = sim(arch, p);
            let g = Guest::boot(&s, SynicMode::Polling);
            let mut c = connect(&g, 0);
            c.request_offers(g.hv(0), &g.clock).unwrap();
            let o = c.unload(g.hv(0), &g.clock, s.now() + 10 * SECOND);
            assert!(
                matches!(o, UnloadOutcome::Done { .. }),
                "{arch:?} {p:?}: {o:?}"
            );
            assert!(!c.is_connected());
            assert!(!s.is_connected());
            // Order B (ref §2.1): a fresh connection on the same SynIC.
            let mut c2 = connect(&g, 0);
            let offers = c2.request_offers(g.hv(0), &g.clock).unwrap();
            assert_eq!(offers.len(), 3, "{arch:?} {p:?}");
            let o = c2.unload(g.hv(0), &g.clock, s.now() + 10 * SECOND);
            assert!(
                matches!(o, UnloadOutcome::Done { .. }),
                "second connection unloads too"
            );
            assert_eq!(s.guest_messages_of(16).len(), 2);
        }
    }
}

#[test]
fn requests_after_unload_are_refused() {
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let mut c = connect(&g, 0);
    c.unload(g.hv(0), &g.clock, s.now() + SECOND);
    assert_eq!(
        c.request_offers(g.hv(0), &g.clock).unwrap_err(),
        vmbus::VmbusError::NotConnected
    );
}

/// A clock that never advances (a broken time source).
struct StuckClock;
impl vmbus::Clock for StuckClock {
    fn now(&self) -> u64 {
        42
    }
}

#[test]
fn a_stuck_clock_cannot_hang_unload_or_a_request() {
    let s = sim(SimArch::X86_64, hyperv());
    let g = Guest::boot(&s, SynicMode::Polling);
    let opts = ConnectOptions::default();
    let mut c = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts).unwrap();
    c.set_poll_limit(10_000);
    s.faults(|f| f.drop_unload_response = true);
    let t = std::time::Instant::now();
    let o = c.unload(g.hv(0), &StuckClock, 1_000);
    assert!(matches!(o, UnloadOutcome::TimedOut { .. }), "{o:?}");
    assert!(t.elapsed().as_secs() < 10);
    assert_eq!(
        c.request_offers(g.hv(0), &StuckClock).unwrap_err(),
        vmbus::VmbusError::NotConnected
    );
    // A request waiting for a reply that never comes, on a stuck clock, also ends.
    let mut c = Connection::connect(g.hv(0), &g.clock, &s.mem, &g.synic, &opts).unwrap();
    c.set_poll_limit(10_000);
    s.reset_bus();
    assert_eq!(
        c.request_offers(g.hv(0), &StuckClock).unwrap_err(),
        vmbus::VmbusError::Timeout("ALLOFFERS_DELIVERED")
    );
}
