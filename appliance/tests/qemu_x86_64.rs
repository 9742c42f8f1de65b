//! The canary under QEMU TCG on x86_64, with a real `host-collector serve` storing its record.
mod common;
use common::*;
use std::time::Duration;

fn panic_on_purpose(boot: &str, boot_mode: &str) {
    common::panic_on_purpose("x86_64", boot, boot_mode);
}

#[test]
fn pvh_direct_boot_panic_record_is_stored_by_the_collector() {
    panic_on_purpose("direct", "pvh");
}

#[test]
fn pvh_boot_through_seabios_panic_record_is_stored_by_the_collector() {
    // QEMU's default firmware (SeaBIOS and its PVH option ROM) assigns the PCI BARs itself.
    let (c, run) = run_acked(
        "x86_64",
        "direct",
        &["--firmware", "seabios", "--panic-after", "0.2"],
    );
    assert!(
        !run.serial.contains("assigned at"),
        "SeaBIOS left a BAR empty:\n{}",
        run.serial
    );
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", "pvh", "panic", &run.serial);
}

#[test]
fn uefi_boot_panic_record_is_stored_by_the_collector() {
    panic_on_purpose("uefi", "uefi");
}

#[test]
fn linux_boot_protocol_64bit_entry_with_rsp_zero_panic_record_is_stored_by_the_collector() {
    // The shim enters `_start64` with RSP = 0, as OpenVMM does (the 64-bit boot protocol
    // sets no stack): the entry must set its own stack before its first push.
    let (_, run) = common::panic_on_purpose("x86_64", "linux64", "linux-boot");
    assert!(
        run.serial.contains("with RSI = boot_params, RSP = 0"),
        "{}",
        run.serial
    );
}

fn bad_memory_access(boot: &str, boot_mode: &str) {
    // Page fault (vector 14) at the address canary.rs reads.
    let rec = common::bad_memory_access("x86_64", boot, boot_mode);
    assert_eq!(
        u64::from_str_radix(
            rec["kind_detail"]["vector"]
                .as_str()
                .unwrap()
                .trim_start_matches("0x"),
            16
        )
        .unwrap()
            & 0xff,
        14
    );
    assert!(
        rec["message"].as_str().unwrap().contains("page fault"),
        "{rec:#}"
    );
}

#[test]
fn bad_memory_access_is_caught_and_shipped() {
    bad_memory_access("direct", "pvh");
}

#[test]
fn bad_memory_access_under_uefi_is_caught_and_shipped() {
    bad_memory_access("uefi", "uefi");
}

#[test]
fn panic_inside_the_panic_path_ends_through_the_nested_path() {
    let (c, run) = nested_panic("x86_64");
    // The nested entry runs crash registers and end only. The first entry panicked inside
    // crash registers before writing them, so the nested one tries (write-once per boot):
    // no Hyper-V under QEMU, so "not present".
    assert!(
        run.serial
            .contains("panic path (nested entry) steps: crash-registers=not present"),
        "{}",
        run.serial
    );
    assert!(
        !run.serial.contains("vmbus-unload") || run.serial.matches("vmbus-unload=").count() == 1,
        "the nested entry must not unload again:\n{}",
        run.serial
    );
    assert!(run.serial.contains("canary: end: halt"), "{}", run.serial);
    // The first entry shipped before the nested panic and sent its follow-up at the end of
    // the ship step; the nested entry had nothing more to report (the crash registers step
    // was running when it panicked, and its end never came).
    let rec = c.show_latest();
    assert_complete_record_steps(&rec, "x86_64", "pvh", "panic", &run.serial, &STEPS_NESTED);
}

