//! The panic path: a Rust panic or a CPU exception ends here, and `capture::panic::run` takes
//! it through the seven steps of the design (freeze → screen flush → VMBus unload → arch
//! cleanup → ship → crash registers → end). No heap and no blocking lock after freeze: the
//! record lives in a static, the NIC and its buffers were set up at boot and are polled.
use crate::panic_steps::{Deadlines, HvSide, Machine, PanicContext};
use crate::platform::{self, HYPERV, NET};
use capture::followup::{FollowupRepr, FollowupSender, FollowupState};
use capture::panic::{Entry, Outcome, PanicGuard, PanicSteps, Step};
use capture::record::{BacktraceEnd, CrashKind, CrashRecord, Location};
use capture::sender::{SendState, Sender, SenderConfig};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Registers for the record, in `capture::record::Registers` order.
#[derive(Default)]
pub struct RegSnapshot {
    pub gprs: heapless::Vec<u64, { capture::record::REGISTERS_CAP }>,
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
}

/// A CPU exception, as the arch trap handler saw it.
pub struct FaultInfo {
    pub name: &'static str,
    /// x86_64: vector | error code << 8; arm64: ESR_EL1.
    pub code: u64,
    /// x86_64: CR2 for a page fault, else RIP; arm64: FAR_EL1.
    pub addr: u64,
    pub regs: RegSnapshot,
}

/// Why the canary panics on purpose; read by the panic path to set `CrashKind`.
pub static KIND_HINT: AtomicU8 = AtomicU8::new(0);
pub const HINT_SELFCHECK: u8 = 2;
pub const HINT_DRILL: u8 = 3;

/// QEMU exit codes (x86_64 isa-debug-exit turns value v into status 2v+1; arm64 semihosting
/// exits with 2v+1 directly, so both arches give the same status). See `scripts/qemu-run`.
pub const EXIT_ACKED: u8 = 0x10; // status 33
pub const EXIT_NOT_ACKED: u8 = 0x11; // status 35
pub const EXIT_NESTED: u8 = 0x12; // status 37
/// A fault inside the nested entry: ended at once (status 39).
pub const EXIT_TERMINAL: u8 = 0x13;

static GUARD: PanicGuard = PanicGuard::new();
static CRASH_REGS_ENTERED: AtomicBool = AtomicBool::new(false);

struct Cell<T>(UnsafeCell<T>);
// SAFETY: the first-entry record is only touched by the first entry, the nested one only by
// nested entries (one CPU, interrupts off: entries never run concurrently).
// `T: Send`: sharing the cell hands `&mut T` to whichever entry runs, possibly on another CPU
// than the one that wrote it, which is a move of `T` across threads.
unsafe impl<T: Send> Sync for Cell<T> {}

static FIRST_REC: Cell<CrashRecord> = Cell(UnsafeCell::new(CrashRecord::empty()));
static NESTED_REC: Cell<CrashRecord> = Cell(UnsafeCell::new(CrashRecord::empty()));
/// The first entry's seal: the sealed record, its screen payload, the QR buffers
/// (`crate::seal`). Also the boot-time warm-up's scratch.
static SEAL: Cell<crate::seal::Seal> = Cell(UnsafeCell::new(crate::seal::Seal::new()));
static SHIP_OUTCOME: AtomicU8 = AtomicU8::new(0);

use crate::logring::Cut as Msg;

/// Walks the frame-pointer chain from `fp`, inside the stack that holds it
/// (`crate::stack::walk`): a frame pointer on no stack the canary owns is not read at all.
#[cfg_attr(all(target_arch = "x86_64", target_os = "uefi"), allow(dead_code))]
pub fn walk_frames(
    fp: usize,
    out: &mut heapless::Vec<u64, { capture::record::BACKTRACE_CAP }>,
) -> BacktraceEnd {
    let stacks = crate::arch::stacks();
    let Some(r) = crate::stack::holding(&stacks, fp) else {
        return BacktraceEnd::NoStack;
    };
    let read = |a: usize| {
        // SAFETY: `walk` reads only 8-aligned words inside `r`, a stack the canary owns:
        // always mapped and readable.
        unsafe { core::ptr::read_volatile(a as *const usize) }
    };
    crate::stack::walk(fp, r.lo, r.hi, read, out)
}

