//! The overview of a date range, read from the monthly files' hourly rollup.

// The overview of a date range, read from the monthly files' hourly rollup: totals, percentiles from the daily
// histograms, a series per model, key or backend for the charts, and the top models and keys.

use std::collections::{BTreeMap, HashMap};

use chrono::{Days, NaiveDate};
use serde_json::{json, Value};

use super::files::{has_table, Files, MonthFile, QueryError};
use crate::report::Range;
use crate::usage::sqlite::rollup::{self, bucket_value, Delta, Group, Histogram, Sums};

/// Series drawn in a chart; the rest are added up as "other".
pub const SERIES: usize = 7;
/// Rows in the top models and keys tables.
pub const TOP: usize = 10;

/// What the charts are stacked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Model,
    Key,
    Backend,
}

impl By {
    pub fn parse(text: &str) -> Option<By> {
        match text {
            "model" => Some(By::Model),
            "key" => Some(By::Key),
            "backend" => Some(By::Backend),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            By::Model => "model",
            By::Key => "key",
            By::Backend => "backend",
        }
    }

    fn of(self, g: &Group) -> &str {
        match self {
            By::Model => &g.model,
            By::Key => &g.key,
            By::Backend => &g.backend,
        }
    }
}

/// The width of a chart's bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Hour,
    Day,
}

impl Step {
    /// Hours for a range of up to two days, else days.
    pub fn for_range(range: Range) -> Step {
        if (range.to - range.from).num_days() < 2 {
            Step::Hour
        } else {
            Step::Day
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        match text {
            "hour" => Some(Step::Hour),
            "day" => Some(Step::Day),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Hour => "hour",
            Step::Day => "day",
        }
    }
}

/// Nearest-rank percentiles of a histogram, in ms (within 5% of the exact ones: see [`rollup::bucket`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p99: Option<i64>,
}

/// One chart series: a name (empty: not recorded) and its requests and tokens per step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    pub requests: Vec<i64>,
    pub tokens: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct Overview {
    pub range: Range,
    pub step: Step,
    pub by: By,
    pub total: Sums,
    pub latency: Percentiles,
    pub first_token: Percentiles,
    /// Every step of the range (`YYYY-MM-DD` or `YYYY-MM-DDTHH`), oldest first.
    pub labels: Vec<String>,
    /// The largest [`SERIES`] by requests, then "other" when there are more.
    pub series: Vec<Series>,
    pub models: Vec<(String, Sums)>,
    pub keys: Vec<(String, Sums)>,
}

/// Takes the rollup rows (and histogram counts) of a range as they are read.
pub trait Visit {
    fn group(&mut self, group: &Group, sums: &Sums);
    fn ms(&mut self, _kind: i64, _bucket: usize, _count: i64) {}
}

/// What the files of a range hold, added up.
struct Acc {
    step: Step,
    by: By,
    /// (step label, series name) -> sums.
    cells: HashMap<(String, String), Sums>,
    models: HashMap<String, Sums>,
    keys: HashMap<String, Sums>,
    total: Sums,
    /// (kind, bucket) -> count.
    ms: BTreeMap<(i64, usize), i64>,
}

impl Visit for Acc {
    fn group(&mut self, g: &Group, s: &Sums) {
        let (step, by) = (self.step, self.by);
        let label = match step {
            Step::Hour => g.hour.as_str(),
            Step::Day => g.hour.get(..10).unwrap_or(&g.hour),
        };
        let cell = (label.to_owned(), by.of(g).to_owned());
        self.cells.entry(cell).or_default().merge(s);
        self.models.entry(g.model.clone()).or_default().merge(s);
        self.keys.entry(g.key.clone()).or_default().merge(s);
        self.total.merge(s);
    }

    fn ms(&mut self, kind: i64, bucket: usize, count: i64) {
        *self.ms.entry((kind, bucket)).or_default() += count;
    }
}

/// The overview of `range` from the files in `files`.
pub fn overview(files: &Files, range: Range, step: Step, by: By) -> Result<Overview, QueryError> {
    let mut acc = Acc {
        step,
        by,
        cells: HashMap::new(),
        models: HashMap::new(),
        keys: HashMap::new(),
        total: Sums::default(),
        ms: BTreeMap::new(),
    };
    visit(files, range, &mut acc)?;
    Ok(finish(acc, range, step, by))
}

