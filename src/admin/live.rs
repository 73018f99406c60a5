//! What the running gateway knows and the files do not: backends' health, keys' limits and what is left.

// What the running gateway knows and the files do not: each backend's health, each key's limits and what is left of
// them. The proxy implements [`Live`]; the admin page adds the last minutes of records to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Local};
use serde_json::{json, Value};

use super::files::{has_table, Files, QueryError};
use super::overview::{cost, sums_json, visit, Visit};
use crate::config::Config;
use crate::report::nearest_rank;
use crate::usage::sqlite::rollup::{Group, Sums};
use crate::usage::Month;

/// The window of the backends page's recent figures.
pub const RECENT: Duration = Duration::from_secs(300);

/// The running gateway, as the admin page sees it.
pub trait Live: Send + Sync {
    /// The config in force (reloads swap it).
    fn config(&self) -> Arc<Config>;
    /// Every client, in routing order (priority, then file order), with its health now.
    fn backends(&self) -> Vec<BackendState>;
    /// What each configured key has left now; empty with auth off.
    fn keys(&self, now: DateTime<Local>) -> Vec<KeyState>;
}

/// One client's live state.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendState {
    pub name: String,
    /// Its base URL, credentials masked.
    pub base_url: String,
    pub priority: i64,
    pub weight: u32,
    /// `exact` or `keyword`, and the values.
    pub match_kind: &'static str,
    pub models: Vec<String>,
    pub failures: u32,
    /// Until when it is skipped; `None`: not cooling.
    pub cooling_until: Option<DateTime<Local>>,
    pub in_flight: u64,
}

/// One key's limits and what is left of them, by this process's count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyState {
    pub name: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub budget_day_usd: Option<f64>,
    pub budget_month_usd: Option<f64>,
    pub remaining_requests: Option<u32>,
    pub remaining_tokens: Option<u64>,
    pub spent_day_usd: f64,
    pub spent_month_usd: f64,
}

/// Requests, errors and latencies of one backend over the last [`RECENT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    pub requests: i64,
    pub errors: i64,
    pub p50_ms: Option<u32>,
}

/// The newest records read for the recent figures at most: a busy gateway writes millions in five minutes, and
/// the figures of the newest 50,000 tell as much at a bounded cost (~5 ms).
pub const RECENT_RECORDS: usize = 50_000;

/// The recent figures by backend, and what they cover.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentWindow {
    pub backends: HashMap<String, Recent>,
    /// Seconds covered: [`RECENT`], or less when the newest [`RECENT_RECORDS`] go back less far.
    pub seconds: u64,
    /// The window was cut at [`RECENT_RECORDS`].
    pub sampled: bool,
}

/// The records of the last [`RECENT`] by backend, newest first, at most [`RECENT_RECORDS`] of them (read through
/// `idx_records_scan` backwards: no table row).
pub fn recent(files: &Files, now: DateTime<Local>) -> Result<RecentWindow, QueryError> {
    recent_within(files, now, RECENT_RECORDS)
}

fn recent_within(
    files: &Files,
    now: DateTime<Local>,
    most: usize,
) -> Result<RecentWindow, QueryError> {
    let since = now - chrono::Duration::from_std(RECENT).unwrap_or_default();
    let lower = since.format("%Y-%m-%dT%H:%M:%S").to_string();
    let mut months = vec![Month::of(&now.fixed_offset())];
    let first = Month::of(&since.fixed_offset());
    if first != months[0] {
        months.push(first);
    }
    let mut latencies: HashMap<String, (Recent, Vec<u32>)> = HashMap::new();
    let mut read_so_far = 0usize;
    let mut oldest: Option<String> = None;
    for month in months {
        let Some(file) = files.open(month)? else {
            continue;
        };
        let left = most - read_so_far;
        let mut read = || -> rusqlite::Result<()> {
            let c = &file.connection;
            if !has_table(c, "records")? {
                return Ok(());
            }
            let sql = format!(
                "SELECT Time, Backend, Status, Error IS NOT NULL, LatencyMs FROM records WHERE Time >= ?1 \
                 ORDER BY Time DESC LIMIT {left}"
            );
            let mut select = c.prepare(&sql)?;
            let mut rows = select.query([&lower])?;
            while let Some(r) = rows.next()? {
                read_so_far += 1;
                oldest = r.get(0)?;
                let backend: Option<String> = r.get(1)?;
                let status: Option<i64> = r.get(2)?;
                let failed: bool = r.get(3)?;
                let latency: Option<i64> = r.get(4)?;
                let entry = latencies.entry(backend.unwrap_or_default()).or_default();
                entry.0.requests += 1;
                entry.0.errors += i64::from(failed || status.is_some_and(|s| s >= 400));
                if let Some(ms) = latency {
                    entry.1.push(u32::try_from(ms.max(0)).unwrap_or(u32::MAX));
                }
            }
            Ok(())
        };
        read().map_err(QueryError::read(&file.path))?;
        if read_so_far >= most {
            break;
        }
    }
    let sampled = read_so_far >= most;
    let covered = oldest
        .filter(|_| sampled)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| (now.fixed_offset() - t).num_seconds().max(0) as u64);
    let backends = latencies
        .into_iter()
        .map(|(name, (mut recent, mut ms))| {
            ms.sort_unstable();
            recent.p50_ms = nearest_rank(&ms, 50);
            (name, recent)
        })
        .collect();
    Ok(RecentWindow {
        backends,
        seconds: covered.unwrap_or(RECENT.as_secs()),
        sampled,
    })
}

