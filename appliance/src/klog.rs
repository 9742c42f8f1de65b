//! The `log` backend: every line goes to the serial console and into a fixed-size ring whose
//! tail the crash record carries.
use crate::logring::LogRing;
use crate::sync::TryLock;
use core::fmt::Write;

pub const RING_SIZE: usize = 8192;
pub static RING: TryLock<LogRing<RING_SIZE>> = TryLock::new(LogRing::new());

struct Logger;
static LOGGER: Logger = Logger;

/// Writes raw text to the console and the ring (used by the panic path, which formats its
/// own lines). Never blocks: if the ring is held (a panic inside the logger), only the
/// console gets it.
pub fn raw(s: &str) {
    crate::arch::serial_write(s.as_bytes());
    if let Some(mut r) = RING.try_lock() {
        r.push(s.as_bytes());
    }
}

/// Writes raw text into the ring only (the console gets it later).
pub fn ring_only(s: &str) {
    match RING.try_lock() {
        Some(mut r) => r.push(s.as_bytes()),
        // SAFETY: only the panic path calls this; after freeze nothing else runs and the
        // interrupted holder never resumes.
        None => unsafe { RING.force_get() }.push(s.as_bytes()),
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // Library chatter (virtio-drivers, smoltcp) only at debug.
        let lib = !m.target().starts_with("appliance");
        m.level() <= log::max_level()
            && (!lib
                || m.level() <= log::Level::Warn
                || log::max_level() >= log::LevelFilter::Debug)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = crate::arch::now_us();
        // Longer lines are cut.
        let mut line: heapless::String<320> = heapless::String::new();
        let _ = writeln!(
            crate::logring::Cut(&mut line),
            "[{:>4}.{:06}] {:<5} {}",
            us / 1_000_000,
            us % 1_000_000,
            record.level(),
            record.args()
        );
        if !line.ends_with('\n') {
            line.pop();
            let _ = line.push('\n');
        }
        raw(&line);
    }

    fn flush(&self) {}
}

pub fn init(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// The newest log text for the crash record.
pub fn tail_into<const M: usize>(out: &mut heapless::String<M>) {
    match RING.try_lock() {
        Some(r) => r.tail_into(out),
        // SAFETY: after freeze nothing else runs; the holder (interrupted by this panic) never
        // resumes, and a torn line in the tail is acceptable.
        None => unsafe { RING.force_get() }.tail_into(out),
    }
}
