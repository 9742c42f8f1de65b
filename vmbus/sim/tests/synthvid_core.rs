//! synthvid over the VMBus core: the real `Connection` (offers, GPADL, OPENCHANNEL), the real
//! `Channel` rings and try-lock (through `device::CoreChannel`), VRAM in the
//! sim's guest memory at its GPA, and the synthvid host model reading the host end of the
//! rings (`CoreHost`). Both register ABIs, every host personality (OpenVMM's synthvid never
//! asks for DIRT and writes payload-only header sizes).

mod common;

use common::PERSONALITIES;
use vmbus::device::CoreChannel;
use vmbus::device::{DmaMemory, PhysRegion};
use vmbus::guid::SYNTHVID;
use vmbus::synthvid::console;
use vmbus::synthvid::wire;
use vmbus::synthvid::{FlushOutcome, Mode, Rect, Synthvid, VramSource};
use vmbus::{ConnectOptions, Connection, OpenOptions, PageAlloc, SynicMode};
use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Guest, Sim, SimArch, SimConfig};

#[test]
fn synthvid_runs_over_the_core_channel_on_both_arches_and_every_host() {
    for (arch, p) in [SimArch::X86_64, SimArch::Aarch64]
        .into_iter()
        .flat_map(|a| PERSONALITIES.map(|p| (a, p)))
    {
        let s = Sim::new(SimConfig::with_default_offers(arch, p));
        let g = Guest::boot(&s, SynicMode::Polling);
        let hv = g.hv(0);
        let mut conn =
            Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                .unwrap();
        conn.request_offers(hv, &g.clock).unwrap();
        let offer = *conn.find_offer(&SYNTHVID).expect("synthvid offered");
        let relid = offer.child_relid;
        let ch = conn
            .open_channel(hv, &g.clock, &s.mem, relid, &OpenOptions::default())
            .unwrap();

        // VRAM from the VMBus MMIO space the offer sizes (here: guest pages of the sim).
        let mode = Mode::new(640, 480);
        let pages = s.mem.alloc_pages(mode.bytes().div_ceil(4096)).unwrap();
        // SAFETY: pages just allocated from the sim's guest memory, used only through this
        // region for the rest of the test; `gpa()` is their guest physical address.
        let vram = unsafe { PhysRegion::new(pages.va(), pages.len(), pages.gpa()) };

        let mut dev = Synthvid::new(CoreChannel::new(&ch, hv));
        let hcfg = SynthvidHostConfig::for_personality(p);
        let asks_for_dirt = hcfg.dirt_needed == Some(true);
        let host = SynthvidHost::without_memory(hcfg);
        let end = CoreHost::new(&s, relid);
        let mut hdev = host.clone();
        let mut polls = 0;
        let v = dev
            .connect(
                VramSource::VmbusMmio {
                    gpa: vram.gpa(),
                    mmio_megabytes: offer.mmio_megabytes,
                },
                mode,
                &mut || {
                    end.pump(&mut hdev);
                    polls += 1;
                    polls > 1000
                },
            )
            .unwrap();
        assert_eq!(v, wire::VERSION_WIN10, "{arch:?} {p:?}");
        end.pump(&mut hdev);
        dev.poll().unwrap(); // the FEATURE_CHANGE (or OpenVMM's SITUATION_UPDATE_ACK)
        assert_eq!(dev.dirt_needed(), asks_for_dirt, "{p:?}");
        let st = host.state();
        assert_eq!(st.vram_gpa, Some(vram.gpa()));
        assert_eq!(st.situation.unwrap().width, 640);

        // Panic flush with the outbound lock free: one DIRT through the real ring, if the
        // host asked for DIRT; OpenVMM reads VRAM itself and never asks.
        console::draw_panic_screen(&vram, mode, "core channel panic").unwrap();
        let full = Rect {
            x1: 0,
            y1: 0,
            x2: 640,
            y2: 480,
        };
        if asks_for_dirt {
            assert_eq!(dev.panic_flush(), FlushOutcome::Sent);
            end.pump(&mut hdev);
            assert_eq!(host.state().dirt, vec![full]);
            // A send in progress on this CPU holds the lock: the flush skips, no waiting.
            {
                let _held = ch.try_lock_outbound().expect("lock free");
                assert_eq!(dev.panic_flush(), FlushOutcome::SkippedBusy);
            }
            end.pump(&mut hdev);
            assert_eq!(host.state().dirt.len(), 1, "nothing was written while busy");
        } else {
            assert_eq!(dev.panic_flush(), FlushOutcome::NotRequested, "{p:?}");
            end.pump(&mut hdev);
            assert!(host.state().dirt.is_empty());
        }

        // The host sees the panic screen in guest memory.
        let (w, h, rgb) = host
            .screen_rgb_with(&|gpa, buf| s.mem.read(gpa, buf))
            .unwrap();
        assert_eq!((w, h), (640, 480));
        assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background");
        let fg = rgb
            .chunks_exact(3)
            .filter(|p| p == &[0xff, 0xff, 0xff])
            .count();
        assert!(fg > 500, "text pixels: {fg}");
    }
}