/// The backtrace from frame pointer `fp` (stack pointer `sp`, pc `pc`): the frame walk, except
/// on the x86_64 UEFI target, whose (Microsoft x64) frame pointers do not form that chain:
/// there the frames are unwound with the image's unwind data, and the stack is scanned for
/// return addresses if that finds no caller.
fn backtrace_from(
    fp: usize,
    sp: u64,
    pc: u64,
    out: &mut heapless::Vec<u64, { capture::record::BACKTRACE_CAP }>,
) -> BacktraceEnd {
    #[cfg(all(target_arch = "x86_64", target_os = "uefi"))]
    {
        use crate::arch::imp::uefi_stack;
        uefi_stack::unwind_backtrace(pc, sp, fp as u64, out).unwrap_or_else(|| {
            uefi_stack::scan_backtrace(sp, out);
            BacktraceEnd::Scanned
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "uefi")))]
    {
        let _ = (sp, pc);
        walk_frames(fp, out)
    }
}

/// The record of a first or nested entry (a terminal entry has none: it touches nothing).
fn take_record(entry: Entry) -> &'static mut CrashRecord {
    // SAFETY: see `Cell`: each record has one user, the panic guard decides which (it hands
    // out First and Nested once each).
    unsafe {
        match entry {
            Entry::First => &mut *FIRST_REC.0.get(),
            Entry::Nested | Entry::Terminal => &mut *NESTED_REC.0.get(),
        }
    }
}

/// A panic or fault inside the nested entry: no step runs and no shared state (records,
/// locks, log ring) is touched. One fixed line straight to the serial port, then the
/// configured action (reading the configuration, written once at boot, is safe).
fn terminal_end() -> ! {
    crate::arch::serial_write(b"\ncanary: fault inside the nested panic path: ending now\n");
    let cfg = platform::config();
    if cfg.qemu_exit {
        crate::arch::qemu_exit(EXIT_TERMINAL);
    }
    act(cfg.panic_action)
}

fn act(a: crate::config::PanicAction) -> ! {
    match a {
        crate::config::PanicAction::Halt => crate::arch::halt(),
        crate::config::PanicAction::Reset => crate::arch::reset(),
        crate::config::PanicAction::Poweroff => crate::arch::poweroff(),
    }
}

/// `fault_in=` (a test option): a read of an unmapped address inside `step` of `entry`.
fn maybe_fault(entry: Entry, step: Step) {
    use crate::config::FaultIn;
    let hit = match (platform::config().fault_in, entry) {
        (Some(FaultIn::Step(s)), Entry::First) => s == step,
        (Some(FaultIn::Nested), Entry::First) => step == Step::CrashRegisters,
        (Some(FaultIn::Nested), Entry::Nested) => step == Step::End,
        _ => false,
    };
    if hit {
        crate::klog::raw("panic: fault_in: reading an unmapped address inside this step\n");
        // SAFETY: deliberately not safe: a read from an unmapped address, to prove that a
        // fault inside the panic path ends (fault_in= on the command line, tests only).
        let v = unsafe { core::ptr::read_volatile(crate::canary::BAD_ADDRESS as *const u64) };
        crate::klog::raw(if v == 0 {
            "fault_in: read 0\n"
        } else {
            "fault_in: read\n"
        });
    }
}

fn common_fill(rec: &mut CrashRecord, entry: Entry) {
    rec.set_build_id(platform::BUILD_ID);
    if let Some(b) = platform::BOOT.get() {
        rec.boot_id = b.boot_id;
        rec.boot_mode = b.mode;
    }
    rec.seq = match entry {
        Entry::First => 1,
        Entry::Nested | Entry::Terminal => 2,
    };
    rec.arch = capture::record::Arch::current();
    rec.uptime_us = crate::arch::now_us();
    crate::image_id::fill(&mut rec.ext);
}