pub fn backends_json(backends: &[BackendState], window: &RecentWindow) -> Value {
    let recent = &window.backends;
    let rows: Vec<Value> = backends
        .iter()
        .map(|b| {
            let r = recent.get(&b.name).cloned().unwrap_or_default();
            json!({
                "name": b.name,
                "base_url": b.base_url,
                "priority": b.priority,
                "weight": b.weight,
                "match": b.match_kind,
                "models": b.models,
                "consecutive_failures": b.failures,
                "cooling_until": b.cooling_until.map(|t| t.to_rfc3339()),
                "in_flight": b.in_flight,
                "recent": {
                    "seconds": window.seconds,
                    "sampled": window.sampled,
                    "requests": r.requests,
                    "errors": r.errors,
                    "error_rate": rate(r.errors, r.requests),
                    "p50_ms": r.p50_ms,
                },
            })
        })
        .collect();
    json!({ "backends": rows })
}

fn rate(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Each key's figures today and this month, from the rollup of this month's file.
pub fn key_usage(
    files: &Files,
    now: DateTime<Local>,
) -> Result<HashMap<String, (Sums, Sums)>, QueryError> {
    let today = now.date_naive();
    let range = crate::report::Range {
        from: today.with_day0(0).unwrap_or(today),
        to: today,
    };
    let mut keys = KeyDays {
        today: today.format("%Y-%m-%d").to_string(),
        sums: HashMap::new(),
    };
    visit(files, range, &mut keys)?;
    Ok(keys.sums)
}

/// Sums by key: today's, and the whole range's.
struct KeyDays {
    today: String,
    sums: HashMap<String, (Sums, Sums)>,
}

impl Visit for KeyDays {
    fn group(&mut self, g: &Group, s: &Sums) {
        let entry = self.sums.entry(g.key.clone()).or_default();
        entry.1.merge(s);
        if g.hour.starts_with(&self.today) {
            entry.0.merge(s);
        }
    }
}

pub fn keys_json(keys: &[KeyState], usage: &HashMap<String, (Sums, Sums)>, auth: bool) -> Value {
    let rows: Vec<Value> = keys
        .iter()
        .map(|k| {
            let (today, month) = usage.get(&k.name).cloned().unwrap_or_default();
            let left = |budget: Option<f64>, spent: f64| budget.map(|b| (b - spent).max(0.0));
            json!({
                "name": k.name,
                "today": sums_json(None, &today),
                "month": sums_json(None, &month),
                "limits": {
                    "rpm": k.rpm,
                    "tpm": k.tpm,
                    "max_concurrent": k.max_concurrent,
                    "budget_day_usd": k.budget_day_usd,
                    "budget_month_usd": k.budget_month_usd,
                },
                "left": {
                    "requests_this_minute": k.remaining_requests,
                    "tokens_this_minute": k.remaining_tokens,
                    "budget_day_usd": left(k.budget_day_usd, k.spent_day_usd),
                    "budget_month_usd": left(k.budget_month_usd, k.spent_month_usd),
                },
                "spent": {"day_usd": k.spent_day_usd, "month_usd": k.spent_month_usd},
                "records_cost_usd": {"today": cost(&today), "month": cost(&month)},
            })
        })
        .collect();
    json!({ "auth": auth, "keys": rows })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::usage::sqlite::tests::record;
    use crate::usage::Store;

    #[test]
    fn recent_figures_cover_five_minutes_or_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let now = Local::now();
        let records: Vec<_> = (0..40)
            .map(|i| {
                let mut r = record("2026-11-26T13:05:09.123+08:00");
                r.time = (now - chrono::Duration::seconds(i * 10)).fixed_offset();
                r.backend = Some(if i % 2 == 0 { "a" } else { "b" }.into());
                r.status = if i % 4 == 0 { 500 } else { 200 };
                r.latency_ms = 100 + i as u64;
                r
            })
            .collect();
        Store::new(dir.path()).write(&records).unwrap();
        let files = Files {
            dir: dir.path().to_path_buf(),
        };
        let all = recent_within(&files, now, 1000).unwrap();
        assert!(!all.sampled);
        assert_eq!(all.seconds, 300);
        let a = &all.backends["a"];
        // 0, 10, ..., 300 s ago (the window starts at the whole second): every other one is a's.
        assert_eq!((a.requests, a.errors), (16, 8));
        assert_eq!(all.backends["b"].requests, 15);
        let newest = recent_within(&files, now, 6).unwrap();
        assert!(newest.sampled);
        assert!((49..=52).contains(&newest.seconds), "{}", newest.seconds);
        assert_eq!(
            newest.backends["a"].requests + newest.backends["b"].requests,
            6
        );
    }
}
