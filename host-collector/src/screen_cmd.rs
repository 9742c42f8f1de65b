//! `import-screen SHOT.png…`: store the crash records that panic-screen screenshots carry
//! (`host_collector::screen`), as if they had arrived over the network.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use host_collector::store::Store;

use crate::{print, read_key, Ctx};

#[derive(Args, Debug)]
pub(crate) struct ImportScreenArgs {
    /// PNG screenshots of canary panic screens (the QR code bottom-right holds the record).
    #[arg(required = true, value_name = "SHOT.png")]
    files: Vec<PathBuf>,
    /// Fleet key file (64 hex digits or 32 raw bytes): with a fleet key the canary tags the
    /// screen's code as it tags its frames, and an untagged or wrongly tagged code is refused
    /// [default: `key_file` from --config].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Print JSON (one object per file).
    #[arg(long)]
    json: bool,
}

/// Imports every file; a file that gives no record is reported and the others still go in.
/// Exit 1 if any file gave no record.
pub(crate) fn import_screen(ctx: &Ctx, a: ImportScreenArgs) -> Result<()> {
    let key = read_key(a.key_file.as_ref().or(ctx.file.key_file.as_ref()))?;
    let mut store = Store::open(&ctx.db, ctx.file.sync.unwrap_or_default())?;
    let mut done = Vec::new();
    let mut failed = 0;
    for f in &a.files {
        match host_collector::screen::import(&mut store, f, key.as_ref()) {
            Ok(i) => done.push(i),
            Err(e) => {
                eprintln!("import-screen: {e}");
                failed += 1;
            }
        }
    }
    if a.json {
        print(&(serde_json::to_string_pretty(&done)? + "\n"))?;
    } else {
        for i in &done {
            print(&format!(
                "{}: record {}:{} ({} bytes{}) {}\n",
                i.file,
                i.boot_id,
                i.seq,
                i.record_len,
                if i.compressed { ", compressed" } else { "" },
                if i.outcome == "duplicate" {
                    "already stored (duplicate)"
                } else {
                    "stored"
                }
            ))?;
        }
    }
    if failed > 0 {
        return Err(crate::Exit(1).into());
    }
    Ok(())
}