/// Entry for Rust panics.
pub fn on_panic(info: &core::panic::PanicInfo) -> ! {
    crate::arch::interrupts_off();
    let entry = GUARD.enter();
    if entry == Entry::Terminal {
        terminal_end();
    }
    let rec = take_record(entry);
    common_fill(rec, entry);
    rec.message.clear();
    let _ = write!(Msg(&mut rec.message), "{}", info.message());
    rec.location = info.location().map(|l| Location {
        file: capture::record::tail_of(l.file()),
        line: l.line(),
        column: l.column(),
    });
    rec.kind = match KIND_HINT.load(Ordering::Relaxed) {
        HINT_SELFCHECK => CrashKind::SelfCheck,
        HINT_DRILL => CrashKind::Drill,
        _ => CrashKind::Panic,
    };
    let mut regs = RegSnapshot::default();
    crate::arch::snapshot_registers(&mut regs);
    rec.backtrace.clear();
    rec.ext.backtrace_end = backtrace_from(
        crate::arch::frame_pointer(),
        regs.sp,
        regs.pc,
        &mut rec.backtrace,
    );
    fill_regs(rec, &regs);
    announce(entry, rec);
    go(entry, rec)
}

/// Entry for CPU exceptions (called by the arch trap handlers).
pub fn on_fault(f: FaultInfo) -> ! {
    crate::arch::interrupts_off();
    let entry = GUARD.enter();
    if entry == Entry::Terminal {
        terminal_end();
    }
    let rec = take_record(entry);
    common_fill(rec, entry);
    rec.message.clear();
    let _ = write!(
        Msg(&mut rec.message),
        "CPU exception: {} (code {:#x}) at pc {:#x}, address {:#x}",
        f.name,
        f.code,
        f.regs.pc,
        f.addr
    );
    rec.location = None;
    rec.kind = CrashKind::Fault {
        vector: f.code,
        addr: f.addr,
    };
    rec.backtrace.clear();
    let _ = rec.backtrace.push(f.regs.pc);
    rec.ext.backtrace_end =
        backtrace_from(f.regs.fp as usize, f.regs.sp, f.regs.pc, &mut rec.backtrace);
    fill_regs(rec, &f.regs);
    announce(entry, rec);
    go(entry, rec)
}

fn fill_regs(rec: &mut CrashRecord, r: &RegSnapshot) {
    rec.registers.gpr.clear();
    for &v in &r.gprs {
        let _ = rec.registers.gpr.push(v);
    }
    rec.registers.pc = r.pc;
    rec.registers.sp = r.sp;
    rec.registers.fp = r.fp;
    crate::image_id::fill_dump(&mut rec.ext, r.pc, r.sp);
}

static FIRST_LINE: Cell<heapless::String<512>> = Cell(UnsafeCell::new(heapless::String::new()));
static NESTED_LINE: Cell<heapless::String<512>> = Cell(UnsafeCell::new(heapless::String::new()));
/// Bit 0: the first entry's panic line is on the console; bit 1: the nested one's.
static ON_CONSOLE: AtomicU8 = AtomicU8::new(0);

fn line_slot(entry: Entry) -> (&'static Cell<heapless::String<512>>, u8) {
    match entry {
        Entry::First => (&FIRST_LINE, 1),
        Entry::Nested | Entry::Terminal => (&NESTED_LINE, 2),
    }
}

/// The panic line goes into the log ring at once (the record's log tail carries it); the
/// console gets it after the ship step (`flush_console`): a console line costs about a
/// millisecond under TCG, before the record ships.
fn announce(entry: Entry, rec: &CrashRecord) {
    let line = panic_line(entry, rec);
    crate::klog::ring_only(&line);
    let (slot, _) = line_slot(entry);
    // SAFETY: each slot is written once, by its own entry, before anything reads it.
    unsafe { *slot.0.get() = line };
}

/// Prints the panic lines not yet on the console (the first entry's, then a nested one's).
fn flush_console() {
    for entry in [Entry::First, Entry::Nested] {
        let (slot, bit) = line_slot(entry);
        // SAFETY: written by `announce` before this entry could get here; a slot whose
        // entry has not announced is empty.
        let line = unsafe { &*slot.0.get() };
        if !line.is_empty() && ON_CONSOLE.fetch_or(bit, Ordering::SeqCst) & bit == 0 {
            crate::arch::serial_write(line.as_bytes());
        }
    }
}

