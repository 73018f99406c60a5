//! Tests of the report's flags and of its output shapes (table, CSV, JSON) with strange values.

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct TestCli {
    #[command(flatten)]
    args: UsageArgs,
}

pub(super) fn parse(args: &[&str]) -> Result<UsageArgs, clap::Error> {
    TestCli::try_parse_from(std::iter::once("usage").chain(args.iter().copied())).map(|c| c.args)
}

#[test]
fn flags_parse_and_conflict() {
    let args = parse(&[
        "--dir",
        "a",
        "--dir",
        "b",
        "--by",
        "model,key",
        "--format",
        "csv",
    ])
    .unwrap();
    assert_eq!(args.dir, [PathBuf::from("a"), PathBuf::from("b")]);
    assert_eq!(args.by, [Dim::Model, Dim::Key]);
    assert_eq!(args.format, Format::Csv);
    assert_eq!(parse(&[]).unwrap().format, Format::Table);
    assert!(parse(&["--by", "ip"]).is_err());
    assert!(parse(&["--month", "2026-11", "--from", "2026-11-01"]).is_err());
    assert!(parse(&["--to", "2026-11-01"]).is_err(), "--to needs --from");
    assert!(parse(&["--config", "c.yaml", "--dir", "d"]).is_err());
}

/// A report of two models, one with a comma and a quote in its name, and a null key.
fn sample() -> Report {
    let stats = |requests, p50| Stats {
        requests,
        prompt_tokens: 1000 * requests as i64,
        completion_tokens: 7,
        total_tokens: 1000 * requests as i64 + 7,
        no_usage: 0,
        errors: 1,
        p50_ms: p50,
        p99_ms: p50,
        estimated: requests / 3,
        cost_usd: p50.map(|_| Usd(1_234_567 * requests)),
        cached_tokens: 100 * requests as i64,
        cache_write_tokens: 10 * requests as i64,
    };
    Report {
        range: range("2026-11-01", "2026-11-30"),
        by: vec![Dim::Model, Dim::Key],
        files: vec![PathBuf::from("/d/record_202611.db")],
        rows: vec![
            GroupRow {
                key: vec![Some("a,\"quoted\" model".into()), None],
                stats: stats(12, Some(1234)),
            },
            GroupRow {
                key: vec![Some("b".into()), Some("k".into())],
                stats: stats(3, None),
            },
        ],
        total: stats(15, Some(1234)),
    }
}

#[test]
fn csv_quotes_what_needs_quoting() {
    assert_eq!(render::csv_field("plain"), "plain");
    assert_eq!(render::csv_field("a,b"), "\"a,b\"");
    assert_eq!(render::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(render::csv_field("two\nlines"), "\"two\nlines\"");
    let csv = render::csv(&sample());
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        [
            "model,key,requests,prompt_tokens,completion_tokens,total_tokens,no_usage,errors,p50_ms,p99_ms,\
             estimated,cost_usd,cached_tokens,cache_write_tokens",
            "\"a,\"\"quoted\"\" model\",,12,12000,7,12007,0,1,1234,1234,4,0.014815,1200,120",
            "b,k,3,3000,7,3007,0,1,,,1,,300,30",
        ]
    );
}

#[test]
fn json_has_the_documented_shape() {
    let value: serde_json::Value = serde_json::from_str(&render::json(&sample())).unwrap();
    let figures = serde_json::json!({
        "requests": 3, "prompt_tokens": 3000, "completion_tokens": 7, "total_tokens": 3007,
        "no_usage": 0, "errors": 1, "p50_ms": null, "p99_ms": null, "estimated": 1, "cost_usd": null,
        "cached_tokens": 300, "cache_write_tokens": 30,
    });
    let mut second = serde_json::json!({ "model": "b", "key": "k" });
    second
        .as_object_mut()
        .unwrap()
        .extend(figures.as_object().unwrap().clone());
    assert_eq!(value["rows"][1], second);
    assert_eq!(value["rows"][0]["key"], serde_json::Value::Null);
    assert_eq!(value["rows"][0]["model"], "a,\"quoted\" model");
    assert_eq!(value["total"]["requests"], 15);
    assert_eq!(value["rows"][0]["cost_usd"].to_string(), "0.014815");
    assert_eq!(value["total"]["cost_usd"].to_string(), "0.018519");
    assert_eq!(value["total"].get("model"), None);
    assert_eq!(value["from"], "2026-11-01");
    assert_eq!(value["to"], "2026-11-30");
    assert_eq!(value["by"], serde_json::json!(["model", "key"]));
    assert_eq!(value["files"], serde_json::json!(["/d/record_202611.db"]));
}

