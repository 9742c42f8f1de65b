//! Stack painting: every stack the canary owns is filled with a pattern at boot, and the
//! high-water mark (the deepest word no longer holding the pattern) says how much of it was
//! ever used. Reported on the console at "ready" and at the end of the panic path, and in the
//! record (`CrashRecord::stacks`). The rule the tests hold every path to: at least half of
//! every stack stays free (issue 17: a 24.7 KiB frame in `build_nic` on a 64 KiB stack, and a
//! small addition overflowed it into the guard page).
//!
//! The pattern is read a word at a time from the bottom (stacks grow down), so the count is
//! the bytes between the lowest overwritten word and the top. A frame that skips words
//! (a large array never written) can hide usage below it: the mark is a lower bound.

/// The paint: unlikely as data, as an address (non-canonical on x86_64, above any arm64 VA
/// we map) and as code.
pub const PAINT: u64 = 0xC0DE_57AC_C0DE_57AC;

/// Bytes used of a painted stack of `len_words` words; `word(i)` reads word `i` from the
/// bottom (the lowest address).
pub fn high_water(len_words: usize, word: impl Fn(usize) -> u64) -> usize {
    let painted = (0..len_words).take_while(|&i| word(i) == PAINT).count();
    (len_words - painted) * 8
}

/// A stack the canary owns: `[lo, hi)`, 16-byte aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub name: &'static str,
    pub lo: usize,
    pub hi: usize,
}

impl Region {
    pub fn size(&self) -> usize {
        self.hi - self.lo
    }

    pub fn contains(&self, addr: usize) -> bool {
        (self.lo..self.hi).contains(&addr)
    }
}

/// The region of `regions` holding `sp`.
pub fn holding(regions: &[Region], sp: usize) -> Option<Region> {
    regions.iter().copied().find(|r| r.contains(sp))
}

/// Paints `[r.lo, below)` (`below` at most `r.hi`): the part of a stack not in use. For the
/// stack we run on, `below` is the stack pointer minus a margin.
///
/// # Safety
/// `[r.lo, below)` must be writable memory nothing else uses now.
#[cfg(kernel)]
pub unsafe fn paint(r: &Region, below: usize) {
    let end = below.min(r.hi) & !7;
    let mut a = (r.lo + 7) & !7;
    while a < end {
        // SAFETY: forwarded to the caller; `a` is aligned and below `end`.
        unsafe { core::ptr::write_volatile(a as *mut u64, PAINT) };
        a += 8;
    }
}

/// Bytes used of `r` since it was painted.
///
/// # Safety
/// `r` must be readable memory (a stack the canary owns).
#[cfg(kernel)]
pub unsafe fn used(r: &Region) -> usize {
    let lo = (r.lo + 7) & !7;
    high_water((r.hi - lo) / 8, |i| {
        // SAFETY: forwarded to the caller; `i` is below the region's word count.
        unsafe { core::ptr::read_volatile((lo + 8 * i) as *const u64) }
    })
}

