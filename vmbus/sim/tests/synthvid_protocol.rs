//! synthvid guest driver against the synthvid host model over the ring-backed channel double.
//! The handshake, panic screen and resolution tests run against every host personality's
//! synthvid (`SynthvidHostConfig::for_personality`).

mod common;

use common::PERSONALITIES;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use vmbus::device::{DmaMemory, SpinBudget};
use vmbus::font;
use vmbus::synthvid::console::{self, CELL_H, CELL_W, PANIC_FG};
use vmbus::synthvid::wire::{self, Message};
use vmbus::synthvid::{DirtOutcome, FlushOutcome, Mode, Rect, Synthvid, SynthvidError, VramSource};
use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
use vmbus_sim::synthvid_link::{
    HostDevice, HostIo, HostPacket, Link, SimChannel, SimMemory, SimRegion,
};

const VRAM_GPA: u64 = 0x1_0000_0000;

struct Bed {
    link: Link,
    host: SynthvidHost,
    vram: SimRegion,
    dev: Synthvid<SimChannel>,
}

fn bed(cfg: SynthvidHostConfig, mode: Mode) -> Bed {
    let mem = SimMemory::new(VRAM_GPA, 8 << 20);
    let vram = mem.alloc(8 << 20);
    let host = SynthvidHost::new(cfg, mem.clone());
    let link = Link::new(mem, vmbus::synthvid::RING_SIZE, Box::new(host.clone()));
    let dev = Synthvid::new(link.guest());
    let _ = mode;
    Bed {
        link,
        host,
        vram,
        dev,
    }
}

fn connect(b: &mut Bed, mode: Mode) -> Result<u32, SynthvidError> {
    let src = VramSource::VmbusMmio {
        gpa: b.vram.gpa(),
        mmio_megabytes: 8,
    };
    b.dev.connect(src, mode, &mut SpinBudget(1000))
}

#[test]
fn handshake_negotiates_win10_when_the_host_accepts_it() {
    for p in PERSONALITIES {
        handshake_on(SynthvidHostConfig::for_personality(p));
    }
}

fn handshake_on(cfg: SynthvidHostConfig) {
    let mode = Mode::new(1152, 864);
    let mut b = bed(cfg, mode);
    assert_eq!(connect(&mut b, mode).unwrap(), wire::VERSION_WIN10);
    let st = b.host.state();
    assert_eq!(st.version_requests, vec![wire::VERSION_WIN10]);
    assert_eq!(st.version, Some(wire::VERSION_WIN10));
    assert_eq!(st.vram_gpa, Some(VRAM_GPA));
    let s = st.situation.unwrap();
    assert_eq!(
        (s.width, s.height, s.pitch, s.depth_bits),
        (1152, 864, 4608, 32)
    );
    // Order as hyperv_fb.c: version, VRAM, pointer position + shape, situation.
    let types: Vec<u32> = st.received.iter().map(|m| m.ty().0).collect();
    assert_eq!(types, vec![1, 3, 7, 8, 5]);
    assert_eq!(b.dev.version(), Some(wire::VERSION_WIN10));
}

#[test]
fn handshake_falls_back_to_win8_when_win10_is_refused() {
    let mode = Mode::new(1024, 768);
    let cfg = SynthvidHostConfig {
        accept_versions: vec![wire::VERSION_WIN8],
        dirt_needed: Some(true),
        ..Default::default()
    };
    let mut b = bed(cfg, mode);
    assert_eq!(connect(&mut b, mode).unwrap(), wire::VERSION_WIN8);
    let st = b.host.state();
    assert_eq!(
        st.version_requests,
        vec![wire::VERSION_WIN10, wire::VERSION_WIN8]
    );
    assert_eq!(st.situation.unwrap().width, 1024);
}

#[test]
fn handshake_fails_cleanly_when_no_version_is_accepted() {
    let mode = Mode::new(640, 480);
    let cfg = SynthvidHostConfig {
        accept_versions: vec![wire::VERSION_WIN7],
        dirt_needed: None,
        ..Default::default()
    };
    let mut b = bed(cfg, mode);
    assert_eq!(connect(&mut b, mode), Err(SynthvidError::NoVersion));
    // Nothing beyond the two version requests went out.
    assert_eq!(b.host.state().received.len(), 2);
}

#[test]
fn mode_larger_than_vram_is_refused_before_sending() {
    let mut b = bed(SynthvidHostConfig::default(), Mode::new(640, 480));
    let src = VramSource::VmbusMmio {
        gpa: VRAM_GPA,
        mmio_megabytes: 1,
    };
    let r = b
        .dev
        .connect(src, Mode::new(1920, 1080), &mut SpinBudget(10));
    assert!(matches!(r, Err(SynthvidError::VramTooSmall { .. })));
    assert_eq!(b.link.guest_sends(), 0);
}

