//! aarch64 on QEMU virt: EL1, MMU off, RAM at 0x4000_0000, PL011 at 0x0900_0000. Prints
//! what the HVC conduit answers, then PSCI SYSTEM_OFF.

use core::fmt::Write;

use vmbus::arch::aarch64::{self, Smccc};

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    ldr x0, =hvt_stack_top
    mov sp, x0
    bl hvtest_main
1:
    wfi
    b 1b

    .section .bss.hvt_boot, "aw", @nobits
    .p2align 4
hvt_stack:
    .skip 65536
hvt_stack_top:
"#
);

const UART: usize = 0x0900_0000;

struct Pl011;
impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: PL011 flag register (TXFF bit 5) and data register on QEMU virt.
            unsafe {
                while core::ptr::read_volatile((UART + 0x18) as *const u32) & (1 << 5) != 0 {}
                core::ptr::write_volatile(UART as *mut u32, b as u32);
            }
        }
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Pl011, $($t)*); }};
}

fn system_off() -> ! {
    let mut r = [0u64; 18];
    r[0] = 0x8400_0008; // PSCI SYSTEM_OFF
    aarch64::Native.call(&mut r);
    loop {
        // SAFETY: parking the CPU.
        unsafe { core::arch::asm!("wfi") };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("hvtest-arm64: PANIC {info}");
    system_off()
}

#[no_mangle]
extern "C" fn hvtest_main() -> ! {
    say!("hvtest-arm64: hvc #0 conduit on a host without Hyper-V");
    let mut r = [0u64; 18];
    r[0] = 0x8400_0000; // PSCI_VERSION
    aarch64::Native.call(&mut r);
    say!("psci version {:#x}", r[0]);
    let v = aarch64::smccc_version(&aarch64::Native);
    say!("smccc version {v:x?}");
    let id = vmbus::detect(aarch64::native());
    say!("detect: {:?}", id.map(|i| i.build));
    if id.is_none() {
        say!("hvtest-arm64: PASS");
    } else {
        say!("hvtest-arm64: FAIL");
    }
    system_off()
}
