#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus_fuzz::ring_read(data));
