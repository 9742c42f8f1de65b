//! `host-collector`: the command line. Errors here are `anyhow`; everything below is in the
//! library modules.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod cli_util;
mod cmds;
mod fleet;
mod inspect;
mod pager;
mod screen_cmd;
mod traffic;

use cli_util::{describe, usage, Exit, Usage};
use host_collector::config::{FileConfig, DEFAULT_LISTEN};
use host_collector::output;
use host_collector::store::{Filter, Store, Sync};
use host_collector::util::{now_us, parse_duration, parse_time_arg};

// The receiver allocates each record and the writer thread frees it; mimalloc handles that
// cross-thread pattern without the arena-lock contention seen with glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  nothing found: `list` (also --json, --canaries, --rejected, --group), `canaries` or
     `show` matched nothing;
     `tail --count N --timeout D` saw fewer than N new records
  2  bad usage: unknown flag, missing or malformed argument, a value out of range (a time,
     a duration, a count beyond what this machine can do), `serve --db :memory:`, `prune`
     that would delete every record without --all
  3  failure: database, network, configuration or I/O error (the message says which)
  4  `load` finished with records that were never acked";

const ABOUT: &str = "canary host collector: receives crash records from canary VMs over UDP, \
stores them (SQLite, or PostgreSQL shared by several collectors), shows them, and load-tests the \
path.";

const LONG_ABOUT: &str = "\
canary host collector: receives crash records from canary VMs over UDP, stores them in SQLite
(or in PostgreSQL, where several collectors share one store), shows them, and load-tests the path.

A canary that panics sends its crash record as CRC-checked UDP datagrams; `serve` checks each
datagram (CRC, then the fleet key if one is set), reassembles the record, commits it to the
database and only then acks it, so a record that was acked is stored. The other commands read
the same database, also while `serve` runs.

Typical use:
  host-collector serve --listen 192.168.100.1:7373 --db /var/lib/canary/collector.db
  host-collector list                     # one line per crash record
  host-collector show 12                  # everything in record 12 (or BOOTID:SEQ)
  host-collector tail                     # follow new records as they arrive
  host-collector stats                    # what serve received, rejected and why
  host-collector drill 192.168.100.7:7374 # make a canary panic on purpose
  host-collector import-screen shot.png  # a record from a panic-screen screenshot's QR code
  host-collector load --canaries 100 --records 100000   # load-test a running collector

The database is --db, or `db` in --config FILE, or $CANARY_DB, or ./canary.db: a file path
(SQLite) or postgres://USER@HOST[:PORT]/DB (the password from --db-password-file FILE or
$PGPASSWORD, never in the URL on the command line).
Logging: -v (info), -vv (debug), -vvv (trace), or RUST_LOG=host_collector=debug.";

#[derive(Parser, Debug)]
#[command(name = "host-collector", version, about = ABOUT, long_about = LONG_ABOUT,
    after_help = EXIT_CODES, propagate_version = true)]
