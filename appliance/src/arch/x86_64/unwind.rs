//! Microsoft x64 unwinding for the UEFI image's backtrace: its frame pointer does not point at
//! a [saved rbp, return address] pair (the x64 ABI places it anywhere in the frame), so frames
//! are undone with the image's own unwind data (`.pdata` RUNTIME_FUNCTION entries and their
//! UNWIND_INFO; the build asks for them with `-C force-unwind-tables=yes`).
//!
//! Layouts (Microsoft, "x64 exception handling"): RUNTIME_FUNCTION = BeginAddress,
//! EndAddress, UnwindInfoAddress (RVAs, u32 each), sorted by BeginAddress; UNWIND_INFO =
//! Version:3 | Flags:5, SizeOfProlog, CountOfCodes, FrameRegister:4 | FrameOffset:4, then
//! CountOfCodes u16 slots (CodeOffset u8, UnwindOp:4 | OpInfo:4, with extra slots for some
//! ops), padded to an even count, then (UNW_FLAG_CHAININFO) the chained RUNTIME_FUNCTION.
//!
//! Portable: memory is read through closures that refuse what is outside the image or the
//! stack, so a corrupt stack or table ends the walk instead of faulting (host-tested).

use capture::record::BacktraceEnd;

/// UNW_FLAG_CHAININFO.
const CHAININFO: u8 = 4;
/// Register number of rbp and rsp in unwind codes.
const RBP: usize = 5;
const RSP: usize = 4;

/// What the walk reads.
pub struct Reader<'a> {
    /// `len` bytes of the image at an RVA, or `false` outside it.
    pub image: &'a mut dyn FnMut(u32, &mut [u8]) -> bool,
    /// The 8-byte word at a stack address, or `None` outside the stack.
    pub stack: &'a dyn Fn(u64) -> Option<u64>,
    /// The image's run-time base.
    pub base: u64,
    /// `.pdata`: RVA and size (the exception directory).
    pub pdata: (u32, u32),
    /// Whether a word is a return address into the image (follows a call instruction): for
    /// code without unwind data (the precompiled `core` has none), the first such word from
    /// rsp up (at most [`SCAN_WORDS`]) is taken as the return address.
    pub is_return: &'a dyn Fn(u64) -> bool,
}

/// How far up the stack a frame without unwind data is searched for its return address.
pub const SCAN_WORDS: u64 = 64;

impl Reader<'_> {
    fn u32_at(&mut self, rva: u32) -> Option<u32> {
        let mut b = [0u8; 4];
        (self.image)(rva, &mut b).then_some(u32::from_le_bytes(b))
    }

    /// The RUNTIME_FUNCTION holding `rva`: (begin, unwind info RVA).
    fn function(&mut self, rva: u32) -> Option<(u32, u32)> {
        let n = self.pdata.1 / 12;
        let (mut lo, mut hi) = (0u32, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.pdata.0.checked_add(mid * 12)?;
            let begin = self.u32_at(e)?;
            let end = self.u32_at(e + 4)?;
            if rva < begin {
                hi = mid;
            } else if rva >= end {
                lo = mid + 1;
            } else {
                return Some((begin, self.u32_at(e + 8)?));
            }
        }
        None
    }
}