/// A host that answers the version but echoes the wrong VRAM context.
struct BadAckHost;
impl HostDevice for BadAckHost {
    fn on_packet(&mut self, io: &mut HostIo<'_>, pkt: &HostPacket) {
        let mut out = [0u8; 64];
        let reply = match Message::parse(&pkt.payload) {
            Ok(Message::VersionRequest { version }) => Message::VersionResponse {
                version,
                accepted: true,
                max_video_outputs: 1,
            },
            Ok(Message::VramLocation { user_ctx, .. }) => Message::VramLocationAck {
                user_ctx: user_ctx ^ 1,
            },
            _ => return,
        };
        let n = reply.emit(&mut out).unwrap();
        io.send_inband(&out[..n]).unwrap();
    }
}

#[test]
fn vram_ack_with_wrong_context_is_an_error() {
    let mem = SimMemory::new(VRAM_GPA, 4 << 20);
    let link = Link::new(mem, 64 * 1024, Box::new(BadAckHost));
    let mut dev = Synthvid::new(link.guest());
    let r = dev.connect(
        VramSource::GopFramebuffer {
            gpa: VRAM_GPA,
            size: 4 << 20,
        },
        Mode::new(640, 480),
        &mut SpinBudget(100),
    );
    assert!(matches!(r, Err(SynthvidError::BadVramAck { .. })));
}

