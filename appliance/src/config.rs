//! Appliance configuration from the kernel command line (direct boot) or the UEFI load
//! options: whitespace-separated `key=value` words. See `configs/appliance.example`.
//!
//! Unknown keys and bad values never stop the boot: they are collected as warnings (the logger
//! prints them once it is up) and the default stays in force.

use core::fmt::Write as _;

/// What the canary does at the end of the panic path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicAction {
    Halt,
    Reset,
    Poweroff,
}

/// The appliance's own IPv4 configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetConfig {
    Static {
        addr: [u8; 4],
        prefix: u8,
        gateway: Option<[u8; 4]>,
    },
    Dhcp,
}

/// Where `fault_in=` puts a fault (see [`Config::fault_in`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultIn {
    /// In this step of the first entry.
    Step(capture::panic::Step),
    /// In the nested entry's end step (after a first-entry fault in crash-registers).
    Nested,
}

impl FaultIn {
    fn parse(v: &str) -> Option<FaultIn> {
        if v == "nested" {
            return Some(FaultIn::Nested);
        }
        capture::panic::Step::ALL
            .into_iter()
            .find(|s| s.name() == v)
            .map(FaultIn::Step)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Collector address and UDP port.
    pub collector: ([u8; 4], u16),
    pub net: NetConfig,
    /// UDP port the appliance listens on for Drill frames.
    pub drill_port: u16,
    pub panic_action: PanicAction,
    /// Self-check interval (timer sanity, VMBus health).
    pub selfcheck_ms: u64,
    /// Heartbeat interval (0 = off).
    pub heartbeat_ms: u64,
    /// How long the panic path tries to get an ack for the record.
    pub deadline_ms: u64,
    /// Bound of the VMBus UNLOAD wait in the panic path.
    pub unload_deadline_ms: u64,
    /// Panic on purpose this long after "ready" (test and demo).
    pub panic_after_ms: Option<u64>,
    /// Make a bad memory access this long after "ready".
    pub fault_after_ms: Option<u64>,
    /// Recurse without bound this long after "ready" (tests the stack guard and fault stack).
    pub stack_overflow_after_ms: Option<u64>,
    /// Panic again inside the panic path (tests the nested path).
    pub nested_panic: bool,
    /// Test option: fault (a read of an unmapped address) inside this panic step of the first
    /// entry (`fault_in=STEP`, a step name as in the summary line), or inside the nested
    /// entry (`fault_in=nested`: the first entry faults in crash-registers, the nested entry
    /// faults again in its end step, which must end the machine with `panic_action`).
    pub fault_in: Option<FaultIn>,
    /// Test option: `panic_after` panics while holding the Hyper-V state's and the network's
    /// locks (`panic_holding=locks`), as a crash inside the Hyper-V or network code would.
    pub panic_holding_locks: bool,
    /// Under QEMU: leave through isa-debug-exit (x86_64) or semihosting (arm64) so the exit
    /// status says how the canary ended.
    pub qemu_exit: bool,
    /// x86_64: the TSC frequency in kHz, instead of calibrating it against the PIT (for
    /// machines without a PIT, or to test the timer self-check).
    pub tsc_khz: Option<u64>,
    /// Halt between polls (x86_64 local-APIC timer) instead of spinning.
    pub idle_halt: bool,
    /// Allowed drift between the counter and the reference clock, in percent.
    pub timer_tolerance_pct: u32,
    pub log_level: log::LevelFilter,
    /// Fleet key: when set, every frame the canary sends carries an HMAC-SHA256 tag and drills
    /// without a valid tag are refused (capture `API.md`, wire flags AUTH).
    pub key: Option<capture::Key>,
    /// `drill=off|keyed|insecure`: with a key, drills are authenticated challenge-responses
    /// (capture `API.md`, "Drills"); without one they are off unless `insecure`.
    pub drill: capture::drill::DrillPolicy,
    /// Problems found while parsing, printed once the log is up.
    pub warnings: heapless::String<256>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            collector: ([10, 0, 2, 2], 7373),
            net: NetConfig::Static {
                addr: [10, 0, 2, 15],
                prefix: 24,
                gateway: Some([10, 0, 2, 2]),
            },
            drill_port: 7374,
            panic_action: PanicAction::Halt,
            selfcheck_ms: 1000,
            heartbeat_ms: 5000,
            // 100,000 canaries panicking in the same second all got their record stored,
            // the last one 15.6 s after its panic (docs/bench-load.md, "Burst"); with the
            // old 3 s a third of them gave up. The VM is dead anyway: a minute of retransmits
            // is cheap.
            deadline_ms: 60_000,
            unload_deadline_ms: 100_000,
            panic_after_ms: None,
            fault_after_ms: None,
            stack_overflow_after_ms: None,
            nested_panic: false,
            fault_in: None,
            panic_holding_locks: false,
            qemu_exit: false,
            tsc_khz: None,
            idle_halt: true,
            timer_tolerance_pct: 50,
            log_level: log::LevelFilter::Info,
            key: None,
            drill: capture::drill::DrillPolicy::Keyed,
            warnings: heapless::String::new(),
        }
    }
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_endpoint(s: &str) -> Option<([u8; 4], u16)> {
    let (a, p) = s.split_once(':')?;
    Some((parse_ipv4(a)?, p.parse().ok()?))
}

