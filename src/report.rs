//! `gpt-api usage`: requests, tokens, errors and latency percentiles summed from a [`Source`] of usage records
//! (`source`): the monthly usage files, read-only (`sqlite`), or the shared PostgreSQL table (`postgres`).

mod postgres;
mod range;
mod render;
mod source;
mod sqlite;

pub use crate::money::Usd;
pub use postgres::SharedTable;
pub use range::Range;
pub use source::{Fields, Source};
pub use sqlite::MonthFiles;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use clap::{Args, ValueEnum};

use crate::config::Config;
use crate::usage::ship::PostgresError;

/// Print requests, tokens, errors, p50/p99 latency and cost from the usage records.
#[derive(Debug, Clone, Args)]
#[command(long_about = "\
Print requests, tokens, errors, p50/p99 latency and cost from the usage records (the monthly
<dir>/record_YYYYMM.db files the gateway writes).

The files are opened read-only (safe while a gateway writes them); no record file or directory is
created (SQLite may leave the empty -wal/-shm companions it needs to read a WAL file).
Only the files of the months the range touches are read; a month without a file has no records.
Several --dir add up, e.g. the directories of the gateways behind one load balancer.

Dates: a record's date is the YYYY-MM-DD written at the start of its Time, i.e. the local date of
the gateway that served it, in the UTC offset it had then; records are not converted to one time
zone. --from and --to are inclusive. Default range: the current month (this machine's local date).

Columns: requests; prompt_tokens, completion_tokens, total_tokens (sums of the recorded counts, a
missing count adds 0); no_usage (records without any token count, errors included); errors
(Status >= 400 or an Error recorded); p50_ms, p99_ms (nearest-rank percentiles of LatencyMs over
the group's records that have one, errors included); estimated (records whose token counts are
the gateway's estimate, the backend having reported none; they count in the token sums); cost_usd
(the sum of the recorded costs in US dollars, 4 decimals in the table, 6 in CSV and JSON; a
record without a cost, i.e. its model has no price or its file was written before costs were
recorded, adds nothing; a group without any cost shows - in the table, empty in CSV, null in
JSON); cached_tokens, cache_write_tokens (input tokens read from and written to the backends' prompt
caches, both already counted in prompt_tokens). Grouped by key, a record without a key name (or from a file written before the KeyName
column existed) is in the group \"-\" (null in JSON, empty in CSV); likewise a record without a
backend. Rows are sorted by their group values; table and JSON add a total.

The bill of each gateway key for a month: gpt-api usage --by key --month 2026-12 [--format csv].

With --postgres, the records of every gateway come from the shared PostgreSQL table they ship to
(usage.postgres_url) instead of the files: --postgres URL reads that database, --postgres alone the
usage.postgres_url of the gateway config (--config, default config/config.yaml), which keeps the
password out of the command line. The same ranges, groupings and figures; a record's date is its
Day column, the date written at the start of its Time, as in the files. --by node groups by the
gateway that served each record (cluster.node; records written before the Node column existed
are \"-\" in the files, and carry the shipping node's name in PostgreSQL).

Stored values are shown safely: in the table a group value is cut to 64 characters (ending in …)
and control characters are escaped (\\n, \\t, \\u001b, NUL as \\u0000); CSV has the whole value with
the same escapes except line breaks, which it quotes, and a value starting with =, +, - or @ gets
a leading ' so that a spreadsheet does not take it for a formula; JSON has the whole value, escaped.")]
pub struct UsageArgs {
    /// Read the `usage.dir` of this gateway config (default: the top-level --config, config/config.yaml).
    ///
    /// The whole config is loaded and must be valid (every `${VAR}` set); --dir needs no config.
    /// A relative usage.dir is taken from the current directory, as the gateway does.
    #[arg(long, value_name = "PATH", conflicts_with = "dir")]
    pub config: Option<PathBuf>,

    /// A directory of record_YYYYMM.db files; repeat to add several gateways' records up.
    #[arg(long, value_name = "DIR")]
    pub dir: Vec<PathBuf>,

    /// Read the shared PostgreSQL table instead of the files: at URL, or without one at the config's
    /// usage.postgres_url.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "", conflicts_with = "dir")]
    pub postgres: Option<String>,

    /// One calendar month, YYYY-MM (default: the current month).
    #[arg(long, value_name = "YYYY-MM", conflicts_with_all = ["from", "to"])]
    pub month: Option<String>,

    /// First date of the range, YYYY-MM-DD, inclusive.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub from: Option<String>,

    /// Last date of the range, YYYY-MM-DD, inclusive (default: today).
    #[arg(long, value_name = "YYYY-MM-DD", requires = "from")]
    pub to: Option<String>,

    /// Group by these, comma-separated, in this order (default: no grouping, one total row).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIELD,...")]
    pub by: Vec<Dim>,

    /// Output: an aligned table, CSV (header line, RFC 4180 quoting) or one JSON object.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// What rows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dim {
    /// The record's date, YYYY-MM-DD.
    Day,
    /// The model as requested.
    Model,
    /// The client that answered (or was tried last).
    Backend,
    /// The name of the gateway key the caller used.
    Key,
    /// The gateway node that served it (`cluster.node`).
    Node,
}

impl Dim {
    /// The column name in every output format.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Day => "day",
            Dim::Model => "model",
            Dim::Backend => "backend",
            Dim::Key => "key",
            Dim::Node => "node",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Why no report was printed. Every message names the flag, file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--month {0:?}: expected a month YYYY-MM, e.g. 2026-11")]
    BadMonth(String),
    #[error("--{flag} {value:?}: expected a date YYYY-MM-DD, e.g. 2026-11-01")]
    BadDate { flag: &'static str, value: String },
    #[error("--from {from} is after --to {to}")]
    Reversed { from: NaiveDate, to: NaiveDate },
    #[error("cannot load the config {} (--dir DIR reads the records without a config):\n{errors}", path.display())]
    Config { path: PathBuf, errors: String },
    #[error("usage directory {} does not exist", .0.display())]
    NoDir(PathBuf),
    #[error("usage directory {} is not a directory", .0.display())]
    NotADir(PathBuf),
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("--postgres without a URL: the config {} has no usage.postgres_url", .0.display())]
    NoPostgresUrl(PathBuf),
    #[error("{0}")]
    Postgres(#[from] PostgresError),
}

/// The figures of one group (or of everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Records without any token count.
    pub no_usage: u64,
    pub errors: u64,
    pub p50_ms: Option<u32>,
    pub p99_ms: Option<u32>,
    /// Records whose token counts are the gateway's estimate (the backend reported none).
    pub estimated: u64,
    /// The sum of the known costs; `None` when no record of the group has one.
    pub cost_usd: Option<Usd>,
    /// Input tokens read from, and written to, the backends' prompt caches (both part of `prompt_tokens`).
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
}

/// One output row: the group's values in `--by` order (`None`: not recorded) and its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub key: Vec<Option<String>>,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub range: Range,
    pub by: Vec<Dim>,
    /// The files read, in reading order.
    pub files: Vec<PathBuf>,
    /// Sorted by key. Without grouping, exactly one row (with an empty key), even with no records.
    pub rows: Vec<GroupRow>,
    pub total: Stats,
}

/// Running sums of a group. Latencies are kept (as u32: 4 bytes a record) for the exact percentiles.
#[derive(Debug, Clone, Default)]
struct Acc {
    stats: Stats,
    latencies: Vec<u32>,
}

impl Acc {
    fn add(&mut self, f: Fields) {
        let s = &mut self.stats;
        s.requests += 1;
        s.prompt_tokens = s.prompt_tokens.saturating_add(f.prompt.unwrap_or(0));
        s.completion_tokens = s
            .completion_tokens
            .saturating_add(f.completion.unwrap_or(0));
        s.total_tokens = s.total_tokens.saturating_add(f.total.unwrap_or(0));
        if f.prompt.is_none() && f.completion.is_none() && f.total.is_none() {
            s.no_usage += 1;
        }
        if f.status.is_some_and(|status| status >= 400) || f.has_error {
            s.errors += 1;
        }
        if let Some(ms) = f.latency_ms {
            self.latencies
                .push(u32::try_from(ms.max(0)).unwrap_or(u32::MAX));
        }
        s.estimated += u64::from(f.estimated);
        s.cached_tokens = s.cached_tokens.saturating_add(f.cached.unwrap_or(0));
        s.cache_write_tokens = s
            .cache_write_tokens
            .saturating_add(f.cache_write.unwrap_or(0));
        s.cost_usd = add_cost(
            s.cost_usd,
            f.cost_usd.filter(|c| c.is_finite()).map(Usd::from_f64),
        );
    }

    fn merge(&mut self, other: &Acc) {
        let (s, o) = (&mut self.stats, &other.stats);
        s.requests += o.requests;
        s.prompt_tokens = s.prompt_tokens.saturating_add(o.prompt_tokens);
        s.completion_tokens = s.completion_tokens.saturating_add(o.completion_tokens);
        s.total_tokens = s.total_tokens.saturating_add(o.total_tokens);
        s.no_usage += o.no_usage;
        s.errors += o.errors;
        s.estimated += o.estimated;
        s.cached_tokens = s.cached_tokens.saturating_add(o.cached_tokens);
        s.cache_write_tokens = s.cache_write_tokens.saturating_add(o.cache_write_tokens);
        s.cost_usd = add_cost(s.cost_usd, o.cost_usd);
        self.latencies.extend_from_slice(&other.latencies);
    }

    fn finish(mut self) -> Stats {
        self.latencies.sort_unstable();
        self.stats.p50_ms = nearest_rank(&self.latencies, 50);
        self.stats.p99_ms = nearest_rank(&self.latencies, 99);
        self.stats
    }
}

/// A sum of costs that stays unknown until a known cost is added: unknown costs add nothing.
fn add_cost(sum: Option<Usd>, cost: Option<Usd>) -> Option<Usd> {
    match (sum, cost) {
        (Some(sum), Some(cost)) => Some(sum.saturating_add(cost)),
        (sum, cost) => sum.or(cost),
    }
}

/// The nearest-rank `p`th percentile of `sorted`: the smallest value with at least p% of the values at or below it.
pub fn nearest_rank(sorted: &[u32], p: usize) -> Option<u32> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Runs the subcommand: the rendered report, or why there is none. `default_config` is the top-level
/// `--config`; `today` decides the default range.
pub fn run(
    args: &UsageArgs,
    default_config: &Path,
    today: NaiveDate,
) -> Result<String, ReportError> {
    let range = Range::from_args(
        args.month.as_deref(),
        args.from.as_deref(),
        args.to.as_deref(),
        today,
    )?;
    let config_path = args.config.as_deref().unwrap_or(default_config);
    let load = || {
        Config::load(config_path).map_err(|errors| ReportError::Config {
            path: config_path.to_path_buf(),
            errors: errors.to_string(),
        })
    };
    let mut by = Vec::new();
    for dim in &args.by {
        if !by.contains(dim) {
            by.push(*dim);
        }
    }
    let report = match args.postgres.as_deref() {
        Some("") => {
            let config = load()?;
            let url = config.usage.postgres_url.as_ref();
            let url = url.ok_or_else(|| ReportError::NoPostgresUrl(config_path.to_path_buf()))?;
            summarize(&mut SharedTable::connect(url.expose())?, range, &by)?
        }
        Some(url) => summarize(&mut SharedTable::connect(url)?, range, &by)?,
        None if args.dir.is_empty() => collect(&[load()?.usage.dir], range, &by)?,
        None => collect(&args.dir, range, &by)?,
    };
    Ok(match args.format {
        Format::Table => render::table(&report),
        Format::Csv => render::csv(&report),
        Format::Json => render::json(&report),
    })
}

/// The report as `--format json` prints it (also the admin page's `/api/usage`).
pub fn json(report: &Report) -> String {
    render::json(report)
}

/// Reads the records of `range` from the month files in `dirs` and groups them by `by`.
pub fn collect(dirs: &[PathBuf], range: Range, by: &[Dim]) -> Result<Report, ReportError> {
    summarize(&mut MonthFiles::new(dirs)?, range, by)
}

/// Reads the records of `range` from `source` and groups them by `by`.
pub fn summarize(source: &mut dyn Source, range: Range, by: &[Dim]) -> Result<Report, ReportError> {
    let mut groups: BTreeMap<Vec<Option<String>>, Acc> = BTreeMap::new();
    if by.is_empty() {
        groups.insert(Vec::new(), Acc::default());
    }
    let files = source.read(range, by, &mut |key, fields| {
        groups.entry(key).or_default().add(fields);
    })?;
    let mut total = Acc::default();
    for acc in groups.values() {
        total.merge(acc);
    }
    let rows = groups
        .into_iter()
        .map(|(key, acc)| GroupRow {
            key,
            stats: acc.finish(),
        })
        .collect();
    Ok(Report {
        range,
        by: by.to_vec(),
        files,
        rows,
        total: total.finish(),
    })
}

#[cfg(test)]
mod tests;