/// Undoes one frame: `regs` (rsp, rbp, ...) at `rip` become the caller's; returns the
/// caller's rip, or `None` when the unwind data or the stack cannot be read.
fn unwind_frame(r: &mut Reader<'_>, rip: u64, regs: &mut [u64; 16]) -> Option<u64> {
    let rva = u32::try_from(rip.checked_sub(r.base)?).ok()?;
    let Some((begin, mut info)) = r.function(rva) else {
        // No unwind data: a leaf (the return address at rsp) or code built without unwind
        // tables: the first return address from rsp up.
        for k in 0..SCAN_WORDS {
            let a = regs[RSP] + 8 * k;
            let v = (r.stack)(a)?;
            if (r.is_return)(v) {
                regs[RSP] = a + 8;
                return Some(v);
            }
        }
        return None;
    };
    let in_prolog = rva - begin;
    let mut first = true;
    for _ in 0..8 {
        let mut h = [0u8; 4];
        if !(r.image)(info, &mut h) {
            return None;
        }
        let (version, flags) = (h[0] & 7, h[0] >> 3);
        if version != 1 && version != 2 {
            return None;
        }
        let count = h[2] as usize;
        let (freg, foff) = (h[3] & 15, h[3] >> 4);
        let mut codes = [0u8; 2 * 256];
        let codes = &mut codes[..2 * count];
        if !(r.image)(info + 4, codes) {
            return None;
        }
        let slot = |i: usize| u16::from_le_bytes([codes[2 * i], codes[2 * i + 1]]);
        // rsp in a function's body is fixed after its prolog (the x64 ABI passes arguments in
        // pre-allocated space, and the canary allocates nothing dynamically), and a return
        // address found on the stack gives the caller's rsp at its call: so rsp, not the frame
        // pointer, is the frame base. The frame pointer may not be trusted anyway: a function
        // without unwind data (core's) may have changed rbp, and its save slot is unknown.
        let _ = (freg, foff);
        let frame_base = regs[RSP];
        let mut i = 0;
        while i < count {
            let (off, op, opinfo) = (
                codes[2 * i],
                codes[2 * i + 1] & 15,
                (codes[2 * i + 1] >> 4) as usize,
            );
            // In the first (innermost) frame, prolog instructions not yet run are skipped.
            let done = !first || u32::from(off) <= in_prolog;
            let slots = match op {
                0 => {
                    // UWOP_PUSH_NONVOL
                    if done {
                        regs[opinfo] = (r.stack)(regs[RSP])?;
                        regs[RSP] += 8;
                    }
                    1
                }
                1 => {
                    // UWOP_ALLOC_LARGE
                    let (n, size) = if opinfo == 0 {
                        (2, u64::from(slot(i + 1)) * 8)
                    } else {
                        (3, u64::from(slot(i + 1)) | u64::from(slot(i + 2)) << 16)
                    };
                    if i + n > count {
                        return None;
                    }
                    if done {
                        regs[RSP] += size;
                    }
                    n
                }
                2 => {
                    // UWOP_ALLOC_SMALL
                    if done {
                        regs[RSP] += opinfo as u64 * 8 + 8;
                    }
                    1
                }
                // UWOP_SET_FPREG: nothing to undo, rsp is the frame base (above).
                3 => 1,
                4 | 5 => {
                    // UWOP_SAVE_NONVOL(_FAR)
                    let (n, at) = if op == 4 {
                        (2, u64::from(slot(i + 1)) * 8)
                    } else {
                        (3, u64::from(slot(i + 1)) | u64::from(slot(i + 2)) << 16)
                    };
                    if i + n > count {
                        return None;
                    }
                    if done {
                        regs[opinfo] = (r.stack)(frame_base.wrapping_add(at))?;
                    }
                    n
                }
                6 => 2,           // UWOP_EPILOG (version 2): describes epilogs only
                8 => 2,           // UWOP_SAVE_XMM128
                9 => 3,           // UWOP_SAVE_XMM128_FAR
                _ => return None, // UWOP_PUSH_MACHFRAME and unknown: not walked through
            };
            i += slots;
        }
        if flags & CHAININFO == 0 {
            break;
        }
        // The chained RUNTIME_FUNCTION follows the (even) code array; its codes belong to
        // the parent function's prolog, always run.
        let chained = info + 4 + 2 * ((count as u32 + 1) & !1);
        info = r.u32_at(chained + 8)?;
        first = false;
    }
    let ret = (r.stack)(regs[RSP])?;
    regs[RSP] += 8;
    Some(ret)
}