fn panic_line(entry: Entry, rec: &CrashRecord) -> heapless::String<512> {
    let mut line: heapless::String<512> = heapless::String::new();
    let _ = write!(
        Msg(&mut line),
        "\n*** canary {}: {}",
        if entry == Entry::First {
            "PANIC"
        } else {
            "NESTED PANIC"
        },
        rec.message
    );
    if let Some(l) = &rec.location {
        let _ = write!(Msg(&mut line), " at {}:{}:{}", l.file, l.line, l.column);
    }
    let _ = line.push('\n');
    // Into the log ring at once (the record's log tail carries it); the console gets it in
    // the end step: a console line costs about a millisecond under TCG, before the record
    // ships.
    line
}

/// Runs the panic path's record code once at boot (encode, chunk, CRC, ack parsing, log
/// tail) on a scratch record: under TCG the first run of any code pays for its translation,
/// which would otherwise land between the panic and the ack.
pub fn warm_up() {
    let mut rec = CrashRecord::empty();
    common_fill(&mut rec, Entry::First);
    let _ = write!(Msg(&mut rec.message), "warm-up {}", 1);
    let mut regs = RegSnapshot::default();
    crate::arch::snapshot_registers(&mut regs);
    fill_regs(&mut rec, &regs);
    let _ = backtrace_from(
        crate::arch::frame_pointer(),
        regs.sp,
        regs.pc,
        &mut rec.backtrace,
    );
    let _ = panic_line(Entry::First, &rec);
    crate::klog::tail_into(&mut rec.log_tail);
    // The orchestrator itself, with steps that do nothing.
    struct Idle;
    impl PanicSteps for Idle {
        fn now_us(&mut self) -> u64 {
            crate::arch::now_us()
        }
        fn freeze(&mut self, _: &mut CrashRecord) -> Outcome {
            Outcome::Done
        }
        fn flush_screen(&mut self, _: &mut CrashRecord) -> Outcome {
            Outcome::NotPresent
        }
        fn unload_vmbus(&mut self) -> Outcome {
            Outcome::NotPresent
        }
        fn arch_cleanup(&mut self) -> Outcome {
            Outcome::NotPresent
        }
        fn ship(&mut self, _: &CrashRecord) -> Outcome {
            Outcome::Pending
        }
        fn crash_registers(&mut self, _: &CrashRecord) -> Outcome {
            Outcome::NotPresent
        }
        fn end(&mut self, _: &CrashRecord) {}
    }
    capture::panic::run(&mut Idle, &mut rec, Entry::First);
    rec.steps.clear();
    // SAFETY: no panic is in progress (this runs at boot, before "ready"); the panic path
    // seals afresh before it uses the seal.
    let seal = unsafe { &mut *SEAL.0.get() };
    let key = platform::config().key.as_ref();
    // The seal's encode, compression and screen payload, as the panic path runs them.
    if seal.seal(&mut rec, key).is_err() {
        return;
    }
    let Some(bytes) = seal.record() else { return };
    let sc = SenderConfig {
        initial_rto_ms: 20,
        max_rto_ms: 400,
        deadline_ms: 1,
    };
    let Ok(mut sender) = Sender::new(sc, rec.boot_id, rec.seq, bytes, key, 0) else {
        return;
    };
    let mut sent = 0usize;
    let _ = sender.poll(0, &mut |d| sent += d.len());
    let id = sender.id();
    let ack = capture::wire::Repr::Ack(capture::wire::AckRepr {
        boot_id: id.boot_id,
        seq: id.seq,
        record_crc: id.record_crc,
        status: capture::wire::AckStatus::Stored,
        followup_reported: 0,
    });
    let mut frame = [0u8; 96];
    if let Ok(n) = capture::wire::emit(&ack, key, &mut frame) {
        let acked = sender.handle(&frame[..n]);
        log::debug!(
            "panic path warm-up: {} bytes out, ack understood: {acked}",
            sent
        );
    }
}

