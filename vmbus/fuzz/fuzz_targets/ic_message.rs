#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus_fuzz::ic_message(data));
