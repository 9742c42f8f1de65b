//! Runs the harnesses on pseudo-random inputs for a bounded time on stable Rust (no
//! libFuzzer, no sanitizers): `stable_driver SECONDS`.

use std::time::{Duration, Instant};

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut x: u64 = Instant::now().elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut runs = [0u64; 3];
    let mut buf = Vec::new();
    while Instant::now() < end {
        let len = (next() % 600) as usize;
        buf.clear();
        buf.extend((0..len).map(|_| next() as u8));
        // Bias towards VMBus messages with plausible headers.
        if len > 8 && next() % 2 == 0 {
            buf[1] = 2;
            buf[4] = (next() % 30) as u8;
        }
        match next() % 3 {
            0 => {
                vmbus_fuzz::host_messages(&buf);
                runs[0] += 1;
            }
            1 => {
                vmbus_fuzz::ring_read(&buf);
                runs[1] += 1;
            }
            _ => {
                vmbus_fuzz::ic_message(&buf);
                runs[2] += 1;
            }
        }
    }
    println!(
        "stable_driver: {} host_message, {} ring_read and {} ic_message runs in {secs} s, no failures",
        runs[0], runs[1], runs[2]
    );
}
