//! The fleet side of the command line: `serve`'s liveness, event and metrics flags, and
//! `canaries`.

use std::net::SocketAddr;

use anyhow::Result;
use clap::Args;

use crate::cli_util::usage;
use crate::{print_rows, Ctx};
use host_collector::config::FileConfig;
use host_collector::liveness::{effective_state, Canary, State};
use host_collector::server::ServeConfig;
use host_collector::util::{hex, now_us};

/// The default `--metrics` address: loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9373";

#[derive(Args, Debug)]
pub(crate) struct FleetArgs {
    /// A canary is `silent` after N heartbeat intervals without a heartbeat (its interval is
    /// measured from its heartbeats) [default: 3].
    #[arg(long, value_name = "N")]
    silence: Option<u32>,
    /// Run CMD through the system shell (`sh -c` on Unix, `cmd /C` on Windows) for each event
    /// (a stored record, a canary's state change) with the event as one JSON object on stdin;
    /// at most 4 at once, each killed after 10 s.
    #[arg(long, value_name = "CMD")]
    on_event: Option<String>,
    /// POST each event as JSON to this http:// URL (retried with backoff; a full queue of
    /// 1024 drops and counts).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// At most N "crash stored" log lines a second; the records beyond them are summed up in
    /// one line a second (ids, count). 0: a line for every record [default: 100].
    #[arg(long, value_name = "N")]
    event_log_rate: Option<u32>,
    /// Serve /metrics (Prometheus text format) and /healthz over HTTP on ADDR
    /// [default when given without ADDR: 127.0.0.1:9373].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_METRICS)]
    metrics: Option<SocketAddr>,
    /// Drill every live canary once per DURATION (e.g. 1d), one at a time, spread over the
    /// period; a drill without its record within --drill-deadline makes it drill-failed.
    /// Off by default.
    #[arg(long, value_name = "DURATION")]
    drill_every: Option<String>,
    /// How long a scheduled drill may take to bring its record [default: 60s].
    #[arg(long, value_name = "DURATION", requires = "drill_every")]
    drill_deadline: Option<String>,
    /// Send scheduled drills to each canary's IP at this port, instead of the port it sends
    /// from minus one (for canaries behind a NAT that changes their port).
    #[arg(long, value_name = "PORT", requires = "drill_every")]
    drill_port: Option<u16>,
}

impl FleetArgs {
    pub(crate) fn apply(&self, f: &FileConfig, cfg: &mut ServeConfig) -> Result<()> {
        if let Some(n) = self.silence.or(f.silence) {
            if n == 0 {
                return Err(usage("--silence 0: give at least 1 (heartbeat intervals)"));
            }
            cfg.liveness.silence = n;
        }
        cfg.events.hook = self.on_event.clone().or_else(|| f.on_event.clone());
        cfg.events.webhook = self.webhook.clone().or_else(|| f.webhook.clone());
        if let Some(n) = self.event_log_rate.or(f.event_log_rate) {
            cfg.events.log_rate = n;
        }
        if let Some(u) = &cfg.events.webhook {
            if !u.starts_with("http://") {
                return Err(usage(format!(
                    "--webhook {u:?}: give an http:// URL (this build has no TLS; put a \
                     TLS-terminating proxy in front of an https endpoint)"
                )));
            }
        }
        cfg.metrics = self.metrics.or(f.metrics);
        let dur = |flag: &str, v: &str| {
            host_collector::util::parse_duration(v)
                .map_err(|e| usage(format!("--{flag}: {e}")))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(usage(format!("--{flag} 0: give a duration above 0")))
                    } else {
                        Ok(d)
                    }
                })
        };
        if let Some(every) = self.drill_every.as_ref().or(f.drill_every.as_ref()) {
            let deadline = match self.drill_deadline.as_ref().or(f.drill_deadline.as_ref()) {
                Some(d) => dur("drill-deadline", d)?,
                None => std::time::Duration::from_secs(60),
            };
            cfg.drills = Some(host_collector::server::drills::DrillSchedule {
                every: dur("drill-every", every)?,
                deadline,
                port: self.drill_port,
            });
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub(crate) struct CanariesArgs {
    /// Only canaries in this state (repeat or comma-separate for several).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STATE")]
    state: Vec<State>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// No header and no footer (for scripts).
    #[arg(long)]
    no_legend: bool,
}

/// One row of `canaries --json`.
#[derive(Debug, serde::Serialize)]
struct CanaryRow {
    address: String,
    state: State,
    /// The stored state when `serve` has not (yet) written that a quiet canary is silent.
    stored_state: State,
    boot_id: String,
    arch: String,
    first_seen: String,
    last_seen: String,
    last_seen_us: i64,
    state_since: String,
    interval_ms: u64,
    silent_after_ms: u64,
    heartbeat_seq: Option<u32>,
    uptime_ms: u64,
    crashes: u64,
    last_record_id: Option<i64>,
    crashed_boot_id: Option<String>,
}

fn row(c: Canary, now: i64) -> CanaryRow {
    use host_collector::util::format_time_us as t;
    CanaryRow {
        state: effective_state(&c, now),
        stored_state: c.state,
        boot_id: hex(&c.boot_id),
        arch: host_collector::convert::arch_code_name(c.arch),
        first_seen: t(c.first_seen_us),
        last_seen: t(c.last_seen_us),
        last_seen_us: c.last_seen_us,
        state_since: t(c.state_since_us),
        interval_ms: c.interval_ms,
        silent_after_ms: c.silent_after_ms,
        heartbeat_seq: c.heartbeat_seq,
        uptime_ms: c.uptime_ms,
        crashes: c.crashes,
        last_record_id: c.last_record_id,
        crashed_boot_id: c.crashed_boot.map(|b| hex(&b)),
        address: c.address,
    }
}

/// "4s ago", "3m ago", "2h ago", "5d ago".
pub(crate) fn ago(us: i64, now: i64) -> String {
    let s = now.saturating_sub(us).max(0) / 1_000_000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn ms_short(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

pub(crate) fn canaries(ctx: &Ctx, a: CanariesArgs) -> Result<()> {
    let store = ctx.open_existing()?;
    let now = now_us();
    let rows: Vec<CanaryRow> = store
        .liveness()?
        .into_iter()
        .map(|c| row(c, now))
        .filter(|r| a.state.is_empty() || a.state.contains(&r.state))
        .collect();
    let legend = !a.no_legend;
    print_rows(&rows, a.json, "No canaries found.", |rows| {
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.address.clone(),
                    r.state.to_string(),
                    r.boot_id.chars().take(12).collect(),
                    ago(r.last_seen_us, now),
                    ms_short(r.interval_ms),
                    r.crashes.to_string(),
                ]
            })
            .collect();
        let mut out = host_collector::output::table(
            &[
                "ADDRESS",
                "STATE",
                "BOOT",
                "LAST SEEN",
                "INTERVAL",
                "CRASHES",
            ],
            &body,
            legend,
        );
        if legend {
            let mut by: Vec<String> = Vec::new();
            for s in State::ALL {
                let n = rows.iter().filter(|r| r.state == s).count();
                if n > 0 {
                    by.push(format!("{n} {s}"));
                }
            }
            out.push_str(&format!(
                "\n{} canar{}: {}.\n",
                rows.len(),
                if rows.len() == 1 { "y" } else { "ies" },
                by.join(", ")
            ));
        }
        out
    })
}