/// Hands every rollup row of `range` (and the records the rollup does not hold yet, summed) to `to`.
pub fn visit(files: &Files, range: Range, to: &mut dyn Visit) -> Result<(), QueryError> {
    let (lower, upper) = bounds(range);
    for month in range.months() {
        if let Some(file) = files.open(month)? {
            read_month(&file, &lower, &upper, to).map_err(QueryError::read(&file.path))?;
        }
    }
    Ok(())
}

/// `Hour >= lower AND Hour < upper` is "the date the hour starts with is in the range".
fn bounds(range: Range) -> (String, String) {
    (
        range.from.format("%Y-%m-%d").to_string(),
        format!("{}~", range.to.format("%Y-%m-%d")),
    )
}

/// The rollup of one file, plus the records it does not hold yet (all of them in a file without a rollup).
fn read_month(
    file: &MonthFile,
    lower: &str,
    upper: &str,
    acc: &mut dyn Visit,
) -> rusqlite::Result<()> {
    let c = &file.connection;
    if !has_table(c, "records")? {
        return Ok(());
    }
    // One read transaction: the rollup and the records after what it covers, as of the same moment.
    let tx = c.unchecked_transaction()?;
    let covered = if has_table(c, rollup::HOURS)? {
        read_rollup(c, lower, upper, acc)?;
        rollup::covered(c)?
    } else {
        0
    };
    let mut tail = Delta::default();
    rollup::read_after(c, covered, &mut |f| {
        if f.hour() >= lower && f.hour() < upper {
            tail.add(f);
        }
    })?;
    for (g, s) in tail.groups() {
        acc.group(g, s);
    }
    for (_, kind, histogram) in tail.histograms() {
        for (bucket, count) in histogram.counts() {
            acc.ms(*kind, bucket, i64::from(count));
        }
    }
    tx.finish()
}

fn read_rollup(
    c: &rusqlite::Connection,
    lower: &str,
    upper: &str,
    acc: &mut dyn Visit,
) -> rusqlite::Result<()> {
    // Cache writes, kept in a table of their own (only groups that have any), join their group's row.
    let (cache_writes, join) = match has_table(c, rollup::CACHE_WRITES)? {
        true => (
            "ifnull(w.CacheWriteTokens, 0)",
            "LEFT JOIN rollup_cache_writes w USING (Hour, Model, KeyName, Backend)",
        ),
        false => ("0", ""),
    };
    let sql = format!(
        "SELECT Hour, Model, KeyName, Backend, Requests, Errors, PromptTokens, CompletionTokens, \
         TotalTokens, CachedTokens, ReasoningTokens, NoUsage, Estimated, CostNanos, Costed, {cache_writes} \
         FROM rollup_hours {join} WHERE Hour >= ?1 AND Hour < ?2"
    );
    let mut select = c.prepare(&sql)?;
    let mut rows = select.query([lower, upper])?;
    while let Some(r) = rows.next()? {
        let group = Group {
            hour: r.get(0)?,
            model: r.get(1)?,
            key: r.get(2)?,
            backend: r.get(3)?,
        };
        let sums = Sums {
            requests: r.get(4)?,
            errors: r.get(5)?,
            prompt: r.get(6)?,
            completion: r.get(7)?,
            total: r.get(8)?,
            cached: r.get(9)?,
            reasoning: r.get(10)?,
            cache_write: r.get(15)?,
            no_usage: r.get(11)?,
            estimated: r.get(12)?,
            cost_nanos: r.get(13)?,
            costed: r.get(14)?,
        };
        acc.group(&group, &sums);
    }
    let sql = "SELECT Kind, Counts FROM rollup_ms WHERE Day >= ?1 AND Day < ?2";
    let mut select = c.prepare(sql)?;
    let mut rows = select.query([lower, upper])?;
    while let Some(r) = rows.next()? {
        let kind: i64 = r.get(0)?;
        let counts: Vec<u8> = r.get(1)?;
        for (bucket, count) in Histogram::from_blob(&counts).counts() {
            acc.ms(kind, bucket, i64::from(count));
        }
    }
    Ok(())
}

