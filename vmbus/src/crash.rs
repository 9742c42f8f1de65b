//! Crash registers: P0-P4 then CRASH_CTL, written once (ref §2.6, §3.7; Linux
//! `hyperv_report_panic`, `hv_kmsg_dump`).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::platform::{Hypervisor, PhysPages};
use crate::regs::{CrashCtl, SynReg};
use crate::status::HvError;

/// What to report.
#[derive(Clone, Copy, Debug)]
pub enum CrashReport<'a> {
    /// P0..P4 as given; CTL = NOTIFY.
    Registers([u64; 5]),
    /// P0..P2 as given, P3 = GPA of `page` holding `text`, P4 = its length; CTL = NOTIFY |
    /// NOTIFY_MSG when CRASH_CTL advertises NOTIFY_MSG, else the register form with P3/P4 as
    /// given in `fallback`.
    Message {
        p0_p2: [u64; 3],
        page: PhysPages,
        text: &'a [u8],
        fallback: [u64; 2],
    },
}

/// The outcome of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashOutcome {
    /// Written with this CRASH_CTL value.
    Reported {
        ctl: u64,
        message_len: usize,
    },
    /// A report was already made (the host accepts one notification per boot).
    AlreadyReported,
    Failed(HvError),
}

/// The run-once guard (Linux's static `panic_reported`). Keep one in a `static`.
pub struct CrashReporter {
    done: AtomicBool,
}

impl Default for CrashReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl CrashReporter {
    pub const fn new() -> Self {
        Self {
            done: AtomicBool::new(false),
        }
    }

    pub fn reported(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Write the P registers first and CTL last, once (ref §2.6).
    pub fn report(&self, hv: &dyn Hypervisor, report: CrashReport<'_>) -> CrashOutcome {
        if self.done.swap(true, Ordering::AcqRel) {
            return CrashOutcome::AlreadyReported;
        }
        match Self::write(hv, report) {
            Ok(o) => o,
            Err(e) => CrashOutcome::Failed(e),
        }
    }

    fn write(hv: &dyn Hypervisor, report: CrashReport<'_>) -> Result<CrashOutcome, HvError> {
        let (p, ctl, len) = match report {
            CrashReport::Registers(p) => (p, CrashCtl::new().with_notify(true), 0),
            CrashReport::Message {
                p0_p2,
                page,
                text,
                fallback,
            } => {
                let caps = CrashCtl::from_bits(hv.read_reg(SynReg::CrashCtl)?);
                if caps.notify_msg() && !page.is_empty() {
                    let len = text.len().min(page.len());
                    // SAFETY: `page` is an owned page of at least `len` bytes.
                    unsafe { crate::mem::write_bytes(page.va(), &text[..len]) };
                    (
                        [p0_p2[0], p0_p2[1], p0_p2[2], page.gpa(), len as u64],
                        CrashCtl::new().with_notify(true).with_notify_msg(true),
                        len,
                    )
                } else {
                    (
                        [p0_p2[0], p0_p2[1], p0_p2[2], fallback[0], fallback[1]],
                        CrashCtl::new().with_notify(true),
                        0,
                    )
                }
            }
        };
        for (i, v) in p.iter().enumerate() {
            hv.write_reg(SynReg::CrashP(i as u8), *v)?;
        }
        hv.write_reg(SynReg::CrashCtl, ctl.into_bits())?;
        Ok(CrashOutcome::Reported {
            ctl: ctl.into_bits(),
            message_len: len,
        })
    }
}
