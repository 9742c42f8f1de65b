//! x86_64: boots by PVH, then runs the vmbus guest stack against the host it finds and
//! reports every step on COM1. Exits through isa-debug-exit: 0x10 pass, 0x11 fail.

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use vmbus::cleanup::{cleanup_cpu, CleanupConfig};
use vmbus::regs::SynReg;
use vmbus::time::ReferenceTime;
use vmbus::{
    Clock, ConnectOptions, Connection, GuestOsId, Hypervisor, OpenOptions, OutgoingPacket,
    PageAlloc, PhysPages, Synic, SynicMode, UnloadOutcome,
};

// PVH entry (Xen `public/elfnote.h` XEN_ELFNOTE_PHYS32_ENTRY = 18; `hvm_start_info` in EBX,
// unused here): 32-bit protected mode, paging off. Identity-map 1 GiB with 2 MiB pages, enter
// long mode, call `hvtest_main` on a static stack.
core::arch::global_asm!(
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .p2align 2
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    movl $hvt_stack_top, %esp
    movl $hvt_pdpt, %eax
    orl $3, %eax
    movl %eax, hvt_pml4
    movl $hvt_pd, %eax
    orl $3, %eax
    movl %eax, hvt_pdpt
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, hvt_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b
    movl $hvt_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdt hvt_gdtr
    ljmp $0x08, $hvt_long
    .code64
hvt_long:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq $hvt_stack_top, %rsp
    call hvtest_main
2:
    hlt
    jmp 2b

    .section .rodata.hvt_gdt, "a"
    .p2align 3
hvt_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
hvt_gdtr:
    .word 23
    .long hvt_gdt

    .section .bss.hvt_boot, "aw", @nobits
    .p2align 12
hvt_pml4:
    .skip 4096
hvt_pdpt:
    .skip 4096
hvt_pd:
    .skip 4096
hvt_stack:
    .skip 65536
hvt_stack_top:
"#,
    options(att_syntax)
);

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O to COM1 / isa-debug-exit; no memory effects.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O read; no memory effects.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

struct Com1;
impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            while inb(0x3f8 + 5) & 0x20 == 0 {}
            outb(0x3f8, b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Com1, $($t)*); }};
}