fn finish(acc: Acc, range: Range, step: Step, by: By) -> Overview {
    let labels = labels(range, step);
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut names: HashMap<&str, i64> = HashMap::new();
    for ((_, name), s) in &acc.cells {
        *names.entry(name).or_default() += s.requests;
    }
    let mut ranked: Vec<(&str, i64)> = names.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<&str> = ranked.iter().take(SERIES).map(|(n, _)| *n).collect();
    let mut series: Vec<Series> = shown
        .iter()
        .map(|name| empty_series(name, labels.len()))
        .collect();
    if ranked.len() > SERIES {
        series.push(empty_series("other", labels.len()));
    }
    for ((label, name), s) in &acc.cells {
        let Some(&i) = index.get(label.as_str()) else {
            continue;
        };
        let at = shown.iter().position(|n| n == name).unwrap_or(SERIES);
        if let Some(line) = series.get_mut(at) {
            line.requests[i] += s.requests;
            line.tokens[i] += s.total;
        }
    }
    let percentiles = |kind| percentiles(acc.ms.iter().filter(|((k, _), _)| *k == kind));
    Overview {
        range,
        step,
        by,
        total: acc.total,
        latency: percentiles(rollup::LATENCY),
        first_token: percentiles(rollup::FIRST_TOKEN),
        labels,
        series,
        models: top(acc.models),
        keys: top(acc.keys),
    }
}

fn empty_series(name: &str, len: usize) -> Series {
    Series {
        name: name.to_owned(),
        requests: vec![0; len],
        tokens: vec![0; len],
    }
}

fn top(map: HashMap<String, Sums>) -> Vec<(String, Sums)> {
    let mut rows: Vec<(String, Sums)> = map.into_iter().collect();
    rows.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
    rows.truncate(TOP);
    rows
}

/// Every step of the range, oldest first.
fn labels(range: Range, step: Step) -> Vec<String> {
    let mut labels = Vec::new();
    let mut day: NaiveDate = range.from;
    while day <= range.to {
        let date = day.format("%Y-%m-%d").to_string();
        match step {
            Step::Day => labels.push(date),
            Step::Hour => labels.extend((0..24).map(|h| format!("{date}T{h:02}"))),
        }
        match day.checked_add_days(Days::new(1)) {
            Some(next) => day = next,
            None => break,
        }
    }
    labels
}

/// Nearest-rank p50 and p99 over histogram buckets in ascending order.
fn percentiles<'a>(buckets: impl Iterator<Item = (&'a (i64, usize), &'a i64)>) -> Percentiles {
    let buckets: Vec<(usize, i64)> = buckets.map(|((_, b), n)| (*b, *n)).collect();
    let n: i64 = buckets.iter().map(|(_, c)| c).sum();
    let at = |p: i64| {
        let rank = (p * n + 99) / 100;
        let mut seen = 0;
        for (bucket, count) in &buckets {
            seen += count;
            if seen >= rank.max(1) {
                return Some(bucket_value(*bucket));
            }
        }
        None
    };
    Percentiles {
        p50: at(50),
        p99: at(99),
    }
}

impl Overview {
    pub fn to_json(&self) -> Value {
        let rows = |rows: &[(String, Sums)]| -> Vec<Value> {
            rows.iter()
                .map(|(name, s)| sums_json(Some(name), s))
                .collect()
        };
        json!({
            "from": self.range.from.format("%Y-%m-%d").to_string(),
            "to": self.range.to.format("%Y-%m-%d").to_string(),
            "step": self.step.name(),
            "by": self.by.name(),
            "total": sums_json(None, &self.total),
            "latency_ms": {"p50": self.latency.p50, "p99": self.latency.p99},
            "first_token_ms": {"p50": self.first_token.p50, "p99": self.first_token.p99},
            "percentiles_approximate": true,
            "labels": self.labels,
            "series": self.series.iter().map(|s| json!({
                "name": null_if_empty(&s.name), "requests": s.requests, "total_tokens": s.tokens,
            })).collect::<Vec<_>>(),
            "models": rows(&self.models),
            "keys": rows(&self.keys),
        })
    }
}

fn null_if_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    }
}

/// A group's figures as JSON (cost in dollars, `null` when no record had one).
pub fn sums_json(name: Option<&str>, s: &Sums) -> Value {
    let mut v = json!({
        "requests": s.requests,
        "errors": s.errors,
        "prompt_tokens": s.prompt,
        "completion_tokens": s.completion,
        "total_tokens": s.total,
        "cached_tokens": s.cached,
        "cache_write_tokens": s.cache_write,
        "reasoning_tokens": s.reasoning,
        "estimated": s.estimated,
        "cost_usd": cost(s),
    });
    if let Some(name) = name {
        v["name"] = null_if_empty(name);
    }
    v
}

/// The known costs' sum in dollars; `None` when no record had a cost.
pub fn cost(s: &Sums) -> Option<f64> {
    (s.costed > 0).then(|| s.cost_nanos as f64 / 1e9)
}

#[cfg(test)]
mod tests;
