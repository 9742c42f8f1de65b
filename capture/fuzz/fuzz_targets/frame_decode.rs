#![no_main]
//! libFuzzer target: arbitrary datagrams through `wire::parse` (with and without a key),
//! `CrashRecord::decode` and the `Reassembler` (see `capture_fuzz::frame_decode`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capture_fuzz::frame_decode(data);
});
