//! What each gateway key spent this day and month across all nodes, read from the shared PostgreSQL table:
//! the cluster's counterpart of `usage::sqlite::spend` (same figures, same calendar), to seed shared budgets.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Local, NaiveDate};

use super::postgres::{PostgresError, Target};
use super::schema::TABLE;
use crate::secret::Secret;
use crate::usage::sqlite::Spend;

/// The spend of each key name in the shared table, for the local month and day of `now`. Like
/// [`crate::usage::spend_by_key`]: a record counts by the date written at the start of its `Time` (its `Day`),
/// records without a key name or a cost are left out, and so are keys without any cost this month. A table
/// that does not exist yet (nothing shipped) is an empty map. Opens one connection, and closes it.
pub async fn spend_by_key(
    url: &Secret,
    now: DateTime<Local>,
) -> Result<HashMap<String, Spend>, PostgresError> {
    let target = Target::parse(url.expose())?;
    spend_on(&target, now.date_naive()).await
}

/// [`spend_by_key`] from a caller without a runtime, or inside one (it runs on a thread of its own, so it
/// never blocks a runtime's worker in `block_on`).
pub fn spend_by_key_blocking(
    url: &Secret,
    now: DateTime<Local>,
) -> Result<HashMap<String, Spend>, PostgresError> {
    let target = Target::parse(url.expose())?;
    let today = now.date_naive();
    let shown = target.shown().to_owned();
    let thread = std::thread::Builder::new()
        .name("usage-spend".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| PostgresError::Connect {
                    target: target.shown().to_owned(),
                    reason: format!("no runtime: {e}"),
                })?;
            runtime.block_on(spend_on(&target, today))
        });
    let failed = |reason: String| PostgresError::Connect {
        target: shown.clone(),
        reason,
    };
    match thread {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|_| Err(failed("the reading thread panicked".into()))),
        Err(e) => Err(failed(format!("no thread: {e}"))),
    }
}

/// The spend of the month and day of `today` (a local date), from `target`.
pub async fn spend_on(
    target: &Target,
    today: NaiveDate,
) -> Result<HashMap<String, Spend>, PostgresError> {
    let client = target.connect().await?;
    let (first, next) = month_bounds(today);
    // "Time" bounds a day wider than the month on each side (offsets are within ±14 h), for partition pruning.
    let sql = format!(
        "SELECT \"KeyName\", sum(\"CostUsd\"), coalesce(sum(\"CostUsd\") FILTER (WHERE \"Day\" = $3), 0) \
         FROM {TABLE} WHERE \"Day\" >= $1 AND \"Day\" < $2 \
         AND \"Time\" >= ($1::date - 2)::timestamptz AND \"Time\" < ($2::date + 2)::timestamptz \
         AND \"KeyName\" IS NOT NULL AND \"KeyName\" <> '' AND \"CostUsd\" IS NOT NULL GROUP BY \"KeyName\""
    );
    let rows = match target
        .run(client.query(&sql, &[&first, &next, &today]))
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.no_table() => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut spend = HashMap::new();
    for row in rows {
        let key: String = row.get(0);
        let month_usd: f64 = row.get(1);
        let day_usd: f64 = row.get(2);
        spend.insert(key, Spend { day_usd, month_usd });
    }
    Ok(spend)
}

/// The first day of `day`'s month and of the month after.
pub fn month_bounds(day: NaiveDate) -> (NaiveDate, NaiveDate) {
    let first = day.with_day(1).unwrap_or(day);
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    (first, next)
}