#[test]
fn the_table_lines_up() {
    let table = render::table(&sample());
    let expected = "\
model             key  requests  prompt_tokens  completion_tokens  total_tokens  no_usage  errors  p50_ms  p99_ms  estimated  cost_usd  cached_tokens  cache_write_tokens
a,\"quoted\" model  -          12          12000                  7         12007         0       1    1234    1234          4    0.0148           1200                 120
b                 k           3           3000                  7          3007         0       1       -       -          1         -            300                  30
----------------  ---  --------  -------------  -----------------  ------------  --------  ------  ------  ------  ---------  --------  -------------  ------------------
total                        15          15000                  7         15007         0       1    1234    1234          5    0.0185           1500                 150
";
    assert_eq!(table, expected, "\n{table}");
}

#[test]
fn a_table_cell_is_escaped_and_cut_to_a_bounded_width() {
    assert_eq!(render::table_cell("gpt-4o"), "gpt-4o");
    let exact = "x".repeat(render::MAX_CELL);
    assert_eq!(
        render::table_cell(&exact),
        exact,
        "a value that fits is whole"
    );
    let cut = render::table_cell(&"y".repeat(70_000));
    assert_eq!(cut, format!("{}…", "y".repeat(render::MAX_CELL - 1)));
    let cut = render::table_cell(&"\u{e9}".repeat(100));
    assert_eq!(cut, format!("{}…", "\u{e9}".repeat(render::MAX_CELL - 1)));

    assert_eq!(render::table_cell("two\nlines\r\tx"), "two\\nlines\\r\\tx");
    assert_eq!(
        render::table_cell("\u{1b}]0;pwned\u{7}"),
        "\\u001b]0;pwned\\u0007"
    );
    assert_eq!(render::table_cell("nul\0"), "nul\\u0000");
    assert_eq!(
        render::table_cell("\u{9b}2J\u{7f}\u{202e}\u{2028}"),
        "\\u009b2J\\u007f\\u202e\\u2028"
    );
    // A cut never splits an escape: 10 escapes of 6 characters fit before the `…`, 11 would not.
    let cut = render::table_cell(&"\u{1b}".repeat(20));
    assert_eq!(cut, format!("{}…", "\\u001b".repeat(10)));
}

#[test]
fn csv_escapes_control_characters_but_keeps_quoted_line_breaks() {
    assert_eq!(render::csv_field("a\tb"), "a\\tb");
    assert_eq!(render::csv_field("nul\0"), "nul\\u0000");
    assert_eq!(
        render::csv_field("\u{1b}[2J,\u{9b}x"),
        "\"\\u001b[2J,\\u009bx\""
    );
    assert_eq!(render::csv_field("two\r\nlines"), "\"two\r\nlines\"");
}

/// A report grouped by model and key whose values are what a caller could send as a model name.
fn strange() -> Report {
    let mut report = sample();
    let strange = [
        "m".repeat(70_000),
        "two\nlines".into(),
        "\u{1b}]0;pwned\u{7}".into(),
        "nul\0 \u{7f}\u{9b}2J\u{202e}".into(),
    ];
    for (i, model) in strange.into_iter().enumerate() {
        report.rows.push(GroupRow {
            key: vec![Some(model), Some(format!("k{i}\t\u{1b}[2J"))],
            stats: report.rows[1].stats.clone(),
        });
    }
    report
}

#[test]
fn a_huge_or_strange_value_keeps_the_table_one_line_a_row() {
    let report = strange();
    let table = render::table(&report);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), report.rows.len() + 3, "{table}");
    let width = lines[0].chars().count();
    assert!(width <= 2 * render::MAX_CELL + 100, "{table}");
    assert!(
        lines.iter().all(|l| l.chars().count() == width),
        "ragged:\n{table}"
    );
    assert!(
        !table.chars().any(|c| c != '\n' && c.is_control()),
        "{table:?}"
    );
    assert!(table.contains("two\\nlines"), "{table}");
}

#[test]
fn json_escapes_the_controls_serde_json_writes_as_they_are() {
    let report = strange();
    let json = render::json(&report);
    assert!(
        !json
            .chars()
            .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
        "{json:?}"
    );
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = value["rows"].as_array().unwrap();
    for (row, expected) in rows.iter().zip(&report.rows) {
        assert_eq!(row["model"].as_str(), expected.key[0].as_deref());
        assert_eq!(row["key"].as_str(), expected.key[1].as_deref());
    }
}

#[test]
fn csv_shows_a_value_that_looks_like_a_formula_as_text() {
    for (value, shown) in [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("a=b", "a=b"),
        ("", ""),
    ] {
        assert_eq!(render::defuse(value), shown);
    }
}
