//! 16550 UART at COM1 (0x3f8), polled, 115200 8N1.
use super::port::{inb, outb};

const COM1: u16 = 0x3f8;

pub fn init() {
    // SAFETY: standard 16550 register programming at COM1.
    unsafe {
        outb(COM1 + 1, 0x00); // IER: no interrupts
        outb(COM1 + 3, 0x80); // LCR: DLAB
        outb(COM1, 0x01); // DLL: 115200
        outb(COM1 + 1, 0x00); // DLM
        outb(COM1 + 3, 0x03); // LCR: 8N1
        outb(COM1 + 2, 0xc7); // FCR: FIFO on, clear
        outb(COM1 + 4, 0x03); // MCR: DTR | RTS
    }
}

pub fn write(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

fn put(b: u8) {
    // SAFETY: polls LSR.THRE, then writes THR. Bounded: a missing UART reads 0xff.
    unsafe {
        let mut spins = 0u32;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        outb(COM1, b);
    }
}