struct Cli {
    /// Database to use: an SQLite file, or postgres://USER@HOST[:PORT]/DBNAME for a fleet
    /// database, with TLS ?sslmode=require&sslrootcert=CA.pem for a private CA (every certificate
    /// is verified; sslmode=disable for none), &sslcert=CERT.pem&sslkey=KEY.pem to log in by
    /// client certificate (PKCS#8 key, mode 600) [env: CANARY_DB] [default: ./canary.db, or
    /// `db` from --config].
    #[arg(long, global = true, value_name = "PATH|URL")]
    db: Option<PathBuf>,
    /// File whose first line is the PostgreSQL password (else $PGPASSWORD); never put it in
    /// the --db URL.
    #[arg(long, global = true, value_name = "FILE")]
    db_password_file: Option<PathBuf>,
    /// Configuration file (TOML; see configs/host-collector.toml). Flags win over it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More logging on stderr: -v info, -vv debug, -vvv trace. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Do not pipe long tables into a pager ($SYSTEMD_PAGER, $PAGER or less) on a terminal.
    #[arg(long, global = true)]
    no_pager: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Receive crash records over UDP and store them (runs until SIGINT/SIGTERM).
    #[command(
        long_about = "Receive crash records over UDP and store them; runs until SIGINT or \
SIGTERM, then commits what it holds and exits 0.

Each datagram is checked (length, magic, version, CRC-32, then the HMAC tag when a fleet key is \
set) before anything else reads it; bad datagrams are dropped and counted (see `stats`). \
Complete records are committed in batches and acked only after their batch is committed; a \
record that was already stored is acked again as a duplicate, never stored twice. A record \
with a schema newer than this collector reads is acked as rejected so its sender stops, and \
is kept in the `rejections` table.

Listens on 127.0.0.1:7373 unless --listen says otherwise.",
        after_help = EXIT_CODES
    )]
    Serve(ServeArgs),
    /// List crash records (or, with --canaries, the canaries seen by heartbeat).
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Show one crash record in full: message, location, registers, backtrace, panic path, log.
    #[command(after_help = EXIT_CODES)]
    Show(inspect::ShowArgs),
    /// Keep debug files by build id (`symbols add IMAGE…`, `symbols list`) for `show`.
    #[command(after_help = EXIT_CODES)]
    Symbols(inspect::SymbolsArgs),
    /// Store the crash records that panic-screen screenshots (PNG) carry in their QR code,
    /// exactly as if they had arrived over the network (same key: never stored twice).
    #[command(name = "import-screen", after_help = EXIT_CODES)]
    ImportScreen(screen_cmd::ImportScreenArgs),
    /// Export crash records as one JSON array or as newline-delimited JSON.
    #[command(after_help = EXIT_CODES)]
    Export(ExportArgs),
    /// Follow new crash records as they are stored (polls the database).
    #[command(after_help = EXIT_CODES)]
    Tail(TailArgs),
    /// Show what the collector received, stored, rejected and why (persisted in the database).
    #[command(after_help = EXIT_CODES)]
    Stats(StatsArgs),
    /// Delete old crash records.
    #[command(after_help = EXIT_CODES)]
    Prune(PruneArgs),
    /// Make a canary panic on purpose by sending it a Drill frame.
    #[command(after_help = EXIT_CODES)]
    Drill(DrillArgs),
    /// List canaries by liveness: alive, silent, crashed, recovered, drill-failed.
    #[command(after_help = EXIT_CODES)]
    Canaries(fleet::CanariesArgs),
    /// Load-test a running collector with simulated canaries.
    #[command(
        long_about = "Load-test a running collector with N simulated canaries. Each canary is a \
real capture sender on its own UDP socket (RLIMIT_NOFILE is raised to the hard limit; if that \
is still too low, canaries share sockets and the output says so). M records in total are \
sent; each canary sends its share one after another, retransmitting until acked.

--loss, --dup and --reorder inject faults on both directions with a deterministic RNG \
(--seed), so a run can be repeated exactly. Latency is measured from the simulated panic \
(the record is built) to the ack.",
        after_help = EXIT_CODES
    )]
    Load(LoadArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// UDP address to listen on [default: 127.0.0.1:7373].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Fleet key file (64 hex digits or 32 raw bytes): frames must carry a valid tag.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Commit durability: normal (crash-safe) or full (power-loss safe) [default: normal].
    #[arg(long, value_enum)]
    sync: Option<Sync>,
    /// Most partial records per source address [default: 64].
    #[arg(long, value_name = "N")]
    max_pending_per_source: Option<usize>,
    /// Most partial records in total [default: 4096].
    #[arg(long, value_name = "N")]
    max_pending_total: Option<usize>,
    /// Most records per commit [default: 4096].
    #[arg(long, value_name = "N")]
    batch_max: Option<usize>,
    /// Retention: delete records received longer ago than this (e.g. 90d), checked at start
    /// and every `retention_interval` (default 1 min).
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
    /// Retention: keep at most the newest N records.
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,
    /// Retention: delete the oldest records while the stored data exceeds this many bytes
    /// (SQLite: the database's pages in use; PostgreSQL: the records' data, see
    /// docs/collector.md).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// Check the database with `PRAGMA integrity_check` (thorough, slow on big databases)
    /// instead of `quick_check` before serving.
    #[arg(long)]
    integrity_check: bool,
    #[command(flatten)]
    fleet: fleet::FleetArgs,
}

