//! `drill` and `load`: the commands that send traffic to canaries and collectors rather than
//! read a store.

use std::io::IsTerminal;

use anyhow::{Context, Result};

use crate::cli_util::{usage, Exit};
use crate::{print, read_key, Ctx, DrillArgs, LoadArgs};
use host_collector::util::parse_duration;

pub(crate) fn drill(_ctx: &Ctx, a: DrillArgs) -> Result<()> {
    use host_collector::drill::{send, DrillOutcome};
    let key = read_key(a.key_file.as_ref())?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let wait = std::time::Duration::from_millis(a.wait_ms);
    let outcome = send(a.addr, key.as_ref(), nonce, a.delay_ms, wait)
        .with_context(|| format!("sending the drill to {}", a.addr))?;
    let then = "The canary panics and ships a crash record of kind \"drill\" to its collector.";
    print(&match outcome {
        DrillOutcome::Sent => format!(
            "Sent drill (nonce {nonce:#018x}) to {}. {then} (Without a key the canary acts on it \
             only with drill=insecure.)\n",
            a.addr
        ),
        DrillOutcome::Answered(c) => format!(
            "Sent drill (nonce {nonce:#018x}) to {}, answering its challenge {} of boot {}. \
             {then}\n",
            a.addr,
            c.counter,
            c.boot_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        DrillOutcome::NoChallenge => format!(
            "Sent drill (nonce {nonce:#018x}) to {}, but no challenge came back within {} ms: \
             a canary of this version was not reached, has another key, or has drills off (an \
             older canary acts on the first frame).\n",
            a.addr, a.wait_ms
        ),
    })
}

pub(crate) fn load(_ctx: &Ctx, a: LoadArgs) -> Result<()> {
    use host_collector::load::{run, validate, LoadConfig};
    let key = read_key(a.key_file.as_ref())?;
    let deadline = parse_duration(&a.deadline).map_err(usage)?;
    let cfg = LoadConfig {
        target: a.target,
        canaries: a.canaries,
        records: a.records,
        loss: a.loss,
        dup: a.dup,
        reorder: a.reorder,
        seed: a.seed,
        key,
        deadline,
        initial_rto_ms: a.rto_ms,
        max_rto_ms: a
            .max_rto_ms
            .unwrap_or_else(|| a.rto_ms.saturating_mul(16).min(2000))
            .max(a.rto_ms),
        schema: None,
        max_sockets: a.max_sockets,
        heartbeat_every: a
            .heartbeats
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(usage)?,
        heartbeat_for: parse_duration(&a.heartbeat_for).map_err(usage)?,
        record_deadline: a
            .record_deadline
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(usage)?,
    };
    validate(&cfg).map_err(usage)?;
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(a.records);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} acked, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb
    });
    let progress = bar
        .clone()
        .map(|pb| Box::new(move |n: u64| pb.set_position(n)) as Box<dyn Fn(u64) + Send>);
    let r = run(cfg, progress)?;
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if a.json {
        print(&(serde_json::to_string(&r)? + "\n"))?;
    } else {
        let shared = if r.sockets < r.canaries {
            format!(
                " (sharing {} sockets; descriptor limit {})",
                r.sockets, r.fd_limit
            )
        } else {
            String::new()
        };
        print(&format!(
            "canaries:        {}{shared}\n\
             records:         {} sent, {} acked ({} as duplicate), {} rejected, {} lost\n\
             throughput:      {:.0} records/s over {:.2} s\n\
             panic-to-ack:    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             datagrams:       {} sent, {} dropped out, {} dropped in, {} retransmit rounds\n\
             record size:     {} bytes encoded\n",
            r.canaries,
            r.sent,
            r.acked,
            r.acked_duplicate,
            r.rejected,
            r.lost,
            r.records_per_s,
            r.elapsed_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.datagrams_sent,
            r.datagrams_dropped_out,
            r.datagrams_dropped_in,
            r.retransmit_rounds,
            r.encoded_record_len,
        ))?;
    }
    if r.acked + r.rejected < r.records {
        eprintln!(
            "load: {} of {} records were never acked",
            r.records - r.acked - r.rejected,
            r.records
        );
        return Err(Exit(4).into());
    }
    Ok(())
}