#[test]
fn a_silent_host_times_out() {
    struct Silent;
    impl HostDevice for Silent {
        fn on_packet(&mut self, _: &mut HostIo<'_>, _: &HostPacket) {}
    }
    let mem = SimMemory::new(VRAM_GPA, 4 << 20);
    let link = Link::new(mem, 64 * 1024, Box::new(Silent));
    let mut dev = Synthvid::new(link.guest());
    let r = dev.connect(
        VramSource::PciBar {
            gpa: VRAM_GPA,
            size: 4 << 20,
        },
        Mode::new(640, 480),
        &mut SpinBudget(100),
    );
    assert_eq!(r, Err(SynthvidError::Timeout("VERSION_RESPONSE")));
}

#[test]
fn dirt_is_sent_only_after_the_host_asks_for_it() {
    let mode = Mode::new(800, 600);
    let cfg = SynthvidHostConfig {
        dirt_needed: Some(false),
        ..Default::default()
    };
    let mut b = bed(cfg, mode);
    connect(&mut b, mode).unwrap();
    b.dev.poll().unwrap();
    let r = Rect {
        x1: 10,
        y1: 10,
        x2: 20,
        y2: 20,
    };
    assert_eq!(b.dev.update(r).unwrap(), DirtOutcome::NotRequested);
    assert_eq!(b.dev.panic_flush(), FlushOutcome::NotRequested);
    assert!(b.host.state().dirt.is_empty());

    // The host now asks for DIRT.
    b.link
        .inject(|io| SynthvidHost::send_feature_change(io, true, false));
    b.dev.poll().unwrap();
    assert_eq!(b.dev.update(r).unwrap(), DirtOutcome::Sent);
    assert_eq!(b.host.state().dirt, vec![r]);

    // And stops asking.
    b.link
        .inject(|io| SynthvidHost::send_feature_change(io, false, false));
    b.dev.poll().unwrap();
    assert_eq!(b.dev.update(r).unwrap(), DirtOutcome::NotRequested);
    assert_eq!(b.host.state().dirt.len(), 1);
}

#[test]
fn situation_is_resent_when_the_host_asks() {
    let mode = Mode::new(800, 600);
    let mut b = bed(SynthvidHostConfig::default(), mode);
    connect(&mut b, mode).unwrap();
    let before = b.host.state().received.len();
    b.link
        .inject(|io| SynthvidHost::send_feature_change(io, true, true));
    b.dev.poll().unwrap();
    let st = b.host.state();
    assert_eq!(st.received.len(), before + 1);
    assert_eq!(
        st.received.last().unwrap().ty(),
        wire::MsgType::SITUATION_UPDATE
    );
}

#[test]
fn dirt_rectangles_are_clipped_like_hyperv_fb() {
    let mode = Mode::new(800, 600);
    let mut b = bed(SynthvidHostConfig::default(), mode);
    connect(&mut b, mode).unwrap();
    b.dev.poll().unwrap();
    b.dev
        .update(Rect {
            x1: 5,
            y1: 6,
            x2: 100_000,
            y2: 100_000,
        })
        .unwrap();
    b.dev
        .update(Rect {
            x1: 50,
            y1: 60,
            x2: 10,
            y2: 10,
        })
        .unwrap();
    assert_eq!(
        b.host.state().dirt,
        vec![
            Rect {
                x1: 5,
                y1: 6,
                x2: 800,
                y2: 600
            },
            Rect {
                x1: 0,
                y1: 0,
                x2: 800,
                y2: 600
            }
        ]
    );
}

#[test]
fn panic_flush_sends_one_full_screen_dirt_when_the_lock_is_free() {
    let mode = Mode::new(1152, 864);
    let mut b = bed(SynthvidHostConfig::default(), mode);
    connect(&mut b, mode).unwrap();
    b.dev.poll().unwrap();
    console::draw_panic_screen(&b.vram, mode, "boom").unwrap();
    let sends = b.link.guest_sends();
    assert_eq!(b.dev.panic_flush(), FlushOutcome::Sent);
    assert_eq!(b.link.guest_sends(), sends + 1);
    assert_eq!(
        b.host.state().dirt,
        vec![Rect {
            x1: 0,
            y1: 0,
            x2: 1152,
            y2: 864
        }]
    );
}

#[test]
fn panic_flush_skips_without_waiting_when_another_thread_holds_the_lock() {
    let mode = Mode::new(640, 480);
    let mut b = bed(SynthvidHostConfig::default(), mode);
    connect(&mut b, mode).unwrap();
    b.dev.poll().unwrap();
    let sends = b.link.guest_sends();

    let link = b.link.clone();
    let held = Arc::new(Barrier::new(2));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let h = held.clone();
    let holder = std::thread::spawn(move || {
        let _g = link.lock_outbound();
        h.wait();
        release_rx.recv().unwrap();
    });
    held.wait();
    let t = Instant::now();
    let outcome = b.dev.panic_flush();
    let took = t.elapsed();
    eprintln!("panic_flush with the lock held elsewhere returned in {took:?}");
    assert_eq!(outcome, FlushOutcome::SkippedBusy);
    assert!(took < Duration::from_millis(50), "flush waited {took:?}");
    assert_eq!(b.link.guest_sends(), sends);
    assert!(b.host.state().dirt.is_empty());

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(b.dev.panic_flush(), FlushOutcome::Sent);
    assert_eq!(b.host.state().dirt.len(), 1);
}

#[test]
fn panic_flush_before_connect_reports_not_connected() {
    let b = bed(SynthvidHostConfig::default(), Mode::new(640, 480));
    assert_eq!(b.dev.panic_flush(), FlushOutcome::NotConnected);
    assert_eq!(b.link.guest_sends(), 0);
}

/// Reads text back from an RGB screen by matching each cell against the font.
fn read_text(w: u32, rgb: &[u8], row: usize, cols: usize) -> String {
    let fg = [
        (PANIC_FG >> 16) as u8,
        (PANIC_FG >> 8) as u8,
        PANIC_FG as u8,
    ];
    let mut s = String::new();
    for col in 0..cols {
        let mut rows = [0u8; font::GLYPH_H];
        for (gy, r) in rows.iter_mut().enumerate() {
            for gx in 0..font::GLYPH_W {
                let x = col * CELL_W + gx * console::SCALE;
                let y = row * CELL_H + gy * console::SCALE;
                let i = (y * w as usize + x) * 3;
                if rgb[i..i + 3] == fg {
                    *r |= 1 << (font::GLYPH_W - 1 - gx);
                }
            }
        }
        let c = font::GLYPHS
            .iter()
            .position(|g| *g == rows)
            .map(|i| (font::FIRST + i as u8) as char)
            .unwrap_or('\u{fffd}');
        s.push(c);
    }
    s
}

#[test]
fn panic_screen_png_shows_the_message() {
    for p in PERSONALITIES {
        panic_screen_on(SynthvidHostConfig::for_personality(p));
    }
}

fn panic_screen_on(cfg: SynthvidHostConfig) {
    let mode = Mode::new(1152, 864);
    // OpenVMM never asks for DIRT: it reads VRAM itself, so the screen shows without a flush.
    let flush = if cfg.dirt_needed == Some(true) {
        FlushOutcome::Sent
    } else {
        FlushOutcome::NotRequested
    };
    let mut b = bed(cfg, mode);
    connect(&mut b, mode).unwrap();
    b.dev.poll().unwrap();
    let msg =
        "panicked at src/main.rs:42:5: self-check failed (x=0x2a)\nbacktrace: 0xffff8000_0010_1234";
    console::draw_panic_screen(&b.vram, mode, msg).unwrap();
    assert_eq!(b.dev.panic_flush(), flush);

    let png_bytes = b.host.screen_png().unwrap();
    let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut r = dec.read_info().unwrap();
    let mut px = vec![0u8; r.output_buffer_size()];
    let info = r.next_frame(&mut px).unwrap();
    assert_eq!((info.width, info.height), (1152, 864));
    assert_eq!(info.color_type, png::ColorType::Rgb);

    let line = |row: usize, n: usize| read_text(info.width, &px, row, n);
    assert_eq!(line(1, 14), " canary: PANIC");
    let first = "panicked at src/main.rs:42:5: self-check failed (x=0x2a)";
    assert_eq!(line(3, first.len() + 1), format!(" {first}"));
    let second = "backtrace: 0xffff8000_0010_1234";
    assert_eq!(line(4, second.len() + 1), format!(" {second}"));
    // The background is the panic colour.
    assert_eq!(&px[..3], &[0x80, 0x00, 0x00]);
}

#[test]
fn panic_screen_matches_the_reference_image() {
    let mode = Mode::new(320, 96);
    let mut b = bed(SynthvidHostConfig::default(), mode);
    connect(&mut b, mode).unwrap();
    console::draw_panic_screen(&b.vram, mode, "kernel panic: test").unwrap();
    let png_bytes = b.host.screen_png().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/synthvid_panic_320x96.png");
    if std::env::var_os("CANARY_UPDATE_REFERENCE").is_some() {
        std::fs::write(&path, &png_bytes).unwrap();
    }
    let decode = |bytes: &[u8]| {
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()))
            .read_info()
            .unwrap();
        let mut px = vec![0u8; r.output_buffer_size()];
        let info = r.next_frame(&mut px).unwrap();
        (info.width, info.height, px)
    };
    let want = std::fs::read(&path).expect("reference image (CANARY_UPDATE_REFERENCE=1 makes it)");
    let (w, h, px) = decode(&png_bytes);
    assert_eq!((w, h), (320, 96));
    assert_eq!(
        decode(&want),
        (w, h, px.clone()),
        "screen differs from the reference"
    );
    assert_eq!(read_text(w, &px, 3, 19), " kernel panic: test");
}