/// The kernel's side of the panic path's steps (`crate::panic_steps`): the statics, the
/// hardware, the console.
struct KernelMachine;

/// Locks the panic path took over from frozen holders (bits: `TAKEOVER_*`); into the record
/// (`CrashRecord::ext.takeovers`) and the console.
static TAKEN_OVER: AtomicU8 = AtomicU8::new(0);
use capture::record::{TAKEOVER_HYPERV, TAKEOVER_NET};

fn note_takeover(bit: u8, what: &str) {
    if TAKEN_OVER.fetch_or(bit, Ordering::SeqCst) & bit == 0 {
        let mut line: heapless::String<96> = heapless::String::new();
        let _ = writeln!(
            Msg(&mut line),
            "panic: {what} was locked at the panic; taken over"
        );
        crate::klog::raw(&line);
    }
}

impl Machine for KernelMachine {
    type Nic = &'static mut crate::hyperv::HvNic;

    fn now_us(&mut self) -> u64 {
        crate::arch::now_us()
    }

    /// Runs `f` on the Hyper-V state, whoever held its lock: the panic path owns the machine
    /// after freeze (one CPU, interrupts off, the holder never resumes), so a lock the frozen
    /// code held is taken over and that is recorded (`TAKEN_OVER`, the log and the record).
    /// What a half-finished update could leave is checked where it is read: ring indices and
    /// packet descriptors are validated on every access and a corrupt ring poisons its
    /// channel (`vmbus::channel`), every wait has a deadline. A nested entry takes the state
    /// over from the first entry the same way.
    fn with_hv<R>(&mut self, f: impl FnOnce(&mut dyn HvSide<Nic = Self::Nic>) -> R) -> Option<R> {
        let mut guard = HYPERV.try_lock();
        let hv = match guard.as_mut() {
            Some(g) => g.as_mut(),
            None => {
                note_takeover(TAKEOVER_HYPERV, "the Hyper-V state");
                // SAFETY: after freeze nothing else runs: one CPU, interrupts off, and the
                // holder (the code the panic interrupted, or the first entry for a nested
                // one) never resumes; this entry is its only user from here on.
                unsafe { HYPERV.force_get() }.as_mut()
            }
        };
        hv.map(|h| f(&mut h.panic_hv()))
    }

    fn freeze(&mut self, rec: &mut CrashRecord, described: bool) {
        crate::arch::interrupts_off();
        crate::heap::FROZEN.store(true, Ordering::SeqCst);
        // One CPU: nothing else to stop.
        if !described {
            rec.hypervisor = crate::arch::imp::hypervisor_info();
        }
        // The network's lock too, now, so the record says so (the ship step uses it).
        if NET.try_lock().is_none() {
            note_takeover(TAKEOVER_NET, "the network");
            // SAFETY: after freeze nothing else runs: the holder was interrupted by this
            // panic and never resumes. Released so the ship step's `try_lock` succeeds.
            unsafe { NET.force_unlock() };
        }
        crate::klog::tail_into(&mut rec.log_tail);
        rec.ext.stacks = crate::stack::usage();
        rec.ext.takeovers = TAKEN_OVER.load(Ordering::SeqCst);
        // Who crashed: cached at boot, copied (no heap, no lock).
        rec.ident = crate::identity::current();
    }

    fn ship(
        &mut self,
        rec: &CrashRecord,
        sealed: &[u8],
        nic: Option<Self::Nic>,
        deadline_ms: u64,
    ) -> Outcome {
        if let Some(nic) = nic {
            crate::net::panic_use_netvsc(nic);
        }
        let mut report: heapless::String<256> = heapless::String::new();
        let o = ship_record(rec, sealed, deadline_ms, &mut report);
        SHIP_OUTCOME.store(if o == Outcome::Done { 1 } else { 2 }, Ordering::Relaxed);
        flush_console();
        crate::klog::raw(&report);
        o
    }

    fn send_followup(&mut self, f: &FollowupRepr, deadline_ms: u64) -> Outcome {
        let mut report: heapless::String<160> = heapless::String::new();
        let o = ship_followup(f, deadline_ms, &mut report);
        crate::klog::raw(&report);
        o
    }

