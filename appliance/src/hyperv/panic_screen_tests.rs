//! The panic screen carries the sealed record: the whole panic path against `vmbus-sim` with
//! synthvid up on a 1024x768 GOP framebuffer, the screen read back from the synthvid host
//! model's VRAM as a PNG, its QR code decoded with `rqrr` (an independent decoder), and the
//! record inside compared byte for byte with what the ship step sent, after a trip through
//! the real chunk sender and reassembler.
//!
//! With `CANARY_UPDATE_REFERENCE=1` the test writes the screen to `docs/panic-screen-qr.png`
//! the shipped bytes to `docs/panic-screen-qr.record` and the follow-up frame the run sent
//! to `docs/panic-screen-qr.followup` (host-collector's `tests/screen.rs` reads them).
use super::devices::{start_fb, ChannelSlot, FbVram, GopFramebuffer, Vram};
use super::panic::tests::{boot, run, SimFb};
use super::panic_screen;
use capture::chunk::{Push, Reassembler, ReassemblerConfig};
use capture::panic::Step;
use capture::record::{CrashRecord, SCHEMA_MAJOR, SCHEMA_MINOR};
use capture::screen;
use capture::sender::{Sender, SenderConfig};
use capture::wire::{self, Repr};
use vmbus::device::DmaMemory;
use vmbus::synthvid::Mode;
use vmbus::PageAlloc;
use vmbus_sim::synthvid::{SynthvidHost, SynthvidHostConfig};
use vmbus_sim::synthvid_link::CoreHost;
use vmbus_sim::{Personality, Sim, SimArch, SimConfig};

/// The QR payload in a screenshot (RGB, 8 bits per channel), decoded with `rqrr`.
pub(crate) fn qr_payload_of(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        let p = &rgb[(y * w + x) * 3..][..3];
        // Luma (ITU-R BT.601): the red background is dark, the quiet zone white.
        ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2])) / 1000) as u8
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the panic screen");
    let mut out = Vec::new();
    grids[0].decode_to(&mut out).expect("the QR code decodes");
    out
}

fn png_rgb(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .unwrap();
    let mut px = vec![0u8; r.output_buffer_size()];
    let info = r.next_frame(&mut px).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    px.truncate(info.buffer_size());
    (info.width, info.height, px)
}

/// What the collector gets from the network: the sealed bytes through the real sender's
/// chunk frames and the reassembler.
fn over_the_network(rec: &CrashRecord, sealed: &[u8]) -> Vec<u8> {
    let mut s = Sender::new(
        SenderConfig::default(),
        rec.boot_id,
        rec.seq,
        sealed,
        None,
        0,
    )
    .unwrap();
    let mut frames = Vec::new();
    s.poll(0, &mut |d| frames.push(d.to_vec()));
    let mut reasm: Reassembler<u8> = Reassembler::new(ReassemblerConfig::default());
    for f in &frames {
        let Ok(Repr::Chunk(c)) = wire::parse(f, None) else {
            panic!("not a chunk")
        };
        if let Push::Complete(done) = reasm.push(0, &c, 0) {
            assert_eq!(done.schema, (SCHEMA_MAJOR, SCHEMA_MINOR));
            assert_eq!(done.id, s.id());
            return done.record;
        }
    }
    panic!("the record did not reassemble")
}

#[test]
fn the_panic_screen_shows_the_shipped_record_as_a_qr_code_byte_for_byte() {
    for p in [
        Personality::HyperV {
            max_version: vmbus::Version::WIN10_V5_3,
        },
        Personality::OpenVmm,
    ] {
        screen_carries_the_record_on(p);
    }
}