#[derive(Args, Debug, Clone)]
struct TimeFilter {
    /// Only records received at or after this time: RFC 3339 with any offset
    /// (2026-11-26T10:00:00+01:00), a local date or time (2026-11-26, "2026-11-26 10:00"),
    /// today, yesterday, or a duration ago (30min, 2h, -7d).
    #[arg(short = 'S', long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,
    /// Only records received at or before this time (same forms as --since).
    #[arg(short = 'U', long, value_name = "TIME", allow_hyphen_values = true)]
    until: Option<String>,
}

impl TimeFilter {
    fn filter(&self) -> Result<Filter> {
        let now = now_us();
        Ok(Filter {
            since_us: self
                .since
                .as_deref()
                .map(|s| parse_time_arg(s, now))
                .transpose()
                .map_err(usage)?,
            until_us: self
                .until
                .as_deref()
                .map(|s| parse_time_arg(s, now))
                .transpose()
                .map_err(usage)?,
            ..Filter::default()
        })
    }
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    time: TimeFilter,
    /// Show at most N records (the newest N).
    #[arg(short = 'n', long, value_name = "N")]
    lines: Option<u64>,
    /// Newest first.
    #[arg(short, long)]
    reverse: bool,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// No header and no footer (for scripts).
    #[arg(long)]
    no_legend: bool,
    /// List canaries by their last heartbeat instead of crash records.
    #[arg(long)]
    canaries: bool,
    /// List records that were rejected (e.g. schema too new) instead of stored ones.
    #[arg(long, conflicts_with = "canaries")]
    rejected: bool,
    /// Only records of VMs or physical hosts whose name starts with NAME, ignoring case (the
    /// Hyper-V KVP VirtualMachineName, PhysicalHostNameFullyQualified or PhysicalHostName the
    /// record carries): --host hv07 matches HV07 and hv07.corp.example.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["canaries", "rejected"])]
    host: Option<String>,
    #[command(flatten)]
    view: cmds::ViewArgs,
    /// One row per group of identical crashes (same kind, message and location), with how
    /// many, how many boots, and when first and last seen.
    #[arg(long, conflicts_with_all = ["canaries", "rejected"])]
    group: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportFormat {
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Ndjson,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    format: ExportFormat,
    #[command(flatten)]
    time: TimeFilter,
    /// Include the raw postcard bytes as hex (`raw_hex`).
    #[arg(long)]
    raw: bool,
    /// Write to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TailArgs {
    /// Print the last N stored records first.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    lines: u64,
    /// Exit after N new records (exit 1 if --timeout passes first). Default: follow forever.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Give up after this long (e.g. 30s) when --count is set.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// How often to poll the database.
    #[arg(long, value_name = "DURATION", default_value = "250ms")]
    interval: String,
    /// One JSON object per line (full records) instead of table rows.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    view: cmds::ViewArgs,
}

#[derive(Args, Debug)]
struct StatsArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Per panic-path step and per host (the record's source address): records, p50, p99
    /// and max of the step's time in microseconds.
    #[arg(long)]
    steps: bool,
    /// With --steps: only this host (an address as `list` shows it, without the port).
    #[arg(long, requires = "steps", value_name = "HOST")]
    host: Option<String>,
}

#[derive(Args, Debug)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true)))]
struct PruneArgs {
    /// Delete records received longer ago than this (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", group = "what", conflicts_with = "keep")]
    older_than: Option<String>,
    /// Keep only the newest N records.
    #[arg(long, value_name = "N", group = "what")]
    keep: Option<u64>,
    /// Allow deleting every record (alone: delete every record).
    #[arg(long, group = "what")]
    all: bool,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct DrillArgs {
    /// The canary's drill address (IP:PORT).
    addr: SocketAddr,
    /// Fleet key file: the drill is authenticated with it and answers the canary's challenge.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Ask the canary to wait this many milliseconds before panicking.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u32,
    /// With a key: how long to wait for the canary's challenge.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    wait_ms: u64,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Collector address to load.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    target: SocketAddr,
    /// Simulated canaries, each with its own socket and boot id.
    #[arg(long, value_name = "N", default_value_t = 10)]
    canaries: u32,
    /// Records in total, spread evenly over the canaries.
    #[arg(long, value_name = "M", default_value_t = 1000)]
    records: u64,
    /// Drop probability for each datagram, both directions (0.0-1.0).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    loss: f64,
    /// Duplication probability for each outgoing datagram.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    dup: f64,
    /// Probability that an outgoing datagram is held back and sent after the next one.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    reorder: f64,
    /// Seed of the fault-injection RNG and the boot ids.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Fleet key file: frames are authenticated with it.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// One deadline for the whole run (e.g. 60s): records not acked by then count as lost,
    /// and `load` ends (exit 4).
    #[arg(long, value_name = "DURATION", default_value = "5min")]
    deadline: String,
    /// First retransmit timeout in milliseconds; it doubles each round up to 16x (at most 2 s)
    /// or --max-rto-ms.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    rto_ms: u32,
    /// Longest retransmit timeout (the appliance's panic path: --rto-ms 20 --max-rto-ms 400).
    #[arg(long, value_name = "MS")]
    max_rto_ms: Option<u32>,
    /// Each record's own deadline from its panic, as the appliance's `deadline_ms` (e.g. 3s);
    /// a record not acked by then counts as lost. --deadline still bounds the whole run.
    #[arg(long, value_name = "DURATION")]
    record_deadline: Option<String>,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Use at most N UDP sockets; canaries share them beyond that (as when RLIMIT_NOFILE is
    /// too low for one socket per canary).
    #[arg(long, value_name = "N")]
    max_sockets: Option<u32>,
    /// Each canary heartbeats this often (e.g. 5s) for --heartbeat-for before it sends its
    /// records, then stops: alive, then crashed (or silent, with --records 0).
    #[arg(long, value_name = "DURATION")]
    heartbeats: Option<String>,
    /// How long the canaries heartbeat before their records.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        requires = "heartbeats"
    )]
    heartbeat_for: String,
}

fn init_logging(verbose: u8) {
    // Event lines (a stored record, a canary's state change) are INFO: `serve` logs them
    // unless RUST_LOG says otherwise.
    let default = match verbose {
        0 => "warn,host_collector::events=info",
        1 => "info,host_collector=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("host-collector: error: {}", describe(&e));
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(3)
            }
        }
    }
}