    fn key(&self) -> Option<&capture::Key> {
        platform::config().key.as_ref()
    }

    fn summary(&mut self, entry: Entry, rec: &CrashRecord) {
        flush_console();
        let mut line: heapless::String<512> = heapless::String::new();
        let _ = write!(
            Msg(&mut line),
            "canary: panic path {} steps:",
            if entry == Entry::First {
                "(first entry)"
            } else {
                "(nested entry)"
            }
        );
        for s in &rec.steps {
            if s.step == Step::End {
                continue;
            }
            let _ = write!(
                Msg(&mut line),
                " {}={} ({} us);",
                s.step.name(),
                s.outcome,
                s.elapsed_us
            );
        }
        let _ = line.push('\n');
        crate::klog::raw(&line);
        let mut st: heapless::String<160> = heapless::String::new();
        crate::stack::report("panic path", &mut st);
        crate::klog::raw(&st);
    }

    fn step_hook(&mut self, entry: Entry, step: Step) {
        // nested_panic=1: a panic inside the first entry's crash registers step, once.
        if step == Step::CrashRegisters
            && entry == Entry::First
            && platform::config().nested_panic
            && !CRASH_REGS_ENTERED.swap(true, Ordering::SeqCst)
        {
            panic!("nested_panic=1: panic inside the panic path (crash registers step)");
        }
        maybe_fault(entry, step);
    }
}

/// The network for the ship and follow-up: taken over if the frozen code held it.
fn panic_net() -> Option<crate::sync::Guard<'static, Option<crate::net::Net>>> {
    match NET.try_lock() {
        Some(g) => Some(g),
        None => {
            note_takeover(TAKEOVER_NET, "the network");
            // SAFETY: after freeze nothing else runs: the holder was interrupted by this panic
            // and never resumes. The force-release lets `try_lock` below succeed.
            unsafe { NET.force_unlock() };
            NET.try_lock()
        }
    }
}

/// Sends the follow-up frame until the collector acks it or `deadline_ms` (bounded, no
/// heap: `FollowupSender` holds the one frame).
fn ship_followup<const N: usize>(
    f: &FollowupRepr,
    deadline_ms: u64,
    report: &mut heapless::String<N>,
) -> Outcome {
    let cfg = platform::config();
    let Some(mut net) = panic_net() else {
        return Outcome::SkippedBusy;
    };
    let Some(net) = net.as_mut() else {
        return Outcome::NotPresent;
    };
    let sc = SenderConfig {
        initial_rto_ms: 20,
        max_rto_ms: 400,
        deadline_ms,
    };
    let now_ms = || crate::arch::now_us() / 1000;
    let mut sender = match FollowupSender::new(sc, f, cfg.key.as_ref(), now_ms()) {
        Ok(s) => s,
        Err(_) => return Outcome::Failed(2),
    };
    let mut rx = [0u8; 1500];
    let o = loop {
        let state = sender.poll(now_ms(), &mut |d| {
            let _ = net.send_to_collector(d);
        });
        net.poll();
        while let Some(d) = net.recv_collector(&mut rx) {
            sender.handle(d);
        }
        match state {
            FollowupState::Acked => break Outcome::Done,
            FollowupState::NoRecord => break Outcome::Failed(4),
            FollowupState::TimedOut => break Outcome::TimedOut,
            FollowupState::Waiting { .. } => {}
        }
    };
    let _ = writeln!(
        Msg(report),
        "panic: follow-up ({} steps after the seal): {o} ({} frames)",
        f.steps().len(),
        sender.sent()
    );
    o
}

