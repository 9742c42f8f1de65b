//! `tail` and `prune`: the reading and deleting commands with the most logic of their own.

use std::io::IsTerminal;

use anyhow::Result;
use clap::Args;

use crate::cli_util::{usage, Exit};
use crate::{print, Ctx, PruneArgs, TailArgs};
use host_collector::listing::{records_table, Style};
use host_collector::store::{Filter, RecordRef, RefError, Store};
use host_collector::timefmt::TimeStyle;

/// How `list` and `tail` draw their tables.
#[derive(Args, Debug, Clone)]
pub(crate) struct ViewArgs {
    /// Every column in full (the default table fits 80 columns).
    #[arg(long)]
    wide: bool,
    /// Times in UTC (default: local time).
    #[arg(long)]
    utc: bool,
}

impl ViewArgs {
    pub(crate) fn style(&self, legend: bool) -> Style {
        Style {
            time: TimeStyle::new(self.utc),
            wide: self.wide,
            legend,
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }
}

/// A record named on the command line (`show`): an ID, or any unique prefix of a boot id
/// with an optional `:SEQ`. No such record: the message, exit 1; a bad or ambiguous
/// reference: exit 2.
pub(crate) fn record_ref(store: &Store, s: &str) -> Result<RecordRef> {
    match store.resolve_ref(s) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => {
            eprintln!("No crash records found matching {s}.");
            Err(Exit(1).into())
        }
        Err(RefError::Store(e)) => Err(e.into()),
        Err(e) => Err(usage(e)),
    }
}
use host_collector::util::{now_us, parse_duration};

pub(crate) fn tail(ctx: &Ctx, a: TailArgs) -> Result<()> {
    let mut store = ctx.open_existing()?;
    let interval = parse_duration(&a.interval).map_err(usage)?;
    let deadline = a
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(usage)?
        .map(|d| std::time::Instant::now() + d);
    let style = a.view.style(false);
    // Prints the records matching `filter`; returns how many and the last id.
    let emit = |store: &Store, filter: &Filter| -> Result<(u64, Option<i64>)> {
        if a.json {
            let recs = store.records(filter, false)?;
            for r in &recs {
                print(&(serde_json::to_string(r)? + "\n"))?;
            }
            Ok((recs.len() as u64, recs.last().map(|r| r.id)))
        } else {
            let rows = store.list(filter)?;
            if !rows.is_empty() {
                print(&records_table(&rows, &style))?;
            }
            Ok((rows.len() as u64, rows.last().map(|r| r.id)))
        }
    };
    let mut after = store.max_id()?.unwrap_or(0);
    if a.lines > 0 {
        // The id just before the last N records (ids have gaps after `prune`).
        let last_n = store.list(&Filter {
            limit: Some(a.lines),
            reverse: true,
            ..Filter::default()
        })?;
        let from = last_n.last().map(|r| r.id - 1).unwrap_or(after);
        if let (_, Some(last)) = emit(
            &store,
            &Filter {
                after_id: Some(from),
                ..Filter::default()
            },
        )? {
            after = after.max(last);
        }
    }
    let mut seen = 0u64;
    loop {
        let filter = Filter {
            after_id: Some(after),
            limit: a.count.map(|c| c - seen),
            ..Filter::default()
        };
        if store.is_snapshot() {
            // Read-only access and no WAL index: open again to see what was committed since.
            store = ctx.open_existing()?;
        }
        let (n, last) = emit(&store, &filter)?;
        seen += n;
        if let Some(last) = last {
            after = last;
        }
        if a.count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            eprintln!("tail: timed out after {seen} new record(s)");
            return Err(Exit(1).into());
        }
        std::thread::sleep(interval);
    }
}

pub(crate) fn prune(ctx: &Ctx, a: PruneArgs) -> Result<()> {
    use host_collector::util::{before_us, format_time_us};
    // Count first (read-only), so that a refused or dry run changes nothing.
    let store = ctx.open_existing()?;
    let total = store.count()?;
    let cutoff = match &a.older_than {
        Some(d) => {
            let dur = parse_duration(d).map_err(usage)?;
            let c = before_us(now_us(), dur)
                .ok_or_else(|| usage(host_collector::util::TimeArgError::TooLong(d.clone())))?;
            Some(c)
        }
        None => None,
    };
    let n = match (cutoff, a.keep) {
        (Some(c), _) => store.count_before(c)?,
        (None, Some(k)) => total.saturating_sub(k),
        (None, None) => total,
    };
    let what = match (cutoff, a.keep) {
        (Some(c), _) => format!("received before {}", format_time_us(c)),
        (None, Some(k)) => format!("all but the newest {k}"),
        (None, None) => "all of them".to_string(),
    };
    let s = if total == 1 { "" } else { "s" };
    if n == total && n > 0 && !a.all && !a.dry_run {
        return Err(usage(format!(
            "prune would delete every record ({n} of {total}, {what}); add --all if that is \
             what you want"
        )));
    }
    if a.dry_run {
        return print(&format!(
            "Would delete {n} of {total} crash record{s} ({what}).\n"
        ));
    }
    drop(store);
    let mut store = Store::open_existing(&ctx.db, ctx.file.sync.unwrap_or_default())?;
    let deleted = match (cutoff, a.keep) {
        (Some(c), _) => store.prune_before(c)?,
        (None, Some(k)) => store.prune_keep(k)?,
        (None, None) => store.prune_keep(0)?,
    };
    print(&format!(
        "Deleted {deleted} of {total} crash record{s} ({what}).\n"
    ))
}