struct Ctx {
    file: FileConfig,
    db: PathBuf,
}

impl Ctx {
    fn new(cli: &Cli) -> Result<Ctx> {
        let file = match &cli.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let db = cli
            .db
            .clone()
            .or_else(|| file.db.clone())
            .or_else(|| std::env::var_os("CANARY_DB").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("canary.db"));
        if let Some(url) = cli.db.as_deref().and_then(host_collector::store::pg_url) {
            if host_collector::store::pg::url_has_password(url) {
                return Err(usage(
                    "--db: a password in the URL would show in the process list and shell \
                     history; remove it and give it with --db-password-file FILE (or \
                     db_password_file in --config, or $PGPASSWORD)",
                ));
            }
        }
        if let Some(f) = cli
            .db_password_file
            .as_ref()
            .or(file.db_password_file.as_ref())
        {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --db-password-file {}", f.display()))?;
            let pw = text.lines().next().unwrap_or("").to_string();
            host_collector::store::set_password(Some(pw));
        }
        Ok(Ctx { file, db })
    }

    /// Opens the database read-only for reading commands: a missing or empty file is an
    /// error, never a new database, and read access is enough.
    fn open_existing(&self) -> Result<Store> {
        Ok(Store::open_read(&self.db)?)
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli)?;
    if cli.no_pager {
        pager::disable();
    }
    match cli.cmd {
        Cmd::Serve(a) => serve(&ctx, a),
        Cmd::List(a) => list(&ctx, a),
        Cmd::Show(a) => inspect::show(&ctx, a),
        Cmd::Symbols(a) => inspect::symbols(&ctx, a),
        Cmd::ImportScreen(a) => screen_cmd::import_screen(&ctx, a),
        Cmd::Export(a) => export(&ctx, a),
        Cmd::Tail(a) => cmds::tail(&ctx, a),
        Cmd::Stats(a) => stats(&ctx, a),
        Cmd::Prune(a) => cmds::prune(&ctx, a),
        Cmd::Drill(a) => traffic::drill(&ctx, a),
        Cmd::Load(a) => traffic::load(&ctx, a),
        Cmd::Canaries(a) => fleet::canaries(&ctx, a),
    }
}