fn ship_record<const N: usize>(
    rec: &CrashRecord,
    bytes: &[u8],
    deadline_ms: u64,
    report: &mut heapless::String<N>,
) -> Outcome {
    let cfg = platform::config();
    let net = match NET.try_lock() {
        Some(g) => g,
        None => {
            note_takeover(TAKEOVER_NET, "the network");
            // SAFETY: after freeze nothing else runs: the holder was interrupted by this panic
            // and never resumes. The force-release lets `try_lock` below succeed.
            unsafe { NET.force_unlock() };
            match NET.try_lock() {
                Some(g) => g,
                None => return Outcome::SkippedBusy,
            }
        }
    };
    let mut net = net;
    let Some(net) = net.as_mut() else {
        return Outcome::NotPresent;
    };
    let boot_id = rec.boot_id;
    let sc = SenderConfig {
        initial_rto_ms: 20,
        max_rto_ms: 400,
        deadline_ms,
    };
    let now_ms = || crate::arch::now_us() / 1000;
    let mut sender = match Sender::new(sc, boot_id, rec.seq, bytes, cfg.key.as_ref(), now_ms()) {
        Ok(s) => s,
        Err(_) => return Outcome::Failed(2),
    };
    let mut rx = [0u8; 1500];
    let mut first_sent_us = 0u64;
    loop {
        let state = sender.poll(now_ms(), &mut |d| {
            let _ = net.send_to_collector(d);
        });
        net.poll();
        if first_sent_us == 0 && sender.stats().datagrams_sent > 0 {
            first_sent_us = crate::arch::now_us();
        }
        while let Some(d) = net.recv_collector(&mut rx) {
            sender.handle(d);
        }
        match state {
            SendState::Acked => break,
            SendState::Rejected => {
                let _ = writeln!(Msg(report), "panic: the collector rejected the record");
                return Outcome::Failed(3);
            }
            SendState::TimedOut => {
                let _ = writeln!(
                    Msg(report),
                    "panic: no ack for the record within {} ms ({} datagrams sent)",
                    deadline_ms,
                    sender.stats().datagrams_sent
                );
                return Outcome::TimedOut;
            }
            _ => {}
        }
    }
    let st = sender.stats();
    let _ = writeln!(
        Msg(report),
        "panic: record {} bytes acked by the collector ({} datagrams, {} rounds); panic-to-ack {} us (first datagram out after {} us)",
        bytes.len(),
        st.datagrams_sent,
        st.retransmit_rounds,
        crate::arch::now_us().saturating_sub(rec.uptime_us),
        first_sent_us.saturating_sub(rec.uptime_us)
    );
    Outcome::Done
}

fn go(entry: Entry, rec: &mut CrashRecord) -> ! {
    let cfg = platform::config();
    // The context is built once from the statics; the deadlines are its parameters.
    let mut machine = KernelMachine;
    // SAFETY: the first entry seals and ships; a nested entry only reads the seal and marks
    // the follow-up sent, after the first entry stopped for good (one CPU, interrupts off:
    // entries never run concurrently and the first never resumes), as `Cell` says.
    let seal = Some(unsafe { &mut *SEAL.0.get() });
    let first: Option<&CrashRecord> = match entry {
        Entry::First | Entry::Terminal => None,
        // SAFETY: as above: the first entry's record is only read, after the first entry
        // stopped for good; the guard hands out `Nested` once.
        Entry::Nested => Some(unsafe { &*FIRST_REC.0.get() }),
    };
    let mut ctx = PanicContext {
        entry,
        m: &mut machine,
        deadlines: Deadlines {
            unload_us: cfg.unload_deadline_ms.saturating_mul(1000),
            ship_ms: cfg.deadline_ms,
        },
        seal,
        first,
    };
    capture::panic::run(&mut ctx, rec, entry);
    let code = match (entry, SHIP_OUTCOME.load(Ordering::Relaxed)) {
        (Entry::Nested | Entry::Terminal, _) => EXIT_NESTED,
        (_, 1) => EXIT_ACKED,
        _ => EXIT_NOT_ACKED,
    };
    crate::klog::raw(match cfg.panic_action {
        crate::config::PanicAction::Halt => "canary: end: halt\n",
        crate::config::PanicAction::Reset => "canary: end: reset\n",
        crate::config::PanicAction::Poweroff => "canary: end: power off\n",
    });
    if cfg.qemu_exit {
        crate::arch::qemu_exit(code);
    }
    act(cfg.panic_action)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    on_panic(info)
}