#[test]
fn win10_host_reports_its_resolutions_and_the_guest_picks_the_preferred_one() {
    for p in PERSONALITIES {
        resolutions_on(SynthvidHostConfig::for_personality(p));
    }
}

fn resolutions_on(cfg: SynthvidHostConfig) {
    let list = cfg.resolutions.clone();
    let preferred = list[usize::from(cfg.default_resolution)];
    let mut b = bed(cfg, Mode::new(640, 480));
    assert_eq!(
        b.dev.negotiate(&mut SpinBudget(100)).unwrap(),
        wire::VERSION_WIN10
    );
    let r = b.dev.supported_resolutions(&mut SpinBudget(100)).unwrap();
    assert_eq!(r.as_slice(), &list[..]);
    assert_eq!(r.preferred(), Some(preferred));
    assert_eq!(r.max(), *list.iter().max().unwrap());
    let (w, h) = r.preferred().unwrap();
    let mode = Mode::new(w.into(), h.into());
    b.dev
        .configure(
            VramSource::GopFramebuffer {
                gpa: b.vram.gpa(),
                size: b.vram.len(),
            },
            mode,
            &mut SpinBudget(100),
        )
        .unwrap();
    assert_eq!(
        b.host.state().situation.unwrap().width,
        u32::from(preferred.0)
    );
    // RESOLUTION_REQUEST went out with maximum_resolution_count = 64.
    assert!(b
        .host
        .state()
        .received
        .contains(&Message::ResolutionRequest { max_count: 64 }));
}

#[test]
fn resolutions_need_win10_and_a_valid_default_index() {
    let cfg = SynthvidHostConfig {
        accept_versions: vec![wire::VERSION_WIN8],
        ..Default::default()
    };
    let mut b = bed(cfg, Mode::new(640, 480));
    b.dev.negotiate(&mut SpinBudget(100)).unwrap();
    assert!(matches!(
        b.dev.supported_resolutions(&mut SpinBudget(100)),
        Err(SynthvidError::VersionTooOld { .. })
    ));
    let cfg = SynthvidHostConfig {
        default_resolution: 9,
        ..Default::default()
    };
    let mut b = bed(cfg, Mode::new(640, 480));
    b.dev.negotiate(&mut SpinBudget(100)).unwrap();
    assert_eq!(
        b.dev.supported_resolutions(&mut SpinBudget(100)),
        Err(SynthvidError::BadResolutions {
            count: 4,
            default_index: 9
        })
    );
}