#[test]
fn heartbeats_reach_the_collector_with_the_boot_id_of_the_record() {
    let (c, _run) = run_acked(
        "x86_64",
        "direct",
        &["--append", "heartbeat_ms=100", "--panic-after", "0.6"],
    );
    let rec = c.show_latest();
    let canaries = c.canaries();
    let me = canaries
        .iter()
        .find(|k| k["boot_id"] == rec["boot_id"])
        .unwrap_or_else(|| panic!("no heartbeat from boot {}: {canaries:#?}", rec["boot_id"]));
    assert_eq!(me["arch"], "x86_64");
    // Boot heartbeat + one per 100 ms over 0.6 s (timing under TCG is loose: at least 3).
    assert!(me["heartbeats"].as_u64().unwrap() >= 3, "{me:#}");
}

#[test]
fn drill_from_the_collector_panics_with_kind_drill() {
    let c = Collector::start();
    let dport = free_udp_port();
    let drill_addr = format!("127.0.0.1:{dport}");
    // No key: drills are off unless drill=insecure.
    let run = run_canary(
        "x86_64",
        "direct",
        c.port,
        &[
            "--drill-port",
            &dport.to_string(),
            "--append",
            "drill=insecure",
        ],
        120,
        || c.drill(&drill_addr),
    );
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", "pvh", "drill", &run.serial);
    assert!(
        rec["message"].as_str().unwrap().starts_with("drill 0x"),
        "{rec:#}"
    );
}

#[test]
fn with_a_fleet_key_records_are_authenticated_and_unkeyed_drills_are_refused() {
    let hex = "5eed5eed00112233445566778899aabbccddeeff0123456789abcdef01234567";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, hex).unwrap();
    let key_path = key_file.to_str().unwrap();
    // The collector requires the key: an untagged record would be rejected, not stored.
    let c = Collector::start_with(&["--key-file", key_path]);
    let dport = free_udp_port();
    let drill_addr = format!("127.0.0.1:{dport}");
    let append = format!("key={hex}");
    let run = run_canary(
        "x86_64",
        "direct",
        c.port,
        &["--drill-port", &dport.to_string(), "--append", &append],
        120,
        || {
            c.drill(&drill_addr); // no key: must be refused
            std::thread::sleep(Duration::from_millis(500));
            c.drill_with(&drill_addr, &["--key-file", key_path]);
        },
    );
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    assert!(
        run.serial.contains("drill port: bad frame"),
        "the unkeyed drill was not refused:\n{}",
        run.serial
    );
    // The keyed drill was a challenge-response (capture API.md, "Drills").
    assert!(run.serial.contains(": challenge 1 sent"), "{}", run.serial);
    assert_eq!(
        run.serial.matches("drill 0x").count(),
        2,
        "one drill accepted (log + panic line):\n{}",
        run.serial
    );
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", "pvh", "drill", &run.serial);
}

#[test]
fn without_a_key_a_drill_does_nothing_unless_drill_is_insecure() {
    let c = Collector::start();
    let dport = free_udp_port();
    let drill_addr = format!("127.0.0.1:{dport}");
    let run = run_canary(
        "x86_64",
        "direct",
        c.port,
        &["--drill-port", &dport.to_string(), "--panic-after", "2"],
        120,
        || c.drill(&drill_addr),
    );
    assert_eq!(run.code(), EXIT_ACKED, "serial:\n{}", run.serial);
    // The canary panicked on panic_after, not as a drill.
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", "pvh", "panic", &run.serial);
    assert!(run.serial.contains("drills: off"), "{}", run.serial);
    assert!(
        run.serial.contains("refused: drills are off"),
        "the drill did not reach the canary:\n{}",
        run.serial
    );
}

#[test]
fn a_forged_ack_from_another_endpoint_does_not_stop_retransmission() {
    common::peers::forged_ack_from_another_endpoint("x86_64");
}

#[test]
fn with_a_key_unauthenticated_and_unchallenged_drills_do_nothing() {
    common::peers::unauthenticated_drills_do_nothing_with_a_key("x86_64");
}