/// Return addresses from `rip` (with `rsp`, `rbp` at it) outwards into `out`, stopping at a
/// return address outside the image (the firmware that called us) or a null one. Only stack
/// words `stack` accepts are read; rsp must rise with every frame.
pub fn walk(
    r: &mut Reader<'_>,
    image_size: u64,
    rip: u64,
    rsp: u64,
    rbp: u64,
    out: &mut heapless::Vec<u64, { capture::record::BACKTRACE_CAP }>,
) -> BacktraceEnd {
    let mut regs = [0u64; 16];
    regs[RSP] = rsp;
    regs[RBP] = rbp;
    let mut rip = rip;
    loop {
        if out.is_full() {
            return BacktraceEnd::Full;
        }
        let before = regs[RSP];
        let Some(ret) = unwind_frame(r, rip, &mut regs) else {
            return BacktraceEnd::OutsideStack;
        };
        if ret == 0 {
            return BacktraceEnd::Outermost;
        }
        if regs[RSP] <= before {
            return BacktraceEnd::NotAscending;
        }
        let _ = out.push(ret);
        if !(r.base..r.base + image_size).contains(&ret) {
            // The firmware's code called our entry point: the outermost frame of ours.
            return BacktraceEnd::Outermost;
        }
        // The caller's unwind data is looked up at its call instruction: a return address
        // may be the first byte of the next function (a call to a function that never returns).
        rip = ret - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image with .pdata at 0x100 and unwind info at 0x200.., and a stack at 0x8000.
    struct Fake {
        img: Vec<u8>,
        stack: std::collections::BTreeMap<u64, u64>,
    }

    impl Fake {
        fn new(funcs: &[(u32, u32, Vec<u8>)]) -> (Fake, (u32, u32)) {
            let mut img = vec![0u8; 0x1000];
            let mut info_at = 0x200usize;
            for (k, (b, e, info)) in funcs.iter().enumerate() {
                let p = 0x100 + k * 12;
                img[p..p + 4].copy_from_slice(&b.to_le_bytes());
                img[p + 4..p + 8].copy_from_slice(&e.to_le_bytes());
                img[p + 8..p + 12].copy_from_slice(&(info_at as u32).to_le_bytes());
                img[info_at..info_at + info.len()].copy_from_slice(info);
                info_at += (info.len() + 3) & !3;
            }
            (
                Fake {
                    img,
                    stack: Default::default(),
                },
                (0x100, funcs.len() as u32 * 12),
            )
        }
    }

    const BASE: u64 = 0x4000_0000;

    fn run(f: &Fake, pdata: (u32, u32), rip: u64, rsp: u64, rbp: u64) -> (Vec<u64>, BacktraceEnd) {
        let img = f.img.clone();
        let mut image =
            move |rva: u32, buf: &mut [u8]| match img.get(rva as usize..rva as usize + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            };
        let stack = |a: u64| f.stack.get(&a).copied();
        let is_return = |a: u64| (BASE..BASE + 0x1000).contains(&a);
        let mut r = Reader {
            image: &mut image,
            stack: &stack,
            base: BASE,
            pdata,
            is_return: &is_return,
        };
        let mut out = heapless::Vec::new();
        let end = walk(&mut r, 0x1000, rip, rsp, rbp, &mut out);
        (out.to_vec(), end)
    }

    /// `push rbp; sub rsp, 0x40; lea rbp, [rsp+0x20]` (LLVM's Win64 frame): codes in reverse
    /// order: SET_FPREG at 9, ALLOC_SMALL 0x40 at 5, PUSH_NONVOL rbp at 1.
    fn fp_frame() -> Vec<u8> {
        vec![
            1, 9, 3, 0x25, // v1, prolog 9, 3 codes, frame rbp + 2*16
            9, 0x03, // SET_FPREG
            5, 0x72, // ALLOC_SMALL (7+1)*8 = 0x40
            1, 0x50, // PUSH_NONVOL rbp
            0, 0,
        ]
    }

    #[test]
    fn frames_with_a_win64_frame_pointer_unwind_to_their_callers() {
        // f1 [0x400, 0x480) with a frame pointer, called from f2 [0x500, 0x580) (the same
        // shape), called from outside the image.
        let (mut f, pdata) = Fake::new(&[(0x400, 0x480, fp_frame()), (0x500, 0x580, fp_frame())]);
        // f1's frame: body rsp = 0x8000 (rbp = rsp + 0x20 after the prolog, unused); its
        // 0x40 bytes, then the saved rbp at 0x8040 and the return into f2 at 0x8048.
        f.stack.insert(0x8040, 0x80a0);
        f.stack.insert(0x8048, BASE + 0x540);
        // f2's body rsp at its call is 0x8050 (rbp, clobbered or not, is not used): saved rbp
        // at 0x8090, return to the firmware at 0x8098.
        f.stack.insert(0x8090, 0);
        f.stack.insert(0x8098, 0x7000_0000);
        let (out, end) = run(&f, pdata, BASE + 0x420, 0x8000, 0x8020);
        assert_eq!(out, vec![BASE + 0x540, 0x7000_0000]);
        assert_eq!(end, BacktraceEnd::Outermost);
    }

    #[test]
    fn a_leaf_returns_through_rsp_and_a_bad_stack_ends_the_walk() {
        let (mut f, pdata) = Fake::new(&[(0x500, 0x580, fp_frame())]);
        // Code without unwind data at 0x450: the first return address from rsp up (a
        // non-address and a stale word below it are skipped).
        f.stack.insert(0x9000, 0x17133);
        f.stack.insert(0x9008, 0);
        f.stack.insert(0x9010, BASE + 0x540);
        // f2's saved registers are not on the (fake) stack: the walk ends there.
        let (out, end) = run(&f, pdata, BASE + 0x450, 0x9000, 0x9100);
        assert_eq!(out, vec![BASE + 0x540]);
        assert_eq!(end, BacktraceEnd::OutsideStack);
    }

    #[test]
    fn in_the_prolog_only_the_instructions_run_are_undone() {
        let (mut f, pdata) = Fake::new(&[(0x400, 0x480, fp_frame())]);
        // At offset 1 (after `push rbp` only): pop rbp, then return.
        f.stack.insert(0x8000, 0x1234);
        f.stack.insert(0x8008, 0);
        let (out, end) = run(&f, pdata, BASE + 0x401, 0x8000, 0xdead);
        assert_eq!((out, end), (vec![], BacktraceEnd::Outermost));
    }
}
