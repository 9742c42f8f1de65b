//! The canary workload: periodic self-checks, heartbeats to the collector, drills, and the
//! panics and faults asked for on the command line.
use crate::config::Config;
use crate::panic_path::{HINT_DRILL, HINT_SELFCHECK, KIND_HINT};
use crate::platform::{HYPERV, NET};
use capture::drill::{DrillGuard, Refusal, Verdict};
use capture::wire::{HeartbeatRepr, Repr};
use core::sync::atomic::Ordering;

/// Timer sanity: the counter against an independent reference clock (x86_64: CMOS RTC;
/// arm64: PL031 RTC), over the time since the last reference tick we trusted.
struct TimerCheck {
    base: Option<(u64, u32)>,
}

impl TimerCheck {
    fn check(&mut self, tolerance_pct: u32) -> Result<(), &'static str> {
        let now = crate::arch::now_us();
        let Some(ref_s) = crate::arch::imp::reference_seconds() else {
            return Ok(()); // no reference clock: nothing to compare
        };
        if !crate::arch::timer_calibrated() {
            return Ok(()); // the counter frequency is a guess: nothing to hold it to
        }
        match self.base {
            None => self.base = Some((now, ref_s)),
            Some((t0, r0)) => {
                if now < t0 {
                    return Err("timer: the counter went backwards");
                }
                // Midnight wrap: start over.
                if ref_s < r0 {
                    self.base = Some((now, ref_s));
                    return Ok(());
                }
                let ref_us = (ref_s - r0) as u64 * 1_000_000;
                // Compare only over >= 4 s: the reference has 1 s resolution.
                if ref_us >= 4_000_000 {
                    let counter_us = now - t0;
                    let slack = ref_us * tolerance_pct as u64 / 100 + 1_000_000;
                    if counter_us + slack < ref_us || counter_us > ref_us + slack {
                        log::error!(
                            "timer: counter says {counter_us} us, reference says {ref_us} us"
                        );
                        return Err("timer: counter and reference clock disagree");
                    }
                    self.base = Some((now, ref_s));
                }
            }
        }
        Ok(())
    }
}

/// Sends heartbeat `seq` if the canary has an address (with DHCP: a lease); false if it was
/// not sent, so the caller tries again instead of losing it.
fn heartbeat(seq: u32) -> bool {
    let Some(mut g) = NET.try_lock() else {
        return false;
    };
    let Some(net) = g.as_mut() else { return false };
    heartbeat_on(net, seq)
}

fn heartbeat_on(net: &mut crate::net::Net, seq: u32) -> bool {
    if !net.configured {
        return false; // smoltcp would drop it: no source address yet
    }
    let boot = crate::platform::BOOT.get();
    let hb = Repr::Heartbeat(HeartbeatRepr {
        boot_id: boot.map(|b| b.boot_id).unwrap_or_default(),
        seq,
        uptime_ms: crate::arch::now_us() / 1000,
        arch: capture::record::Arch::current(),
    });
    let mut buf = [0u8; 160];
    let key = crate::platform::config().key.as_ref();
    match capture::wire::emit(&hb, key, &mut buf) {
        Ok(n) if net.send_to_collector(&buf[..n]) => true,
        Ok(_) => {
            log::warn!("heartbeat {seq}: socket buffer full");
            false
        }
        Err(_) => false,
    }
}