#[test]
fn with_dhcp_the_boot_heartbeat_leaves_after_the_lease_and_ready_means_it_can_send() {
    // Issue 17: the boot heartbeat was queued before the lease and silently dropped, and
    // "ready (network up)" was printed before the canary could send.
    let (c, run) = run_acked(
        "x86_64",
        "direct",
        &["--append", "ip=dhcp heartbeat_ms=0", "--panic-after", "0.3"],
    );
    let rec = c.show_latest();
    let lease = run
        .serial
        .find("dhcp: 10.0.2.15/24")
        .expect("no lease line");
    let ready = run
        .serial
        .find("canary: ready (network up)")
        .unwrap_or_else(|| panic!("not ready with the network up:\n{}", run.serial));
    assert!(lease < ready, "ready before the lease:\n{}", run.serial);
    let canaries = c.canaries();
    let me = canaries
        .iter()
        .find(|k| k["boot_id"] == rec["boot_id"])
        .unwrap_or_else(|| panic!("boot heartbeat lost: {canaries:#?}\n{}", run.serial));
    assert_eq!(me["heartbeats"].as_u64(), Some(1), "{me:#}");
}

#[test]
fn dhcp_configured_canary_ships_its_record() {
    let (c, run) = run_acked(
        "x86_64",
        "direct",
        &["--append", "ip=dhcp", "--panic-after", "0.2"],
    );
    // QEMU user networking's DHCP server hands out 10.0.2.15 with 10.0.2.2 as the router.
    assert!(
        run.serial.contains("dhcp: 10.0.2.15/24 via Some(10.0.2.2)"),
        "{}",
        run.serial
    );
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", "pvh", "panic", &run.serial);
}

#[test]
fn timer_self_check_failure_panics_with_kind_self_check_and_says_what_failed() {
    // A TSC frequency far below any real one makes the counter run many times too fast; the
    // self-check compares it with the CMOS RTC over >= 4 s of RTC time and must catch it.
    let (c, run) = run_acked(
        "x86_64",
        "direct",
        &["--append", "tsc_khz=100000 selfcheck_ms=200 heartbeat_ms=0"],
    );
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", "pvh", "self-check", &run.serial);
    assert_eq!(
        rec["message"], "self-check failed: timer: counter and reference clock disagree",
        "{rec:#}"
    );
}

