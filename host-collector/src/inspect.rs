//! `show` and `symbols`: one record resolved against the symbol store, and the store itself.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use crate::cli_util::Exit;
use crate::{print, Ctx};
use host_collector::show;
use host_collector::store::RecordRef;
use host_collector::symbols::SymbolStore;
use host_collector::util::parse_hex;

/// Where debug files are kept.
#[derive(Args, Debug, Clone)]
pub(crate) struct SymbolsDir {
    /// Symbol store directory (`<id>/debuginfo`, like debuginfod) [env: CANARY_SYMBOLS]
    /// [default: `symbols` beside the database].
    #[arg(long = "symbols", value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
}

impl SymbolsDir {
    fn store(&self, ctx: &Ctx) -> SymbolStore {
        let dir = self
            .dir
            .clone()
            .or_else(|| std::env::var_os("CANARY_SYMBOLS").map(PathBuf::from))
            .unwrap_or_else(|| {
                ctx.db
                    .parent()
                    .map(|p| p.join("symbols"))
                    .unwrap_or_else(|| PathBuf::from("symbols"))
            });
        SymbolStore::new(dir)
    }
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    /// Record ID (from `list`) or BOOTID:SEQ (boot id in hex). Default: the newest record.
    id: Option<String>,
    /// Print JSON instead of the human view.
    #[arg(long)]
    json: bool,
    /// Include the raw postcard bytes (hex) in --json output.
    #[arg(long, requires = "json")]
    raw: bool,
    #[command(flatten)]
    symbols: SymbolsDir,
}

pub(crate) fn show(ctx: &Ctx, a: ShowArgs) -> Result<()> {
    let store = ctx.open_existing()?;
    let r = match &a.id {
        Some(s) => crate::cmds::record_ref(&store, s)?,
        None => match store.max_id()? {
            Some(id) => RecordRef::Id(id),
            None => {
                eprintln!("No crash records found.");
                return Err(Exit(1).into());
            }
        },
    };
    let Some(mut rec) = store.get(&r, true)? else {
        eprintln!(
            "No crash records found matching {}.",
            a.id.as_deref().unwrap_or("")
        );
        return Err(Exit(1).into());
    };
    let raw = rec
        .raw_hex
        .as_deref()
        .and_then(parse_hex)
        .unwrap_or_default();
    let ext = show::ext_of(&raw, &rec.schema);
    let identity = host_collector::identity::IdentityView::of_raw(&raw, &rec.schema);
    if !a.raw {
        rec.raw_hex = None;
    }
    let mut view = show::build(rec, &ext, &a.symbols.store(ctx));
    view.identity = identity;
    host_collector::followup_view::attach(&mut view, &store, &raw)?;
    if a.json {
        print(&(serde_json::to_string_pretty(&view)? + "\n"))
    } else {
        print(&show::render(&view))
    }
}

#[derive(Args, Debug)]
pub(crate) struct SymbolsArgs {
    #[command(subcommand)]
    cmd: SymbolsCmd,
    #[command(flatten)]
    symbols: SymbolsDir,
}

#[derive(Subcommand, Debug)]
enum SymbolsCmd {
    /// Keep the debug file of each IMAGE by its id: a kernel ELF (its build id), a .efi (its
    /// CodeView GUID+age; the .pdb beside it is kept) or a .pdb.
    Add {
        /// Image or debug files (scripts/qemu-run --print-symbols prints the one of a build).
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the debug files in the store.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn symbols(ctx: &Ctx, a: SymbolsArgs) -> Result<()> {
    let store = a.symbols.store(ctx);
    match a.cmd {
        SymbolsCmd::Add { images, json } => {
            let mut added = Vec::new();
            for p in &images {
                let e = store
                    .add(p)
                    .with_context(|| format!("adding {}", p.display()))?;
                added.push(e);
            }
            if json {
                print(&(serde_json::to_string_pretty(&added)? + "\n"))
            } else {
                let mut s = String::new();
                for e in &added {
                    s.push_str(&format!(
                        "added {} {} ({} bytes) -> {}\n",
                        e.kind,
                        e.id,
                        e.debuginfo_bytes,
                        e.debuginfo.display()
                    ));
                }
                print(&s)
            }
        }
        SymbolsCmd::List { json } => {
            let all = store.list()?;
            if json {
                return print(&(serde_json::to_string_pretty(&all)? + "\n"));
            }
            if all.is_empty() {
                eprintln!("No symbols in {}.", store.dir().display());
                return Err(Exit(1).into());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.kind.clone(),
                        e.debuginfo_bytes.to_string(),
                        e.source.clone(),
                    ]
                })
                .collect();
            print(&host_collector::output::table(
                &["ID", "KIND", "BYTES", "ADDED FROM"],
                &rows,
                true,
            ))
        }
    }
}

/// `stats --steps`: p50/p99/max per panic-path step per host.
pub(crate) fn stats_steps(ctx: &Ctx, json: bool, host: Option<&str>) -> Result<()> {
    let store = ctx.open_existing()?;
    let rows = store.step_stats(host)?;
    if json {
        return print(&(serde_json::to_string_pretty(&rows)? + "\n"));
    }
    if rows.is_empty() {
        eprintln!(
            "No step times recorded{}.",
            host.map(|h| format!(" for host {h}")).unwrap_or_default()
        );
        return Err(Exit(1).into());
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                r.step.clone(),
                r.records.to_string(),
                r.p50_us.to_string(),
                r.p99_us.to_string(),
                r.max_us.to_string(),
            ]
        })
        .collect();
    print(&host_collector::output::table(
        &["HOST", "STEP", "RECORDS", "P50_US", "P99_US", "MAX_US"],
        &body,
        true,
    ))
}
