//! The second report source: the shared PostgreSQL table the gateways ship their records to (`usage::ship`),
//! read through a blocking façade over tokio-postgres (a current-thread runtime of its own).

use std::path::PathBuf;

use futures_util::{pin_mut, TryStreamExt};
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::{Dim, Fields, Range, ReportError, Source};
use crate::usage::ship::schema::TABLE;
use crate::usage::ship::{PostgresError, Target};

/// The records of every node in one PostgreSQL database.
pub struct SharedTable {
    target: Target,
    runtime: Runtime,
    client: Client,
}

impl SharedTable {
    /// Connects to `url` (a `postgres://` URL as `usage.postgres_url` takes it).
    pub fn connect(url: &str) -> Result<SharedTable, ReportError> {
        let target = Target::parse(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ReportError::Io {
                path: PathBuf::from(target.shown()),
                source,
            })?;
        let client = runtime.block_on(target.connect())?;
        Ok(SharedTable {
            target,
            runtime,
            client,
        })
    }
}

impl Source for SharedTable {
    /// One query over the partitions the range touches, streamed (never the bodies). A table that does not exist
    /// yet has no records.
    fn read(
        &mut self,
        range: Range,
        by: &[Dim],
        add: &mut dyn FnMut(Vec<Option<String>>, Fields),
    ) -> Result<Vec<PathBuf>, ReportError> {
        let (target, client) = (&self.target, &self.client);
        let read = self.runtime.block_on(async {
            let statement = target.run(client.prepare(&select_sql(by))).await?;
            let params: [&(dyn ToSql + Sync); 2] = [&range.from, &range.to];
            let rows = target.run(client.query_raw(&statement, params)).await?;
            pin_mut!(rows);
            while let Some(row) = target.run(rows.try_next()).await? {
                let key = (0..by.len()).map(|i| text(&row, i)).collect();
                add(key, fields(&row, by.len()));
            }
            Ok::<(), PostgresError>(())
        });
        match read {
            Err(e) if e.no_table() => {}
            other => other?,
        }
        Ok(vec![PathBuf::from(self.target.shown())])
    }
}

/// The group values and figures of the records whose `Day` (the date written at the start of their `Time`, as
/// the monthly files are read) is in `$1..=$2`; `Time` is bounded too, two days wider, so only the partitions of
/// those months are read.
pub fn select_sql(by: &[Dim]) -> String {
    let mut select: Vec<&str> = by
        .iter()
        .map(|dim| match dim {
            Dim::Day => "to_char(\"Day\", 'YYYY-MM-DD')",
            Dim::Model => "\"Model\"",
            Dim::Backend => "\"Backend\"",
            Dim::Key => "\"KeyName\"",
            Dim::Node => "\"Node\"",
        })
        .collect();
    select.extend([
        "\"PromptTokens\"",
        "\"CompletionTokens\"",
        "\"TotalTokens\"",
        "\"Status\"",
        "\"Error\" IS NOT NULL",
        "\"LatencyMs\"",
        "coalesce(\"UsageEstimated\", false)",
        "\"CostUsd\"",
        "\"CachedTokens\"",
        "\"CacheWriteTokens\"",
    ]);
    format!(
        "SELECT {} FROM {TABLE} WHERE \"Day\" >= $1 AND \"Day\" <= $2 \
         AND \"Time\" >= ($1::date - 2)::timestamptz AND \"Time\" < ($2::date + 3)::timestamptz",
        select.join(", ")
    )
}

/// The figures after the `keys` group columns of a row of [`select_sql`].
fn fields(row: &Row, keys: usize) -> Fields {
    let int = |i: usize| row.try_get::<_, Option<i64>>(keys + i).ok().flatten();
    Fields {
        prompt: int(0),
        completion: int(1),
        total: int(2),
        status: int(3),
        has_error: row.try_get(keys + 4).unwrap_or(false),
        latency_ms: int(5),
        estimated: row.try_get(keys + 6).unwrap_or(false),
        cost_usd: row.try_get::<_, Option<f64>>(keys + 7).ok().flatten(),
        cached: int(8),
        cache_write: int(9),
    }
}

/// A group value; NULL or empty is `None` (as the monthly files are read).
fn text(row: &Row, i: usize) -> Option<String> {
    row.try_get::<_, Option<String>>(i)
        .ok()
        .flatten()
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_reads_the_figures_and_bounds_days_and_partitions() {
        let sql = select_sql(&[Dim::Day, Dim::Node, Dim::Key]);
        assert!(
            sql.starts_with(
                "SELECT to_char(\"Day\", 'YYYY-MM-DD'), \"Node\", \"KeyName\", \"PromptTokens\", "
            ),
            "{sql}"
        );
        assert!(sql.contains("\"Day\" >= $1 AND \"Day\" <= $2"), "{sql}");
        assert!(sql.contains("\"Time\" >= ($1::date - 2)"), "{sql}");
        assert!(!sql.contains("Request\""), "never the bodies: {sql}");
    }
}