#[test]
fn without_a_collector_the_ship_step_times_out_at_its_deadline_and_the_canary_still_ends() {
    // Nothing listens on this port: the record is never acknowledged.
    let port = free_udp_port();
    let run = run_canary(
        "x86_64",
        "direct",
        port,
        &["--panic-after", "0.1", "--append", "deadline_ms=400"],
        120,
        || {},
    );
    assert_eq!(run.code(), EXIT_NOT_ACKED, "serial:\n{}", run.serial);
    assert!(
        run.serial
            .contains("panic: no ack for the record within 400 ms"),
        "{}",
        run.serial
    );
    let summary = run
        .serial
        .lines()
        .find(|l| l.starts_with("canary: panic path (first entry) steps:"))
        .unwrap_or_else(|| panic!("no step summary:\n{}", run.serial));
    assert!(summary.contains("ship=timed out ("), "{summary}");
    // The deadline bounds the step: 400 ms, plus at most one retransmit round of slack. The
    // sender counts whole milliseconds (capture::sender: `now_ms >= start_ms + 400`), so the
    // step's own microsecond clock may read up to 1 ms less (CI once saw 399,865 us).
    let ship_us: u64 = summary
        .split("ship=timed out (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("ship duration");
    assert!((399_000..1_500_000).contains(&ship_us), "{summary}");
}

#[test]
fn panic_action_poweroff_and_reset_end_the_vm() {
    for (action, line) in [
        ("poweroff", "canary: end: power off"),
        ("reset", "canary: end: reset"),
    ] {
        // qemu_exit=0: leave through the configured action, not isa-debug-exit. QEMU exits 0 on
        // ACPI power-off and, with -no-reboot, on reset; a halt would run into the timeout.
        let append = format!("qemu_exit=0 panic_action={action}");
        let run = run_canary(
            "x86_64",
            "direct",
            free_udp_port(),
            &["--no-net", "--panic-after", "0.1", "--append", &append],
            60,
            || {},
        );
        assert_eq!(run.code(), 0, "{action}: serial:\n{}", run.serial);
        assert!(run.serial.contains(line), "{action}:\n{}", run.serial);
        // The registers came from QEMU's ACPI tables (FADT PM1a_CNT, DSDT _S5_, FADT
        // RESET_REG), not from the PC fallbacks.
        assert!(
            run.serial.contains(
                "acpi: PM1a_CNT 0x604, PM1b_CNT 0x0, S5 SLP_TYP 0/0, reset register I/O 0xcf9 <- 0xf"
            ),
            "{action}:\n{}",
            run.serial
        );
    }
}

fn stack_overflow(boot: &str, boot_mode: &str) {
    let (c, run) = run_acked("x86_64", boot, &["--append", "stack_overflow_after=0.1"]);
    let rec = c.show_latest();
    assert_complete_record(&rec, "x86_64", boot_mode, "fault", &run.serial);
    assert!(
        rec["message"].as_str().unwrap().contains("page fault"),
        "{rec:#}"
    );
    // The fault address is in the guard page, next to the stack pointer at the fault.
    let hex = |v: &serde_json::Value| {
        u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    let addr = hex(&rec["kind_detail"]["addr"]);
    let sp = hex(&rec["registers"]["sp"]);
    assert!(addr.abs_diff(sp) < 4096, "addr {addr:#x} sp {sp:#x}");
    assert!(
        run.serial
            .contains("stack_overflow_after: recursing without bound"),
        "{}",
        run.serial
    );
}

#[test]
fn stack_overflow_hits_the_guard_page_and_ships_from_the_fault_stack() {
    stack_overflow("direct", "pvh");
}

#[test]
fn stack_overflow_under_uefi_hits_the_guard_page_of_the_canarys_own_stack() {
    // UEFI: the canary leaves the firmware's stack for its own, with an unmapped page below,
    // and finds return addresses by scanning (the Microsoft x64 ABI has no frame chain).
    stack_overflow("uefi", "uefi");
}

#[test]
fn uefi_load_options_configure_the_canary() {
    // Hyper-V boot entries (and the UEFI shell) pass options as the image's load options;
    // `\canary.cfg` is only the fallback. Boot through OVMF's shell with a startup.nsh that
    // starts the canary with options, and no canary.cfg at all. No NIC: with one, OVMF tries
    // network boot (minutes) before its shell.
    build_image("x86_64", "uefi");
    let out = std::process::Command::new(workspace().join("scripts/qemu-run"))
        .args(["--boot", "uefi", "--no-build", "--no-net", "--dry-run"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(out.status.success());
    let cmd = String::from_utf8(out.stdout).unwrap();
    // printf %q quoting: only `\,` escapes appear (paths are mktemp names).
    let argv: Vec<String> = cmd
        .split_whitespace()
        .map(|w| w.replace("\\,", ","))
        .collect();
    let esp = argv
        .iter()
        .find_map(|a| a.strip_prefix("format=raw,file=fat:rw:"))
        .expect("the ESP directory in the QEMU command line")
        .to_string();
    let esp = std::path::Path::new(&esp);
    std::fs::remove_file(esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    std::fs::remove_file(esp.join("canary.cfg")).unwrap();
    std::fs::copy(
        workspace().join("target/x86_64-unknown-uefi/release/appliance.efi"),
        esp.join("canary.efi"),
    )
    .unwrap();
    let opts = "collector=10.0.2.2:9 qemu_exit=1 panic_after=0.1 drill_port=7411";
    std::fs::write(
        esp.join("startup.nsh"),
        format!("fs0:\r\ncanary.efi {opts}\r\n"),
    )
    .unwrap();
    let _slot = qemu_slot();
    let run = std::process::Command::new("timeout")
        .args(["-k", "2", "120"])
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(esp.parent().unwrap());
    let serial = String::from_utf8_lossy(&run.stdout).to_string();
    // The options took effect: the shell's command line (image name first) reached the
    // canary, and its ready line names the collector and drill port from them.
    assert!(
        serial.contains(&format!("cmdline: canary.efi {opts}")),
        "{serial}"
    );
    assert!(
        serial.contains("canary: ready (network absent), collector 10.0.2.2:9, drill port 7411"),
        "{serial}"
    );
    assert!(
        serial.contains("*** canary PANIC: panic_after=0.100s"),
        "{serial}"
    );
    assert_eq!(run.status.code(), Some(EXIT_NOT_ACKED), "serial:\n{serial}");
}

#[test]
fn idle_canary_halts_between_polls_instead_of_spinning() {
    // 2 s of idle running: a spinning vCPU costs QEMU about 2 s of CPU time; halting on the
    // local-APIC timer between polls costs a small fraction. Measured as the CPU time of the
    // children (bash `times`), which host load does not inflate.
    build_image("x86_64", "direct");
    let _slot = qemu_slot();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(
            "scripts/qemu-run --no-build --no-net --panic-after 2 --timeout 60 >/tmp/canary-idle-$$.log; \
             s=$?; grep -h 'idle:' /tmp/canary-idle-$$.log; rm -f /tmp/canary-idle-$$.log; times; exit $s",
        )
        .current_dir(workspace())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(EXIT_NOT_ACKED), "{text}");
    assert!(text.contains("idle: local APIC timer"), "{text}");
    // `times` prints the shell's, then the children's "XmY.YYYs XmY.YYYs" (user, system).
    let children = text.lines().last().unwrap_or("");
    let secs = |t: &str| -> f64 {
        let (m, s) = t
            .trim_end_matches('s')
            .split_once('m')
            .unwrap_or(("0", "0"));
        m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
    };
    let cpu: f64 = children.split_whitespace().map(secs).sum();
    assert!(
        cpu < 1.0,
        "QEMU used {cpu:.2} s of CPU over 2 s of idle running:\n{text}"
    );
}

#[test]
fn a_fault_inside_each_panic_step_ends_with_the_configured_action() {
    for (step, action) in common::fault_in::CASES {
        common::fault_in::fault_in_step_ends_with_the_action("x86_64", step, action);
    }
}

#[test]
fn a_panic_while_the_hyperv_and_network_locks_are_held_takes_them_over() {
    // Issue 11: with the HYPERV lock held at the panic, every Hyper-V step was skipped as
    // busy (screen flush, UNLOAD, cleanup, crash registers). Under plain QEMU there is no
    // Hyper-V: the steps must say "not present", never "busy", and the record still ships.
    let (c, run) = run_acked(
        "x86_64",
        "direct",
        &["--append", "panic_holding=locks", "--panic-after", "0.2"],
    );
    let s = &run.serial;
    assert!(!s.contains("skipped (busy)"), "{s}");
    assert!(
        s.contains("panic: the Hyper-V state was locked at the panic; taken over"),
        "{s}"
    );
    assert!(
        s.contains("panic: the network was locked at the panic; taken over"),
        "{s}"
    );
    let rec = c.show_latest();
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .contains("holding the Hyper-V and network locks"),
        "{rec:#}"
    );
}

#[test]
fn the_stack_headroom_check_fails_below_half_free() {
    let ok = "stack (ready): boot 40632/131072 B used (30%), fault 0/32768 B used (0%)\n";
    assert_eq!(common::assert_stack_headroom(ok), 2);
    let tight = "stack (panic path): boot 45568/65536 B used (69%), exc 0/65536 B used (0%)\n";
    let r = std::panic::catch_unwind(|| common::assert_stack_headroom(tight));
    assert!(r.is_err(), "69% used must fail the headroom check");
}