fn screen_carries_the_record_on(p: Personality) {
    let mut cfg = SimConfig::with_default_offers(SimArch::X86_64, p);
    // 3 MiB of VRAM besides the rings.
    cfg.memory_pages = 4096;
    let fb_relid = cfg
        .offers
        .iter()
        .find(|o| o.if_type == vmbus::guid::SYNTHVID)
        .expect("synthvid offered")
        .relid;
    let sim = Sim::new(cfg);
    let mut ses = boot(&sim);
    let mode = Mode::new(1024, 768);
    let pages = sim.mem.alloc_pages(mode.bytes().div_ceil(4096)).unwrap();
    // SAFETY: freshly allocated sim guest pages, used only through this region.
    let vram = unsafe { Vram::new(pages.va(), pages.len(), pages.gpa()) };
    let gop = GopFramebuffer {
        base: vram.gpa(),
        size: vram.len(),
        width: 1024,
        height: 768,
    };
    let slot: &ChannelSlot = Box::leak(Box::new(ChannelSlot::new()));
    let host = SynthvidHost::without_memory(SynthvidHostConfig::for_personality(p));
    let mut hdev = host.clone();
    let end = CoreHost::new(&sim, fb_relid);
    let mut n = 0;
    let hv = ses.hv;
    let fb = start_fb(
        ses.conn.as_mut().expect("connected"),
        hv,
        &ses.clock,
        &sim.mem,
        slot,
        &FbVram::Gop(gop),
        &mut || {
            end.pump(&mut hdev);
            n += 1;
            n > 1000
        },
    )
    .expect("synthvid up");
    end.pump(&mut hdev);
    fb.poll().unwrap();
    assert_eq!(fb.mode(), mode);
    let fbv: &SimFb = Box::leak(Box::new((fb, vram)));

    let r = run(&sim, ses, Some(fbv), None);
    end.pump(&mut hdev);
    let ctx = format!("{p:?}: {:?}", r.rec.steps);
    let screen_step = r
        .rec
        .steps
        .iter()
        .find(|s| s.step == Step::ScreenFlush)
        .unwrap();
    assert_eq!(screen_step.outcome, capture::panic::Outcome::Done, "{ctx}");
    // One follow-up at the ship step's end, the more complete one from the end step.
    assert_eq!(r.followups.len(), 2, "{ctx}");
    assert_eq!(r.followups[0].steps()[0], *screen_step, "{ctx}");
    assert_eq!(r.followups[1].steps()[0], *screen_step, "{ctx}");

    // The screen as the host model holds it, through a PNG.
    let (w, h, rgb) = host
        .screen_rgb_with(&|gpa, buf| sim.mem.read(gpa, buf))
        .expect("the host knows the screen");
    assert_eq!((w, h), (1024, 768));
    let png_bytes = SynthvidHost::encode_png(w, h, &rgb).unwrap();
    let (w, h, rgb) = png_rgb(&png_bytes);
    let payload = qr_payload_of(w, h, &rgb);
    let mut record = vec![0u8; capture::record::MAX_ENCODED_LEN];
    let (hdr, len) = screen::decode(&payload, None, &mut record).expect("a canary payload");
    record.truncate(len);

    // Byte-identical to what the ship step sent, and to what the network delivers.
    assert_eq!(record, r.sealed, "{ctx}");
    assert_eq!(record, over_the_network(&r.rec, &r.sealed), "{ctx}");
    assert_eq!(hdr.schema, (SCHEMA_MAJOR, SCHEMA_MINOR));
    let back = CrashRecord::decode(hdr.schema.0, hdr.schema.1, &record).unwrap();
    assert_eq!(back.message, r.rec.message);
    assert_eq!(
        screen::record_id(back.boot_id, back.seq, &hdr),
        capture::RecordId::of(r.rec.boot_id, r.rec.seq, &r.sealed)
    );
    // The code sits bottom-right at 4 px per module inside the 1024x768 screen.
    assert_eq!(
        &rgb[(767 * 1024 + 1023) * 3..][..3],
        &[0xff, 0xff, 0xff],
        "quiet zone"
    );
    assert_eq!(&rgb[..3], &[0x80, 0, 0], "panic background top-left");

    if std::env::var_os("CANARY_UPDATE_REFERENCE").is_some()
        && matches!(p, Personality::HyperV { .. })
    {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::write(docs.join("panic-screen-qr.png"), &png_bytes).unwrap();
        std::fs::write(docs.join("panic-screen-qr.record"), &r.sealed).unwrap();
        // The end step's follow-up this run sent (the more complete of the two;
        // unauthenticated), for the collector's test of `show`'s seven steps.
        let mut frame = [0u8; capture::wire::MAX_DATAGRAM];
        let n = Repr::Followup(r.followups[1])
            .emit(None, &mut frame)
            .unwrap();
        std::fs::write(docs.join("panic-screen-qr.followup"), &frame[..n]).unwrap();
    }
}