/// Seconds with up to three decimals ("2", "0.5", "1.25") to milliseconds.
fn parse_seconds_ms(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || (whole.is_empty() && frac.is_empty()) {
        return None;
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut f: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..3 {
        f *= 10;
    }
    w.checked_mul(1000)?.checked_add(f)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

impl Config {
    /// Parses a command line. Words without `=` and keys owned by others (e.g. `console=`)
    /// are ignored; bad values keep the default and leave a warning.
    pub fn parse(cmdline: &str) -> Config {
        let mut c = Config::default();
        let mut static_addr: Option<([u8; 4], u8)> = None;
        let mut gateway: Option<Option<[u8; 4]>> = None;
        for word in cmdline.split_ascii_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            let ok = match k {
                "collector" => parse_endpoint(v).map(|e| c.collector = e).is_some(),
                "ip" if v == "dhcp" => {
                    c.net = NetConfig::Dhcp;
                    true
                }
                "ip" => {
                    let (a, p) = v.split_once('/').unwrap_or((v, "24"));
                    match (parse_ipv4(a), p.parse::<u8>()) {
                        (Some(a), Ok(p)) if p <= 32 => {
                            static_addr = Some((a, p));
                            true
                        }
                        _ => false,
                    }
                }
                "gw" if v == "none" => {
                    gateway = Some(None);
                    true
                }
                "gw" => parse_ipv4(v).map(|g| gateway = Some(Some(g))).is_some(),
                "drill_port" => v.parse().map(|p| c.drill_port = p).is_ok(),
                "panic_action" => match v {
                    "halt" => Some(PanicAction::Halt),
                    "reset" => Some(PanicAction::Reset),
                    "poweroff" => Some(PanicAction::Poweroff),
                    _ => None,
                }
                .map(|a| c.panic_action = a)
                .is_some(),
                "selfcheck_ms" => v.parse().map(|x| c.selfcheck_ms = x).is_ok(),
                "heartbeat_ms" => v.parse().map(|x| c.heartbeat_ms = x).is_ok(),
                "deadline_ms" => v.parse().map(|x| c.deadline_ms = x).is_ok(),
                "unload_deadline_ms" => v.parse().map(|x| c.unload_deadline_ms = x).is_ok(),
                "panic_after" => parse_seconds_ms(v)
                    .map(|x| c.panic_after_ms = Some(x))
                    .is_some(),
                "fault_after" => parse_seconds_ms(v)
                    .map(|x| c.fault_after_ms = Some(x))
                    .is_some(),
                "stack_overflow_after" => parse_seconds_ms(v)
                    .map(|x| c.stack_overflow_after_ms = Some(x))
                    .is_some(),
                "nested_panic" => parse_bool(v).map(|b| c.nested_panic = b).is_some(),
                "fault_in" => FaultIn::parse(v).map(|f| c.fault_in = Some(f)).is_some(),
                "panic_holding" => (v == "locks")
                    .then(|| c.panic_holding_locks = true)
                    .is_some(),
                "qemu_exit" => parse_bool(v).map(|b| c.qemu_exit = b).is_some(),
                "timer_tolerance_pct" => v.parse().map(|x| c.timer_tolerance_pct = x).is_ok(),
                "idle" => match v {
                    "halt" => Some(true),
                    "spin" => Some(false),
                    _ => None,
                }
                .map(|b| c.idle_halt = b)
                .is_some(),
                "tsc_khz" => match v.parse::<u64>() {
                    Ok(k) if k >= 1000 => {
                        c.tsc_khz = Some(k);
                        true
                    }
                    _ => false,
                },
                "log" => v.parse().map(|l| c.log_level = l).is_ok(),
                "drill" => match v {
                    "off" => Some(capture::drill::DrillPolicy::Off),
                    "keyed" => Some(capture::drill::DrillPolicy::Keyed),
                    "insecure" => Some(capture::drill::DrillPolicy::Insecure),
                    _ => None,
                }
                .map(|d| c.drill = d)
                .is_some(),
                "key" => match capture::Key::from_hex(v) {
                    Ok(k) => {
                        c.key = Some(k);
                        true
                    }
                    Err(e) => {
                        // Never echo the value: it is (part of) a secret.
                        let _ = write!(c.warnings, "bad key: {e}; ");
                        continue;
                    }
                },
                // Keys for other layers (e.g. a Linux-style console=) are not ours.
                _ => true,
            };
            if !ok {
                let _ = write!(c.warnings, "bad {k}={v}; ");
            }
        }
        if let Some((addr, prefix)) = static_addr {
            c.net = NetConfig::Static {
                addr,
                prefix,
                gateway: gateway.unwrap_or(Some(c.collector.0)),
            };
        } else if let (NetConfig::Static { gateway: g, .. }, Some(new)) = (&mut c.net, gateway) {
            *g = new;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_qemu_user_networking() {
        let c = Config::parse("");
        assert_eq!(c.collector, ([10, 0, 2, 2], 7373));
        assert_eq!(
            c.net,
            NetConfig::Static {
                addr: [10, 0, 2, 15],
                prefix: 24,
                gateway: Some([10, 0, 2, 2])
            }
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn parses_every_documented_key() {
        let c = Config::parse(
            "console=ttyS0 collector=192.168.1.5:9000 ip=192.168.1.77/16 gw=192.168.1.1 \
             drill_port=9001 panic_action=poweroff selfcheck_ms=250 heartbeat_ms=0 \
             deadline_ms=1500 unload_deadline_ms=5000 panic_after=0.25 fault_after=3 \
             stack_overflow_after=4 \
             nested_panic=1 qemu_exit=yes timer_tolerance_pct=20 log=debug tsc_khz=2500000 idle=spin",
        );
        assert_eq!(c.collector, ([192, 168, 1, 5], 9000));
        assert_eq!(
            c.net,
            NetConfig::Static {
                addr: [192, 168, 1, 77],
                prefix: 16,
                gateway: Some([192, 168, 1, 1])
            }
        );
        assert_eq!(c.drill_port, 9001);
        assert_eq!(c.panic_action, PanicAction::Poweroff);
        assert_eq!((c.selfcheck_ms, c.heartbeat_ms), (250, 0));
        assert_eq!((c.deadline_ms, c.unload_deadline_ms), (1500, 5000));
        assert_eq!(c.panic_after_ms, Some(250));
        assert_eq!(c.fault_after_ms, Some(3000));
        assert_eq!(c.stack_overflow_after_ms, Some(4000));
        assert!(c.nested_panic && c.qemu_exit);
        for (v, want) in [
            ("ship", Some(FaultIn::Step(capture::panic::Step::Ship))),
            ("freeze", Some(FaultIn::Step(capture::panic::Step::Freeze))),
            ("end", Some(FaultIn::Step(capture::panic::Step::End))),
            ("nested", Some(FaultIn::Nested)),
            ("bogus", None),
        ] {
            let c = Config::parse(&format!("fault_in={v}"));
            assert_eq!(c.fault_in, want, "{v}");
        }
        assert_eq!(c.timer_tolerance_pct, 20);
        assert_eq!(c.tsc_khz, Some(2_500_000));
        assert!(!c.idle_halt);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert!(c.warnings.is_empty(), "{}", c.warnings);
    }

    #[test]
    fn bad_values_keep_defaults_and_warn() {
        let c = Config::parse(
            "collector=10.0.2:80 panic_after=1.2345 ip=300.1.1.1 panic_action=explode",
        );
        assert_eq!(
            c,
            Config {
                warnings: c.warnings.clone(),
                ..Config::default()
            }
        );
        for k in ["collector", "panic_after", "ip", "panic_action"] {
            assert!(c.warnings.contains(k), "no warning for {k}: {}", c.warnings);
        }
    }

    #[test]
    fn fleet_key_is_parsed_and_a_bad_one_is_not_echoed() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let c = Config::parse(&format!("key={hex}"));
        assert_eq!(c.key.as_ref().map(|k| k.as_bytes()[1]), Some(0x11));
        let c = Config::parse("key=secretsecret");
        assert!(c.key.is_none());
        assert!(c.warnings.contains("bad key"), "{}", c.warnings);
        assert!(!c.warnings.contains("secretsecret"), "{}", c.warnings);
    }

    #[test]
    fn drill_policy_is_keyed_by_default_and_insecure_or_off_on_request() {
        use capture::drill::DrillPolicy;
        assert_eq!(Config::parse("").drill, DrillPolicy::Keyed);
        assert_eq!(Config::parse("drill=insecure").drill, DrillPolicy::Insecure);
        assert_eq!(Config::parse("drill=off").drill, DrillPolicy::Off);
        let c = Config::parse("drill=yes");
        assert_eq!(c.drill, DrillPolicy::Keyed);
        assert!(c.warnings.contains("bad drill=yes"), "{}", c.warnings);
    }

    #[test]
    fn dhcp_and_gateway_none() {
        assert_eq!(Config::parse("ip=dhcp").net, NetConfig::Dhcp);
        assert_eq!(
            Config::parse("gw=none").net,
            NetConfig::Static {
                addr: [10, 0, 2, 15],
                prefix: 24,
                gateway: None
            }
        );
    }

    #[test]
    fn seconds_accept_up_to_millisecond_precision() {
        assert_eq!(parse_seconds_ms("2"), Some(2000));
        assert_eq!(parse_seconds_ms("0.5"), Some(500));
        assert_eq!(parse_seconds_ms(".05"), Some(50));
        assert_eq!(parse_seconds_ms("1.0001"), None);
        assert_eq!(parse_seconds_ms("x"), None);
        assert_eq!(parse_seconds_ms(""), None);
    }
}