/// Polls the network; returns a drill (nonce, delay in ms) if one was accepted. Drill
/// requests are answered with a challenge (keyed mode, `capture::drill`).
fn poll_net(drills: &mut DrillGuard<'_>) -> Option<(u64, u32)> {
    let mut g = NET.try_lock()?;
    let net = g.as_mut()?;
    net.poll();
    let mut buf = [0u8; 256];
    let mut drill = None;
    while let Some((from, d)) = net.recv_drill(&mut buf) {
        let verdict = drills.handle(d, crate::arch::now_us() / 1000);
        // A flood of bad frames must not become a flood of console lines.
        let n = drills.refused();
        let log_refusal = n <= 16 || n.is_power_of_two();
        match verdict {
            Verdict::Drill { nonce, delay_ms } => drill = Some((nonce, delay_ms)),
            Verdict::Challenge(c) => {
                let mut out = [0u8; 128];
                let key = crate::platform::config().key.as_ref();
                let sent = capture::wire::emit(&Repr::Challenge(c), key, &mut out)
                    .is_ok_and(|n| net.send_drill_reply(&out[..n], from));
                log::info!(
                    "drill request {:#x} from {from}: challenge {} {}",
                    c.nonce,
                    c.challenge.counter,
                    if sent {
                        "sent"
                    } else {
                        "not sent (buffer full)"
                    }
                );
            }
            _ if !log_refusal => {}
            Verdict::Refused(Refusal::Frame(e)) => {
                log::warn!("drill port: bad frame from {from}: {e} (refusal {n})")
            }
            Verdict::Refused(Refusal::Disabled) => log::warn!(
                "drill port: drill from {from} refused: drills are off (no key and not \
                 drill=insecure, or drill=off) (refusal {n})"
            ),
            Verdict::Refused(r) => {
                log::warn!("drill port: drill from {from} refused: {r:?} (refusal {n})")
            }
        }
    }
    // Acks for heartbeats are not expected; drop stray datagrams on the collector socket.
    let mut buf2 = [0u8; 64];
    while net.recv_collector(&mut buf2).is_some() {}
    drill
}

/// Why the network is not up yet, after `wait_network`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NetState {
    Up,
    NoAddress,
    Unreachable,
}

/// Waits (polling, bounded) until the canary has an address (the static one, or a DHCP
/// lease), then sends the boot heartbeat and waits until it has left (smoltcp holds it until
/// the next hop's link-layer address is known): "ready (network up)" means a crash record
/// would leave at once.
fn wait_network(limit_us: u64) -> NetState {
    let t0 = crate::arch::now_us();
    let mut sent = false;
    loop {
        {
            let Some(mut g) = NET.try_lock() else {
                return NetState::Unreachable;
            };
            let Some(net) = g.as_mut() else {
                return NetState::Unreachable;
            };
            net.poll();
            if !sent {
                sent = heartbeat_on(net, 0);
            }
            if sent && net.collector_queue_empty() {
                return NetState::Up;
            }
        }
        if crate::arch::now_us() - t0 > limit_us {
            return if sent {
                NetState::Unreachable
            } else {
                NetState::NoAddress
            };
        }
    }
}