#[test]
fn a_maximal_payload_fits_1024x768_at_4_px_per_module() {
    let payload = vec![0xa5u8; screen::QR_MAX_BYTES];
    let mut bufs = Box::new(panic_screen::QrBuffers::new());
    let qr = panic_screen::encode(&payload, &mut bufs).unwrap();
    assert_eq!(qr.size(), 177);
    let p = panic_screen::place(Mode::new(1024, 768), 177, 40).unwrap();
    assert_eq!(p.module_px, 4);
    assert_eq!(p.side, 740);
    assert_eq!((p.x, p.y), (1024 - 740, 768 - 740));
    assert!(panic_screen::encode(&vec![0u8; screen::QR_MAX_BYTES + 1], &mut bufs).is_err());
    // 640x480 is too small for 4 px: 2 px still fit.
    assert_eq!(
        panic_screen::place(Mode::new(640, 480), 177, 40).map(|p| p.module_px),
        Some(2)
    );
}

#[test]
fn a_drawn_version_40_code_reads_back_with_an_independent_decoder() {
    // A worst-case (incompressible, maximal) payload drawn into a memory framebuffer.
    let mut x = 0x9e37_79b9u32;
    let payload: Vec<u8> = (0..screen::QR_MAX_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mode = Mode::new(1024, 768);
    let mem = MemFb(std::cell::RefCell::new(vec![0u8; mode.bytes()]));
    let mut bufs = Box::new(panic_screen::QrBuffers::new());
    let qr = panic_screen::encode(&payload, &mut bufs).unwrap();
    let p = panic_screen::place(mode, qr.size() as usize, qr.version().value()).unwrap();
    panic_screen::draw(&mem, mode, &qr, &p).unwrap();
    let fb = mem.0.borrow();
    let rgb: Vec<u8> = fb
        .chunks_exact(4)
        .flat_map(|px| [px[2], px[1], px[0]])
        .collect();
    assert_eq!(qr_payload_of(1024, 768, &rgb), payload);
}

struct MemFb(std::cell::RefCell<Vec<u8>>);

impl DmaMemory for MemFb {
    fn gpa(&self) -> u64 {
        0
    }
    fn len(&self) -> usize {
        self.0.borrow().len()
    }
    fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), vmbus::device::ChannelError> {
        out.copy_from_slice(&self.0.borrow()[offset..offset + out.len()]);
        Ok(())
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), vmbus::device::ChannelError> {
        self.0.borrow_mut()[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn screen_text_wraps_at_spaces_and_never_past_its_columns() {
    let mut out: heapless::String<200> = heapless::String::new();
    panic_screen::wrap(
        "shipping the crash record, then reporting to the hypervisor\nabcdefghijklmnopqrstuvwxyz",
        20,
        &mut out,
    );
    assert_eq!(
        out.as_str(),
        "shipping the crash\nrecord, then\nreporting to the\nhypervisor\nabcdefghijklmnopqrst\nuvwxyz"
    );
    assert!(out.lines().all(|l| l.chars().count() <= 20));
    // Cut, not overflowed, when the output is full.
    let mut small: heapless::String<10> = heapless::String::new();
    panic_screen::wrap("one two three four", 8, &mut small);
    assert!(small.len() <= 10);
}
