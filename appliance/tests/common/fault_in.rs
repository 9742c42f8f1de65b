//! `fault_in=STEP`: a fault inside each panic step ends with the configured panic action
//! (issue 11: a fault inside the panic path looped on x86_64, and on arm64 halted whatever
//! `panic_action` said). The first entry faults inside STEP; the nested entry runs crash
//! registers and end, then takes the action. `fault_in=nested`: the nested entry faults too
//! (in its end step), which is terminal: the action at once.
use super::*;

/// The panic action each step's run uses (all three covered on each arch).
pub const CASES: [(&str, &str); 8] = [
    ("freeze", "reset"),
    ("screen-flush", "poweroff"),
    ("vmbus-unload", "halt"),
    ("arch-cleanup", "reset"),
    ("ship", "poweroff"),
    ("crash-registers", "reset"),
    ("end", "poweroff"),
    ("nested", "reset"),
];

/// A bound on one run: boot, the panic after 0.2 s, and the panic path's deadlines (the
/// default ship deadline, 3 s, is not reached: the fault comes first or the collector acks).
const RUN_LIMIT: Duration = Duration::from_secs(45);

pub fn fault_in_step_ends_with_the_action(arch: &str, step: &str, action: &str) {
    let c = Collector::start();
    let append = format!("fault_in={step} panic_action={action} qemu_exit=0");
    // halt never ends QEMU: a short timeout, and the end line is the evidence.
    let timeout = if action == "halt" { 20 } else { 60 };
    let run = run_canary(
        arch,
        "direct",
        c.port,
        &["--append", &append, "--panic-after", "0.2"],
        timeout,
        || {},
    );
    let s = &run.serial;
    assert!(
        s.contains("panic: fault_in: reading an unmapped address inside this step"),
        "{step}: no injected fault\n{s}"
    );
    let end_line = match action {
        "halt" => "canary: end: halt",
        "reset" => "canary: end: reset",
        _ => "canary: end: power off",
    };
    if step == "nested" {
        // Terminal: a fixed line, no steps, no summary of the nested entry.
        assert!(
            s.contains("canary: fault inside the nested panic path: ending now"),
            "{s}"
        );
        assert!(!s.contains("(nested entry) steps:"), "{s}");
    } else {
        assert!(s.contains("NESTED PANIC"), "{step}: no nested entry\n{s}");
        assert!(s.contains("(nested entry) steps:"), "{step}\n{s}");
        assert!(s.contains(end_line), "{step}: not ended with {action}\n{s}");
        // Ready, and the nested entry's end: half of every stack still free.
        assert!(
            assert_stack_headroom(s) >= 4,
            "{step}: no stack reports\n{s}"
        );
    }
    match action {
        // QEMU runs with -no-reboot: a reset and a power off both end it (status 0).
        "reset" | "poweroff" => {
            assert_eq!(run.code(), 0, "{step}/{action}: status\n{s}");
            assert!(
                run.elapsed < RUN_LIMIT,
                "{step}/{action}: took {:?}",
                run.elapsed
            );
        }
        // Halted: QEMU is still there until the timeout kills it (124).
        _ => assert_eq!(run.code(), 124, "{step}/{action}: status\n{s}"),
    }
}