pub fn run(cfg: &'static Config) -> ! {
    let has_net = NET.try_lock().is_some_and(|g| g.is_some());
    let state = if has_net {
        wait_network(3_000_000)
    } else {
        NetState::Unreachable
    };
    // The boot heartbeat (0) is owed until it has been handed to the network.
    let mut boot_hb_owed = has_net && state == NetState::NoAddress;
    crate::panic_path::warm_up();
    let t_ready = crate::arch::now_us();
    log::info!(
        "canary: ready (network {}), collector {}.{}.{}.{}:{}, drill port {}",
        match (has_net, state) {
            (false, _) => "absent",
            (true, NetState::Up) => "up",
            (true, NetState::NoAddress) => "not up yet: no address",
            (true, NetState::Unreachable) => "not up yet: collector not reachable",
        },
        cfg.collector.0[0],
        cfg.collector.0[1],
        cfg.collector.0[2],
        cfg.collector.0[3],
        cfg.collector.1,
        cfg.drill_port
    );
    let mut st: heapless::String<160> = heapless::String::new();
    crate::stack::report("ready", &mut st);
    crate::klog::raw(&st);
    let mut timer = TimerCheck { base: None };
    let mut next_check = t_ready;
    let mut next_hb = t_ready + cfg.heartbeat_ms * 1000;
    let mut hb_seq = 1u32;
    let panic_at = cfg.panic_after_ms.map(|ms| t_ready + ms * 1000);
    let fault_at = cfg.fault_after_ms.map(|ms| t_ready + ms * 1000);
    let overflow_at = cfg.stack_overflow_after_ms.map(|ms| t_ready + ms * 1000);
    let mut drill_at: Option<(u64, u64)> = None;
    let boot_id = crate::platform::BOOT
        .get()
        .map(|b| b.boot_id)
        .unwrap_or_default();
    let mut drills = DrillGuard::new(boot_id, cfg.key.as_ref(), cfg.drill);
    log::info!(
        "drills: {}",
        match (drills.enabled(), cfg.key.is_some()) {
            (false, _) => "off",
            (true, true) => "authenticated, challenge-response",
            (true, false) =>
                "UNAUTHENTICATED (drill=insecure): anyone on the network can crash this canary",
        }
    );
    // Halt between polls unless Hyper-V owns the interrupt controller (SynIC, stimers).
    let halts =
        cfg.idle_halt && HYPERV.try_lock().is_some_and(|g| g.is_none()) && crate::arch::idle_init();
    if !halts {
        log::info!("idle: spinning between polls");
    }
    loop {
        let now = crate::arch::now_us();
        if let Some((nonce, delay_ms)) = poll_net(&mut drills) {
            log::warn!("drill {nonce:#x} received: panicking in {delay_ms} ms");
            drill_at = Some((now + delay_ms as u64 * 1000, nonce));
        }
        if let Some((at, nonce)) = drill_at {
            if now >= at {
                KIND_HINT.store(HINT_DRILL, Ordering::SeqCst);
                panic!("drill {nonce:#x} from the collector: panic on purpose");
            }
        }
        if panic_at.is_some_and(|t| now >= t) {
            if cfg.panic_holding_locks {
                let _hv = HYPERV.try_lock();
                let _net = NET.try_lock();
                panic!(
                    "panic_after={}.{:03}s: panic on purpose, holding the Hyper-V and network locks",
                    cfg.panic_after_ms.unwrap_or(0) / 1000,
                    cfg.panic_after_ms.unwrap_or(0) % 1000
                );
            }
            panic!(
                "panic_after={}.{:03}s: panic on purpose",
                cfg.panic_after_ms.unwrap_or(0) / 1000,
                cfg.panic_after_ms.unwrap_or(0) % 1000
            );
        }
        if fault_at.is_some_and(|t| now >= t) {
            log::warn!("fault_after: reading unmapped address {:#x}", BAD_ADDRESS);
            // SAFETY: deliberately not safe: a read from an unmapped address to exercise the
            // fault path (fault_after= on the command line).
            let v = unsafe { core::ptr::read_volatile(BAD_ADDRESS as *const u64) };
            panic!("fault_after: the bad read returned {v:#x} instead of faulting");
        }
        if overflow_at.is_some_and(|t| now >= t) {
            log::warn!("stack_overflow_after: recursing without bound");
            let depth = recurse(core::hint::black_box(1));
            panic!("stack_overflow_after: the recursion returned ({depth})");
        }
        if now >= next_check {
            next_check = now + cfg.selfcheck_ms.max(10) * 1000;
            let r = timer
                .check(cfg.timer_tolerance_pct)
                .and_then(|_| crate::heap::self_check())
                .and_then(|_| match HYPERV.try_lock() {
                    Some(mut g) => g.as_mut().map_or(Ok(()), |h| h.self_check()),
                    None => Ok(()),
                });
            if let Err(what) = r {
                KIND_HINT.store(HINT_SELFCHECK, Ordering::SeqCst);
                panic!("self-check failed: {what}");
            }
        }
        if boot_hb_owed && heartbeat(0) {
            boot_hb_owed = false;
            log::info!("network: up (boot heartbeat sent)");
        }
        if cfg.heartbeat_ms > 0 && now >= next_hb {
            next_hb = now + cfg.heartbeat_ms * 1000;
            // A heartbeat that cannot be sent (no address yet) is skipped, not numbered.
            if heartbeat(hb_seq) {
                hb_seq = hb_seq.wrapping_add(1);
            }
        }
        // Sleep until the next thing to do, at most 1 ms (the NIC is polled, so that bounds
        // how late a drill or an ack is seen).
        let mut next = now + IDLE_MAX_US;
        for t in [
            Some(next_check),
            panic_at,
            fault_at,
            overflow_at,
            drill_at.map(|d| d.0),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(t);
        }
        if cfg.heartbeat_ms > 0 {
            next = next.min(next_hb);
        }
        crate::arch::idle(next.saturating_sub(crate::arch::now_us()));
    }
}

/// Recursion that only a stack overflow stops (each frame keeps 512 bytes live).
#[inline(never)]
fn recurse(n: u64) -> u64 {
    let frame = core::hint::black_box([n; 64]);
    if core::hint::black_box(n) == 0 {
        return frame[1];
    }
    recurse(n + 1).wrapping_add(frame[63])
}

/// The longest halt between two polls of the NIC.
const IDLE_MAX_US: u64 = 1000;

/// An address no boot path maps (above every identity map we or the firmware build).
pub const BAD_ADDRESS: usize = 0x7fff_ffff_f000;