/// Walks a frame-pointer chain inside one stack `[lo, hi)`: both ABIs keep `[fp] = caller's
/// fp`, `[fp + 8] = return address`. Nothing outside the stack is ever read (`read` is only
/// called for addresses in `[lo, hi - 8]`), so a smashed stack ends the walk instead of
/// faulting inside the panic path. Returns why it stopped.
pub fn walk(
    mut fp: usize,
    lo: usize,
    hi: usize,
    read: impl Fn(usize) -> usize,
    out: &mut heapless::Vec<u64, { capture::record::BACKTRACE_CAP }>,
) -> capture::record::BacktraceEnd {
    use capture::record::BacktraceEnd as End;
    loop {
        if fp == 0 {
            return End::Outermost;
        }
        if !fp.is_multiple_of(8) {
            return End::Misaligned;
        }
        if fp < lo || fp.checked_add(16).is_none_or(|e| e > hi) {
            return End::OutsideStack;
        }
        if out.is_full() {
            return End::Full;
        }
        let (next, ret) = (read(fp), read(fp + 8));
        if ret == 0 {
            return End::Outermost;
        }
        let _ = out.push(ret as u64);
        if next == 0 {
            return End::Outermost;
        }
        if next <= fp {
            return End::NotAscending;
        }
        fp = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture::record::BacktraceEnd as End;

    /// A fake stack at `base`: `frames` is a chain of (fp offset, return address).
    fn memory(base: usize, words: &[(usize, usize)]) -> impl Fn(usize) -> usize + '_ {
        move |a| {
            assert!(a >= base, "read below the stack: {a:#x}");
            words
                .iter()
                .find(|(off, _)| base + off == a)
                .map(|w| w.1)
                .unwrap_or(0)
        }
    }

    #[test]
    fn the_walk_follows_the_chain_and_stops_at_the_outermost_frame() {
        let base = 0x10_0000;
        // frame at +0x100 -> +0x200 -> +0x300 (next 0)
        let m = [
            (0x100, base + 0x200),
            (0x108, 0xaaa),
            (0x200, base + 0x300),
            (0x208, 0xbbb),
            (0x300, 0),
            (0x308, 0xccc),
        ];
        let mut out = heapless::Vec::new();
        let end = walk(
            base + 0x100,
            base,
            base + 0x1000,
            memory(base, &m),
            &mut out,
        );
        assert_eq!(end, End::Outermost);
        assert_eq!(out.as_slice(), &[0xaaa, 0xbbb, 0xccc]);
    }

    #[test]
    fn a_smashed_chain_never_reads_outside_the_stack() {
        let base = 0x10_0000;
        let hi = base + 0x1000;
        // The first frame points far away (a smashed saved fp): stop, do not read it.
        let m = [(0x100, 0xdead_0000), (0x108, 0xaaa)];
        let mut out = heapless::Vec::new();
        let read = |a: usize| {
            assert!((base..hi).contains(&a), "read outside the stack: {a:#x}");
            memory(base, &m)(a)
        };
        assert_eq!(
            walk(base + 0x100, base, hi, read, &mut out),
            End::OutsideStack
        );
        assert_eq!(out.as_slice(), &[0xaaa]);
        // A frame pointer on no stack at all is not read.
        let mut out = heapless::Vec::new();
        assert_eq!(walk(0x4000, base, hi, read, &mut out), End::OutsideStack);
        assert!(out.is_empty());
        // The last 8 bytes of the stack cannot hold a frame (fp + 16 > hi).
        assert_eq!(walk(hi - 8, base, hi, read, &mut out), End::OutsideStack);
    }

    #[test]
    fn loops_misalignment_and_a_full_list_end_the_walk() {
        let base = 0x10_0000;
        let hi = base + 0x1000;
        let looped = [(0x100, base + 0x100), (0x108, 0xaaa)];
        let mut out = heapless::Vec::new();
        assert_eq!(
            walk(base + 0x100, base, hi, memory(base, &looped), &mut out),
            End::NotAscending
        );
        let mut out = heapless::Vec::new();
        assert_eq!(
            walk(base + 0x101, base, hi, memory(base, &looped), &mut out),
            End::Misaligned
        );
        // A long ascending chain: stops at the record's cap.
        let chain: Vec<(usize, usize)> = (0..60)
            .flat_map(|i| {
                [
                    (0x10 * i, base + 0x10 * (i + 1)),
                    (0x10 * i + 8, 0x1000 + i),
                ]
            })
            .collect();
        let mut out = heapless::Vec::new();
        assert_eq!(
            walk(base, base, hi, memory(base, &chain), &mut out),
            End::Full
        );
        assert_eq!(out.len(), capture::record::BACKTRACE_CAP);
    }

    #[test]
    fn the_high_water_mark_is_the_lowest_overwritten_word() {
        let mut s = [PAINT; 64];
        let hw = |s: &[u64; 64]| high_water(s.len(), |i| s[i]);
        assert_eq!(hw(&s), 0);
        s[63] = 1; // the top word
        assert_eq!(hw(&s), 8);
        s[40] = 0; // a deeper frame
        assert_eq!(hw(&s), 24 * 8);
        s[0] = 7; // touched the bottom
        assert_eq!(hw(&s), 64 * 8);
    }

    #[test]
    fn regions_know_what_they_hold() {
        let r = [
            Region {
                name: "boot",
                lo: 0x1000,
                hi: 0x11000,
            },
            Region {
                name: "fault",
                lo: 0x20000,
                hi: 0x28000,
            },
        ];
        assert_eq!(holding(&r, 0x10ff8).map(|r| r.name), Some("boot"));
        assert_eq!(
            holding(&r, 0x11000).map(|r| r.name),
            None,
            "hi is exclusive"
        );
        assert_eq!(holding(&r, 0x20000).map(|r| r.name), Some("fault"));
        assert_eq!(r[0].size(), 0x10000);
    }
}

/// Paints every stack the canary owns (the one we run on below the stack pointer, with a
/// margin for this function's own frame). Called once, early in `kmain`.
#[cfg(kernel)]
pub fn paint_all() {
    let sp = crate::arch::stack_pointer();
    for r in crate::arch::stacks() {
        let below = if r.contains(sp) {
            sp.saturating_sub(512)
        } else {
            r.hi
        };
        // SAFETY: the region is a stack the canary owns; the part painted is not in use (the
        // one we run on only below our frame; the others are not entered yet).
        unsafe { paint(&r, below) };
    }
}

/// The high-water marks of every stack, for the record.
#[cfg(kernel)]
pub fn usage() -> heapless::Vec<capture::record::StackUse, { capture::record::STACKS_CAP }> {
    let mut v = heapless::Vec::new();
    for r in crate::arch::stacks() {
        // SAFETY: the region is a stack the canary owns (always mapped and readable).
        let used = unsafe { used(&r) };
        let _ = v.push(capture::record::StackUse {
            name: capture::record::truncate_to(r.name),
            size: r.size() as u32,
            used: used as u32,
        });
    }
    v
}

/// One console line: `stack: boot 12345/65536 B used (18%), fault 0/32768 B used (0%)`.
#[cfg(kernel)]
pub fn report<const N: usize>(when: &str, out: &mut heapless::String<N>) {
    use core::fmt::Write;
    let _ = write!(out, "stack ({when}):");
    for (i, u) in usage().iter().enumerate() {
        let _ = write!(
            out,
            "{} {} {}/{} B used ({}%)",
            if i > 0 { "," } else { "" },
            u.name,
            u.used,
            u.size,
            (u.used as u64 * 100) / (u.size as u64).max(1)
        );
    }
    let _ = out.push('\n');
}