fn print(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `list`'s output for any kind of row: JSON (an empty array still prints) or a table; no rows
/// means exit 1, with `empty` on stderr for the table (coredumpctl's habit).
fn print_rows<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    empty: &str,
    table: impl FnOnce(&[T]) -> String,
) -> Result<()> {
    if json {
        print(&(serde_json::to_string_pretty(rows)? + "\n"))?;
    } else if rows.is_empty() {
        eprintln!("{empty}");
    } else {
        return pager::page(&table(rows));
    }
    if rows.is_empty() {
        Err(Exit(1).into())
    } else {
        Ok(())
    }
}

fn list(ctx: &Ctx, a: ListArgs) -> Result<()> {
    let store = ctx.open_existing()?;
    let legend = !a.no_legend;
    if a.canaries {
        return print_rows(&store.canaries()?, a.json, "No canaries seen.", |r| {
            output::canaries_table(r, legend)
        });
    }
    if a.rejected {
        return print_rows(
            &store.rejections()?,
            a.json,
            "No rejected records found.",
            |r| output::rejections_table(r, legend),
        );
    }
    let mut filter = a.time.filter()?;
    filter.host = a.host.clone();
    filter.limit = a.lines;
    // `-n N` means the newest N: query newest first, then restore the requested order.
    filter.reverse = a.lines.is_some() || a.reverse;
    let style = a.view.style(legend);
    if a.group {
        // Groups of everything matching; -n N: the N groups seen last.
        filter.limit = None;
        let mut groups = host_collector::listing::group(&store.list(&filter)?);
        if let Some(n) = a.lines {
            let skip = groups
                .len()
                .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
            groups.drain(..skip);
        }
        if a.reverse {
            groups.reverse();
        }
        return print_rows(&groups, a.json, "No crash records found.", |g| {
            host_collector::listing::groups_table(g, &style)
        });
    }
    let mut rows = store.list(&filter)?;
    if a.lines.is_some() && !a.reverse {
        rows.reverse();
    }
    print_rows(&rows, a.json, "No crash records found.", |r| {
        host_collector::listing::records_table(r, &style)
    })
}

fn export(ctx: &Ctx, a: ExportArgs) -> Result<()> {
    let store = ctx.open_existing()?;
    let mut recs = store.records(&a.time.filter()?, a.raw)?;
    // The seven steps, as `show` gives them: the record's own with its follow-up's.
    host_collector::followup_view::merge_into(&store, &mut recs)?;
    let text = match a.format {
        ExportFormat::Json => serde_json::to_string_pretty(&recs)? + "\n",
        ExportFormat::Ndjson => {
            let mut s = String::new();
            for r in &recs {
                s.push_str(&serde_json::to_string(r)?);
                s.push('\n');
            }
            s
        }
    };
    match a.output {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display())),
        None => print(&text),
    }
}

fn stats(ctx: &Ctx, a: StatsArgs) -> Result<()> {
    if a.steps {
        return inspect::stats_steps(ctx, a.json, a.host.as_deref());
    }
    let store = ctx.open_existing()?;
    let s = store.stats()?;
    if a.json {
        print(&(serde_json::to_string_pretty(&s)? + "\n"))
    } else {
        print(&output::stats_view(&s))
    }
}

fn read_key(path: Option<&PathBuf>) -> Result<Option<capture::Key>> {
    path.map(|p| {
        capture::Key::read_file(p).with_context(|| {
            format!(
                "reading fleet key {} (64 hex digits or 32 raw bytes)",
                p.display()
            )
        })
    })
    .transpose()
}

/// Registers SIGINT and SIGTERM at once (so one arriving while the database opens is not
/// lost) and returns a future that resolves on the first of them.
#[cfg(unix)]
fn shutdown_signal(rt: &tokio::runtime::Runtime) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT"),
            _ = term.recv() => tracing::info!("SIGTERM"),
        }
    })
}

