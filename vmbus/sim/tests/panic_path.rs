//! The design.md panic path end to end on the model, per arch: screen flush with try_lock,
//! UNLOAD once (with a second, nested caller), cleanup, reconnect in polling mode, unload
//! and clean up again, crash registers last (where the host has them), hypercalls off. Every
//! host personality: OpenVMM has no crash registers and answers with connection id 1, QEMU
//! stops at 4.0 and resets its bus on every INITIATE_CONTACT.

mod common;

use common::{FakeGic, ARCHES, PERSONALITIES};
use vmbus::cleanup::{cleanup_cpu, CleanupConfig};
use vmbus::crash::{CrashOutcome, CrashReport, CrashReporter};
use vmbus::{
    Clock, ConnectOptions, Connection, OpenOptions, OutgoingPacket, PageAlloc, SynicMode,
    UnloadOutcome, UnloadSkip,
};
use vmbus_sim::{Guest, Sim, SimArch, SimConfig};

#[test]
fn panic_path_runs_every_step_in_order_on_both_arches_and_every_host() {
    for (arch, p) in ARCHES
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let s = Sim::new(SimConfig::with_default_offers(arch, p));
        let g = Guest::boot(&s, SynicMode::Interrupt { vector: 0x30 });
        let hv = g.hv(1); // the panicking CPU is not the connect CPU
        let mut conn = Connection::connect(
            g.hv(0),
            &g.clock,
            &s.mem,
            &g.synic,
            &ConnectOptions::default(),
        )
        .unwrap();
        conn.request_offers(g.hv(0), &g.clock).unwrap();
        let relid = conn.find_offer(&vmbus::guid::SYNTHVID).unwrap().child_relid;
        let fb = conn
            .open_channel(g.hv(0), &g.clock, &s.mem, relid, &OpenOptions::default())
            .unwrap();

        // Step 2: the panic fired inside a send on the synthvid channel: try_lock fails,
        // the flush is skipped, nothing spins.
        let held = fb.try_lock_outbound().unwrap();
        assert!(fb.try_lock_outbound().is_none());
        drop(held);
        // Not held: one DIRT-sized packet goes out.
        let dirt = [0u8; 32];
        let mut guard = fb.try_lock_outbound().unwrap();
        guard
            .send(
                hv,
                &OutgoingPacket::InBand {
                    trans_id: 1,
                    completion_requested: false,
                    data: &dirt,
                },
            )
            .unwrap();
        drop(guard);

        // Step 3: UNLOAD once; a nested panic calling it again is skipped.
        let deadline = g.clock.now() + 100_000_000;
        assert!(matches!(
            conn.unload(hv, &g.clock, deadline),
            UnloadOutcome::Done {
                responder_vp: 0,
                ..
            }
        ));
        assert_eq!(
            conn.unload(hv, &g.clock, deadline),
            UnloadOutcome::Skipped(UnloadSkip::AlreadyUnloaded)
        );

        // Step 4: per-arch cleanup of the panicking CPU.
        let mut gic = FakeGic(Vec::new());
        let cfg = CleanupConfig {
            vmbus_ppi: Some(18),
            stimer_ppi: Some(31),
        };
        assert!(cleanup_cpu(hv, &g.synic, &mut gic, &cfg).ok());
        assert_eq!(gic.0.is_empty(), arch == SimArch::X86_64);

        // Step 5: reconnect from scratch in polling mode and unload that connection too.
        g.synic.enable_cpu(hv, &s.mem, SynicMode::Polling).unwrap();
        let opts = ConnectOptions {
            target_vp: Some(1),
            ..ConnectOptions::default()
        };
        let mut again = Connection::connect(hv, &g.clock, &s.mem, &g.synic, &opts).unwrap();
        assert_eq!(
            again.request_offers(hv, &g.clock).unwrap().len(),
            p.default_offers().len()
        );
        assert!(matches!(
            again.unload(hv, &g.clock, g.clock.now() + 100_000_000),
            UnloadOutcome::Done {
                responder_vp: 1,
                ..
            }
        ));
        assert!(cleanup_cpu(hv, &g.synic, &mut gic, &cfg).ok());

        // Step 6: crash registers, once, CTL last, only where the host advertises them (the
        // appliance's rule; OpenVMM has none, and touching them would fault).
        let id = vmbus::detect(hv).unwrap();
        if id.crash_msrs() {
            let page = s.mem.alloc_pages(1).unwrap();
            let crash = CrashReporter::new();
            let o = crash.report(
                hv,
                CrashReport::Message {
                    p0_p2: [0xDEAD, 0, 0],
                    page,
                    text: b"panicked",
                    fallback: [0, 0],
                },
            );
            assert!(matches!(o, CrashOutcome::Reported { .. }));
        }

        // Step 7: hypercalls off.
        hv.disable_hypercalls().unwrap();

        assert_eq!(
            s.guest_messages_of(16).len(),
            2,
            "{arch:?} {p:?}: one UNLOAD per connection"
        );
        if id.crash_msrs() {
            assert_eq!(s.crash_notices().len(), 1);
            assert_eq!(
                s.crash_notices()[0].message.as_deref(),
                Some(&b"panicked"[..])
            );
        } else {
            assert!(s.crash_notices().is_empty(), "{p:?}");
        }
    }
}
