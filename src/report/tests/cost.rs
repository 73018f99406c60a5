//! Tests of the cost figures: sums per group in nano-dollars, unknown costs, and the monthly bill per key.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::output::parse;
use super::*;

/// `record` with a cost in nano-dollars (`None`: unpriced), a key and whether its usage is estimated.
fn priced(time: &str, key: Option<&str>, nanos: Option<i64>, estimated: bool) -> UsageRecord {
    let mut r = record(time, "m", 1, 1, 1);
    r.key_name = key.map(String::from);
    r.cost_usd = nanos.map(|n| n as f64 / 1e9);
    r.usage_estimated = estimated;
    r
}

fn usd(nanos: u64) -> Option<Usd> {
    Some(Usd(nanos))
}

#[test]
fn costs_add_up_per_group_and_unknown_costs_add_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            priced("2026-11-02T10:00:00+08:00", Some("a"), Some(1_500), false),
            priced("2026-11-02T11:00:00+08:00", Some("a"), None, true),
            priced(
                "2026-11-03T10:00:00+08:00",
                Some("a"),
                Some(2_000_000),
                true,
            ),
            priced("2026-11-03T10:00:00+08:00", Some("b"), None, false),
            priced("2026-11-04T10:00:00+08:00", None, Some(0), false),
        ],
    );
    let november = range("2026-11-01", "2026-11-30");
    let report = collect(&[dir.path().into()], november, &[Dim::Key]).unwrap();
    let a = stats_of(&report, &[Some("a")]);
    assert_eq!(
        (a.requests, a.estimated, a.cost_usd),
        (3, 2, usd(2_001_500))
    );
    let b = stats_of(&report, &[Some("b")]);
    assert_eq!(
        (b.requests, b.cost_usd),
        (1, None),
        "no cost known: unknown, not 0"
    );
    assert_eq!(
        stats_of(&report, &[None]).cost_usd,
        usd(0),
        "a known zero is 0"
    );
    assert_eq!(
        (report.total.estimated, report.total.cost_usd),
        (2, usd(2_001_500))
    );
    // Grouped by day: the 2nd's unknown cost leaves its known one.
    let by_day = collect(&[dir.path().into()], november, &[Dim::Day]).unwrap();
    let costs: Vec<Option<Usd>> = by_day.rows.iter().map(|r| r.stats.cost_usd).collect();
    assert_eq!(costs, [usd(1_500), usd(2_000_000), usd(0)]);
    let ungrouped = collect(&[dir.path().into()], november, &[]).unwrap();
    assert_eq!(ungrouped.total.cost_usd, usd(2_001_500));
}

#[test]
fn a_cost_stored_as_text_or_integer_counts_and_garbage_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[priced("2026-11-02T10:00:00+08:00", Some("a"), None, false)],
    );
    let connection = Connection::open(dir.path().join("record_202611.db")).unwrap();
    connection
        .execute_batch(
            "INSERT INTO records (Time, KeyName, CostUsd) VALUES
                ('2026-11-02T10:00:00+08:00', 'a', ' 0.25 '), ('2026-11-02T10:00:00+08:00', 'a', 2),
                ('2026-11-02T10:00:00+08:00', 'b', 'free'), ('2026-11-02T10:00:00+08:00', 'b', x'00');",
        )
        .unwrap();
    let november = range("2026-11-01", "2026-11-30");
    let report = collect(&[dir.path().into()], november, &[Dim::Key]).unwrap();
    assert_eq!(stats_of(&report, &[Some("a")]).cost_usd, usd(2_250_000_000));
    assert_eq!(stats_of(&report, &[Some("b")]).cost_usd, None);
}

#[test]
fn the_monthly_bill_per_key() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            priced(
                "2026-11-30T23:59:59.999+08:00",
                Some("team-a"),
                Some(9_000_000),
                false,
            ),
            priced(
                "2026-12-01T00:00:00.000+08:00",
                Some("team-a"),
                Some(1_500_000),
                false,
            ),
            priced("2026-12-15T12:00:00+08:00", Some("team-a"), Some(250), true),
            // The 31st in New York, already January in UTC: the gateway's own date decides.
            priced(
                "2026-12-31T23:59:59.999-05:00",
                Some("team-b"),
                Some(120_000_000),
                false,
            ),
            priced("2026-12-20T12:00:00+08:00", Some("unpriced"), None, false),
            priced(
                "2026-12-20T12:00:00+08:00",
                Some("=HYPERLINK(\"x\")"),
                Some(1),
                false,
            ),
            priced("2026-12-21T12:00:00+08:00", None, Some(2_000), false),
            priced(
                "2027-01-01T00:00:00+08:00",
                Some("team-a"),
                Some(7_000_000),
                false,
            ),
        ],
    );
    let d = dir.path().to_str().unwrap();
    let bill = |format: &str| {
        let args = parse(&[
            "--dir", d, "--by", "key", "--month", "2026-12", "--format", format,
        ]);
        run(&args.unwrap(), Path::new("unused.yaml"), date("2030-01-01")).unwrap()
    };
    let csv = bill("csv");
    let lines: Vec<&str> = csv.lines().collect();
    let head =
        "key,requests,prompt_tokens,completion_tokens,total_tokens,no_usage,errors,p50_ms,p99_ms,\
                estimated,cost_usd,cached_tokens,cache_write_tokens";
    assert_eq!(
        lines,
        [
            head,
            ",1,1,1,2,0,0,1,1,0,0.000002,0,0",
            "\"'=HYPERLINK(\"\"x\"\")\",1,1,1,2,0,0,1,1,0,0.000000,0,0",
            "team-a,2,2,2,4,0,0,1,1,1,0.001500,0,0",
            "team-b,1,1,1,2,0,0,1,1,0,0.120000,0,0",
            "unpriced,1,1,1,2,0,0,1,1,0,,0,0",
        ],
        "{csv}"
    );
    let json: serde_json::Value = serde_json::from_str(&bill("json")).unwrap();
    assert_eq!(
        (&json["from"], &json["to"]),
        (&"2026-12-01".into(), &"2026-12-31".into())
    );
    let cost = |row: &serde_json::Value| row["cost_usd"].as_f64();
    let rows = json["rows"].as_array().unwrap();
    let costs: Vec<Option<f64>> = rows.iter().map(cost).collect();
    // Numbers (serde_json writes the smallest as 2e-6), rounded to 6 decimals.
    assert_eq!(
        costs,
        [Some(0.000_002), Some(0.0), Some(0.0015), Some(0.12), None]
    );
    assert!(rows[4]["cost_usd"].is_null());
    assert_eq!(rows[0]["key"], serde_json::Value::Null);
    assert_eq!(
        rows[1]["key"], "=HYPERLINK(\"x\")",
        "JSON has the value as stored"
    );
    assert_eq!(json["total"]["cost_usd"].to_string(), "0.121502");
    let table = bill("table");
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("total") && last.contains("  0.1215  "),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("unpriced") && l.contains("  -  ")),
        "{table}"
    );
}