fn exit(code: u8) -> ! {
    outb(0xf4, code);
    loop {
        // SAFETY: halting the only CPU.
        unsafe { core::arch::asm!("hlt") };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("hvtest: PANIC {info}");
    exit(0x11)
}

const POOL_PAGES: usize = 160;
#[repr(C, align(4096))]
struct Pool(UnsafeCell<[u8; POOL_PAGES * 4096]>);
// SAFETY: pages are handed out once by the bump allocator below.
unsafe impl Sync for Pool {}
static POOL: Pool = Pool(UnsafeCell::new([0; POOL_PAGES * 4096]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Pages;
// SAFETY: the pool is identity mapped (va == gpa), zero (bss), and each page is handed out
// once.
unsafe impl PageAlloc for Pages {
    fn alloc_pages(&self, count: usize) -> Option<PhysPages> {
        let first = NEXT.fetch_add(count, Ordering::Relaxed);
        if first + count > POOL_PAGES {
            return None;
        }
        let addr = POOL.0.get() as u64 + (first * 4096) as u64;
        // SAFETY: inside the pool, identity mapped.
        Some(unsafe { PhysPages::identity(addr, count) })
    }
}

struct NoGic;
impl vmbus::InterruptControl for NoGic {
    fn disable_ppi(&mut self, _: u32) {}
}

static SYNIC: Synic = Synic::new();

/// Dynamic Memory (hv-balloon) class, as QEMU offers it (hvhost README).
const BALLOON: vmbus::Guid = vmbus::Guid::from_fields(
    0x5250_74dc,
    0x8985,
    0x46e2,
    [0x80, 0x57, 0xa3, 0x07, 0xdc, 0x18, 0xa5, 0x02],
);

#[no_mangle]
extern "C" fn hvtest_main() -> ! {
    say!("hvtest: vmbus guest stack on a real host");
    match run() {
        Ok(()) => {
            say!("hvtest: PASS");
            exit(0x10)
        }
        Err(e) => {
            say!("hvtest: FAIL: {e}");
            exit(0x11)
        }
    }
}

fn run() -> Result<(), &'static str> {
    let hv = vmbus::arch::x86_64::native();
    let id = vmbus::detect(hv).ok_or("no Hyper-V detected")?;
    say!(
        "detect: build {:#x} version {:#x} privileges {:#x} features {:#x} crash_msrs {}",
        id.build,
        id.version,
        id.privileges.0,
        id.features,
        id.crash_msrs()
    );
    hv.enable_hypercalls(&Pages, GuestOsId::canary(0, 1, 0))
        .map_err(|_| "enable_hypercalls")?;
    let page = hv.hypercall_page();
    // SAFETY: the hypercall page is mapped and filled by the hypervisor.
    let code = unsafe { core::slice::from_raw_parts(page, 4) };
    say!("hypercall page at {page:p}: {code:02x?}");
    let vp = SYNIC
        .enable_cpu(hv, &Pages, SynicMode::Polling)
        .map_err(|_| "synic")?;
    let clock = ReferenceTime::new(hv, &Pages, &id);
    say!(
        "synic: vp {vp}; reference time from the TSC page: {}",
        clock.uses_tsc_page()
    );
    let t0 = clock.now();

    for round in 1..=2 {
        let mut conn = Connection::connect(hv, &clock, &Pages, &SYNIC, &ConnectOptions::default())
            .map_err(|e| {
                say!("connect: {e}");
                "connect"
            })?;
        say!(
            "round {round}: connected at {} (message connection id {})",
            conn.version(),
            conn.message_connection_id()
        );
        let offers = conn.request_offers(hv, &clock).map_err(|_| "offers")?;
        say!("offers: {}", offers.len());
        for o in offers {
            say!(
                "  relid {} class {} connection id {:#x} dedicated {}",
                o.child_relid,
                o.if_type,
                o.connection_id,
                o.is_dedicated_interrupt
            );
        }
        if let Some(relid) = offers
            .iter()
            .find(|o| o.if_type == BALLOON)
            .map(|o| o.child_relid)
        {
            balloon(&mut conn, hv, &clock, relid)?;
        }
        let deadline = clock.now() + 100_000_000;
        let o = conn.unload(hv, &clock, deadline);
        say!("unload: {o:?}");
        if !matches!(o, UnloadOutcome::Done { .. }) {
            return Err("unload");
        }
        let again = conn.unload(hv, &clock, deadline);
        say!("unload again: {again:?}");
    }
    let report = cleanup_cpu(hv, &SYNIC, &mut NoGic, &CleanupConfig::default());
    let read = |r| hv.read_reg(r).unwrap_or(u64::MAX);
    say!(
        "cleanup: {report:?}; SCONTROL {:#x} SIMP {:#x} SIEFP {:#x} SINT2 {:#x} STIMER0 {:#x}/{:#x}",
        read(SynReg::Scontrol),
        read(SynReg::Simp),
        read(SynReg::Siefp),
        read(SynReg::Sint(2)),
        read(SynReg::StimerConfig(0)),
        read(SynReg::StimerCount(0))
    );
    say!("elapsed {} us of reference time", (clock.now() - t0) / 10);
    hv.disable_hypercalls().map_err(|_| "disable")?;
    say!(
        "end: HYPERCALL {:#x} GUEST_OS_ID {:#x}",
        read(SynReg::Hypercall),
        read(SynReg::GuestOsId)
    );
    Ok(())
}

/// Open the Dynamic Memory channel: one GPADL over both rings, OPENCHANNEL, one in-band
/// DM_VERSION_REQUEST out, the DM_VERSION_RESPONSE back through the inbound ring, close.
fn balloon(
    conn: &mut Connection<'_>,
    hv: &dyn Hypervisor,
    clock: &dyn Clock,
    relid: u32,
) -> Result<(), &'static str> {
    let opts = OpenOptions {
        send_ring_pages: 4,
        recv_ring_pages: 4,
        ..OpenOptions::default()
    };
    let ch = conn
        .open_channel(hv, clock, &Pages, relid, &opts)
        .map_err(|e| {
            say!("open: {e}");
            "open"
        })?;
    say!("open: relid {relid} gpadl {:#x}", ch.gpadl().0);
    ch.set_polling(true);
    // Linux drivers/hv/hv_balloon.c: dm_header {u16 type; u16 size; u32 trans_id},
    // DM_VERSION_REQUEST = 1 with {u32 version; u32 is_last_attempt:1}; WIN10 = 3.0.
    let mut req = [0u8; 16];
    req[0..2].copy_from_slice(&1u16.to_le_bytes());
    req[2..4].copy_from_slice(&16u16.to_le_bytes());
    req[8..12].copy_from_slice(&0x0003_0000u32.to_le_bytes());
    req[12..16].copy_from_slice(&1u32.to_le_bytes());
    let sent = ch
        .try_lock_outbound()
        .ok_or("ring locked")?
        .send(
            hv,
            &OutgoingPacket::InBand {
                trans_id: 1,
                completion_requested: false,
                data: &req,
            },
        )
        .map_err(|_| "send")?;
    say!("send: DM_VERSION_REQUEST, signalled {}", sent.signalled);
    let deadline = clock.now() + 50_000_000;
    let mut buf = [0u8; 512];
    let mut got = false;
    while clock.now() < deadline {
        match ch.try_recv(hv, &mut buf) {
            Ok(Some(p)) => {
                let n = p.payload.len().min(16);
                say!(
                    "recv: packet type {} flags {} trans_id {} payload {:02x?}",
                    p.desc.ty,
                    p.desc.flags,
                    p.trans_id(),
                    &p.payload[..n]
                );
                got = true;
                break;
            }
            Ok(None) => clock.relax(),
            Err(e) => {
                say!("recv: {e}");
                return Err("recv");
            }
        }
    }
    if !got {
        say!("recv: nothing within 5 s");
    }
    let pages = conn.close_channel(hv, clock, ch).map_err(|e| {
        say!("close: {e}");
        "close"
    })?;
    say!(
        "close: CLOSECHANNEL + GPADL torn down; {} ring pages back",
        pages.count()
    );
    if got {
        Ok(())
    } else {
        Err("no packet from the host")
    }
}