/// Windows: Ctrl-C, Ctrl-Break and the console window closing, registered at once; the
/// future resolves on the first of them.
#[cfg(windows)]
fn shutdown_signal(rt: &tokio::runtime::Runtime) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
    let _guard = rt.enter();
    let mut int = ctrl_c().context("watching Ctrl-C")?;
    let mut brk = ctrl_break().context("watching Ctrl-Break")?;
    let mut close = ctrl_close().context("watching the console closing")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("Ctrl-C"),
            _ = brk.recv() => tracing::info!("Ctrl-Break"),
            _ = close.recv() => tracing::info!("console closed"),
        }
    })
}

fn serve(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    use host_collector::server::{Collector, ServeConfig, TEST_COMMIT_DELAY_ENV};
    let f = &ctx.file;
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid literal"));
    let mut cfg = ServeConfig::new(listen, ctx.db.clone());
    cfg.key = read_key(a.key_file.as_ref().or(f.key_file.as_ref()))?;
    cfg.sync = a.sync.or(f.sync).unwrap_or_default();
    if let Some(v) = a.max_pending_per_source.or(f.max_pending_per_source) {
        cfg.max_pending_per_source = v;
    }
    if let Some(v) = a.max_pending_total.or(f.max_pending_total) {
        cfg.max_pending_total = v;
    }
    if let Some(v) = a.batch_max.or(f.batch_max) {
        cfg.batch_max = v;
    }
    if let Some(v) = f.queue_capacity {
        cfg.queue_capacity = v;
    }
    if let Some(v) = f.recv_buffer_bytes {
        cfg.recv_buffer_bytes = v;
    }
    host_collector::store::check_durable_name(&cfg.db).map_err(usage)?;
    let dur = |flag: &str, v: &str| parse_duration(v).map_err(|e| usage(format!("{flag}: {e}")));
    if let Some(v) = f.queue_max_bytes {
        cfg.queue_max_bytes = v;
    }
    if let Some(v) = f.reassembly_max_bytes {
        cfg.reassembly_max_bytes = v;
        cfg.reassembly_max_bytes_per_source = v / 8;
    }
    if let Some(v) = f.reassembly_max_bytes_per_source {
        cfg.reassembly_max_bytes_per_source = v;
    }
    if let Some(v) = f.rejected_max_bytes {
        cfg.rejected_max_bytes = v;
    }
    if let Some(v) = f.wal_max_bytes {
        cfg.wal_max_bytes = v;
    }
    if let Some(v) = a.max_age.as_ref().or(f.max_age.as_ref()) {
        let d = dur("max_age", v)?;
        if host_collector::util::duration_us(d).is_none() {
            return Err(usage(host_collector::util::TimeArgError::TooLong(
                v.clone(),
            )));
        }
        cfg.retention.max_age = Some(d);
    }
    cfg.retention.max_records = a.max_records.or(f.max_records);
    cfg.retention.max_bytes = a.max_bytes.or(f.max_bytes);
    if let Some(v) = &f.retention_interval {
        cfg.retention_interval = dur("retention_interval", v)?.max(Duration::from_millis(100));
    }
    cfg.integrity_check = a.integrity_check || f.integrity_check.unwrap_or(false);
    a.fleet.apply(f, &mut cfg)?;
    if let Ok(ms) = std::env::var(TEST_COMMIT_DELAY_ENV) {
        let ms: u64 = ms
            .parse()
            .with_context(|| format!("{TEST_COMMIT_DELAY_ENV}={ms:?} is not a number"))?;
        cfg.commit_delay = Some(Duration::from_millis(ms));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shutdown = shutdown_signal(&rt)?;
    let collector = Collector::bind(cfg.clone())?;
    let addr = collector.local_addr()?;
    eprintln!(
        "host-collector: listening on {addr} (udp), database {}{}",
        host_collector::store::display_name(&cfg.db),
        if cfg.key.is_some() {
            ", fleet key required"
        } else {
            ""
        }
    );
    if let Some(m) = collector.metrics_addr() {
        eprintln!("host-collector: metrics on http://{m}/metrics and http://{m}/healthz");
    }
    rt.block_on(collector.run(shutdown))?;
    eprintln!("host-collector: stopped");
    Ok(())
}
