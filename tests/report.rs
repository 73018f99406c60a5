//! `gpt-api usage`: the real binary reads the monthly files of two gateways and adds them up; table, JSON, bad input.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::BIN;
use rusqlite::{params, Connection};
use serde_json::Value;

/// The columns a gateway writes (`usage::store`), the cost columns last.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY AUTOINCREMENT, Time TEXT, IP TEXT,
    Model TEXT, Type TEXT, CompletionTokens INTEGER, PromptTokens INTEGER, TotalTokens INTEGER, Tool INTEGER,
    Multimodal INTEGER, Headers TEXT, Request TEXT, Response TEXT, Backend TEXT, UpstreamModel TEXT,
    Stream INTEGER, Status INTEGER, LatencyMs INTEGER, FirstTokenMs INTEGER, Attempts INTEGER,
    CachedTokens INTEGER, ReasoningTokens INTEGER, Error TEXT, KeyName TEXT, CostUsd REAL,
    UsageEstimated INTEGER)";

/// One record as the test writes it.
#[derive(Debug, Clone)]
struct Rec {
    time: String,
    model: &'static str,
    key: Option<&'static str>,
    prompt: Option<i64>,
    completion: Option<i64>,
    status: i64,
    latency_ms: i64,
}

/// A gateway's usage directory: its monthly files, in WAL mode, kept open like a running gateway keeps them.
struct Gateway {
    dir: tempfile::TempDir,
    open: BTreeMap<String, Connection>,
    /// Whether its files have the KeyName and cost columns (older gateways' files do not).
    key_column: bool,
}

impl Gateway {
    fn new(key_column: bool) -> Gateway {
        Gateway {
            dir: tempfile::tempdir().unwrap(),
            open: BTreeMap::new(),
            key_column,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The open month file a record of this time goes to, created on first use.
    fn db(&mut self, time: &str) -> &Connection {
        let file = format!("record_{}{}.db", &time[..4], &time[5..7]);
        let path = self.dir.path().join(&file);
        let key_column = self.key_column;
        self.open.entry(file).or_insert_with(|| {
            let db = Connection::open(path).unwrap();
            db.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
            let schema = if key_column {
                SCHEMA.to_string()
            } else {
                SCHEMA.replace(
                    ", KeyName TEXT, CostUsd REAL,\n    UsageEstimated INTEGER",
                    "",
                )
            };
            db.execute_batch(&schema).unwrap();
            db
        })
    }

    /// One successful record with these group values, stored byte for byte.
    fn write_values(&mut self, time: &str, model: &str, key: &str, backend: &str) {
        self.db(time)
            .execute(
                "INSERT INTO records (Time, Model, Type, PromptTokens, CompletionTokens, TotalTokens, Backend,
                    Status, LatencyMs, KeyName)
                 VALUES (?1, ?2, ?3, 1, 1, 2, ?4, 200, 10, ?5)",
                params![time, model, backend, backend, key],
            )
            .unwrap();
    }

    fn write(&mut self, records: &[Rec]) {
        let key_column = self.key_column;
        for r in records {
            let db = self.db(&r.time);
            let total = match (r.prompt, r.completion) {
                (None, None) => None,
                (p, c) => Some(p.unwrap_or(0) + c.unwrap_or(0)),
            };
            db.execute(
                "INSERT INTO records (Time, IP, Model, Type, PromptTokens, CompletionTokens, TotalTokens, Headers,
                    Request, Response, Backend, Stream, Status, LatencyMs, Attempts)
                 VALUES (?1, '10.0.0.1', ?2, 'chat.completions', ?3, ?4, ?5, '{}', 'a request body',
                    'a response body', 'openai', 0, ?6, ?7, 1)",
                params![r.time, r.model, r.prompt, r.completion, total, r.status, r.latency_ms],
            )
            .unwrap();
            if let (Some(key), true) = (r.key, key_column) {
                db.execute(
                    "UPDATE records SET KeyName = ?1 WHERE id = last_insert_rowid()",
                    params![key],
                )
                .unwrap();
            }
        }
    }
}

fn rec(time: &str, model: &'static str, prompt: i64, completion: i64, latency_ms: i64) -> Rec {
    Rec {
        time: time.into(),
        model,
        key: Some("team-a"),
        prompt: Some(prompt),
        completion: Some(completion),
        status: 200,
        latency_ms,
    }
}

/// Two gateways' records of November 2026, with records of October and December that must not count.
fn two_gateways() -> (Gateway, Gateway, Vec<Rec>) {
    let mut a = Gateway::new(true);
    let mut b = Gateway::new(false);
    let mut error = rec("2026-11-20T09:00:00-05:00", "gpt-4o", 0, 0, 7000);
    (error.prompt, error.completion, error.status) = (None, None, 502);
    let a_november = vec![
        rec("2026-11-01T00:00:00.000+08:00", "gpt-4o", 100, 10, 200),
        rec("2026-11-15T12:00:00.500+08:00", "gpt-4o", 200, 20, 400),
        rec("2026-11-30T23:59:59.999+08:00", "mini", 5, 1, 30),
        error,
    ];
    let b_november = vec![
        rec("2026-11-02T08:00:00+01:00", "gpt-4o", 1000, 100, 100),
        rec("2026-11-03T08:00:00+01:00", "mini", 7, 3, 20),
        rec("2026-11-04T08:00:00+01:00", "deep,seek \"r1\"", 1, 1, 10),
    ];
    a.write(&a_november);
    a.write(&[rec(
        "2026-10-31T23:59:59.999+08:00",
        "gpt-4o",
        9999,
        9999,
        1,
    )]);
    b.write(&b_november);
    b.write(&[rec("2026-12-01T00:00:00+01:00", "mini", 9999, 9999, 1)]);
    let november = a_november.into_iter().chain(b_november).collect();
    (a, b, november)
}

fn usage(args: &[&str]) -> Output {
    Command::new(BIN).arg("usage").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dirs<'a>(a: &'a Gateway, b: &'a Gateway) -> [&'a str; 4] {
    [
        "--dir",
        a.path().to_str().unwrap(),
        "--dir",
        b.path().to_str().unwrap(),
    ]
}

#[test]
fn two_gateways_add_up_by_model_in_json() {
    let (a, b, november) = two_gateways();
    let mut args = dirs(&a, &b).to_vec();
    args.extend(["--month", "2026-11", "--by", "model", "--format", "json"]);
    let out = usage(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();

    let mut expected: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for r in &november {
        let e = expected.entry(r.model).or_default();
        let (p, c) = (r.prompt.unwrap_or(0), r.completion.unwrap_or(0));
        let failed = i64::from(r.status >= 400);
        for (slot, n) in e.iter_mut().zip([1, p, c, p + c, failed]) {
            *slot += n;
        }
    }
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{report:#}");
    for row in rows {
        let e = expected[row["model"].as_str().unwrap()];
        let got = [
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "errors",
        ]
        .map(|f| row[f].as_i64().unwrap());
        assert_eq!(got, e, "{row}");
    }
    let total = &report["total"];
    assert_eq!(total["requests"], november.len());
    let prompt: i64 = november.iter().map(|r| r.prompt.unwrap_or(0)).sum();
    assert_eq!(total["prompt_tokens"], prompt);
    assert_eq!(total["errors"], 1);
    assert_eq!(total["no_usage"], 1);
    // 7 latencies, sorted 10 20 30 100 200 400 7000: nearest rank 4 and 7.
    assert_eq!(
        (&total["p50_ms"], &total["p99_ms"]),
        (&Value::from(100), &Value::from(7000))
    );
    let gpt = rows.iter().find(|r| r["model"] == "gpt-4o").unwrap();
    assert_eq!(
        (&gpt["p50_ms"], &gpt["p99_ms"]),
        (&Value::from(200), &Value::from(7000))
    );
    assert_eq!(
        report["files"].as_array().unwrap().len(),
        2,
        "only November's files"
    );
}

/// The character positions where a cell of `line` ends (a non-space followed by a space or the end).
fn cell_ends(line: &str) -> Vec<usize> {
    let chars: Vec<char> = line.chars().collect();
    (0..chars.len())
        .filter(|&i| chars[i] != ' ' && chars.get(i + 1).is_none_or(|c| *c == ' '))
        .collect()
}

#[test]
fn the_table_lines_up() {
    let (a, b, _) = two_gateways();
    let mut args = dirs(&a, &b).to_vec();
    args.extend([
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-30",
        "--by",
        "model,key",
    ]);
    let out = usage(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    // Header, 5 groups (gateway B has no KeyName column: key "-"), rule, total.
    assert_eq!(lines.len(), 8, "{table}");
    let width = lines[0].chars().count();
    assert!(
        lines.iter().all(|l| l.chars().count() == width),
        "ragged:\n{table}"
    );
    // Every figure column is right-aligned under its header.
    let header_ends = cell_ends(lines[0]);
    let figure_ends = &header_ends[2..];
    assert_eq!(figure_ends.len(), 12, "{table}");
    for line in &lines[1..] {
        let ends = cell_ends(line);
        assert!(
            figure_ends.iter().all(|e| ends.contains(e)),
            "misaligned: {line:?}\n{table}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("mini") && l.contains("  -  ")),
        "{table}"
    );
    assert!(lines[7].starts_with("total"), "{table}");
}

#[test]
fn a_bad_month_exits_1_with_a_clear_message() {
    let gateway = Gateway::new(true);
    let dir = gateway.path().to_str().unwrap();
    for bad in ["2026-13", "2026-1", "november"] {
        let out = usage(&["--dir", dir, "--month", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--month") && stderr.contains("YYYY-MM"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_missing_directory_exits_1_and_is_not_created() {
    let gateway = Gateway::new(true);
    let missing = gateway.path().join("nope");
    let out = usage(&["--dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("does not exist"), "{out:?}");
    assert!(!missing.exists());
}

#[test]
fn the_config_names_the_directory_and_a_bad_config_points_to_dir() {
    let (a, _b, _) = two_gateways();
    let config = a.path().join("config.yaml");
    let yaml = format!(
        "openai_clients:\n  - name: a\n    api_key: \"${{GPT_API_REPORT_TEST_KEY:-sk-x}}\"\n    base_url: \"http://127.0.0.1:9/v1\"\n    model_match: {{ type: exact, value: m }}\nusage:\n  dir: {:?}\n",
        a.path().to_str().unwrap()
    );
    std::fs::write(&config, &yaml).unwrap();
    let config = config.to_str().unwrap();
    for args in [
        vec!["usage", "--config", config],
        vec!["--config", config, "usage"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--month", "2026-11", "--format", "csv"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let csv = text(&out.stdout);
        assert!(
            csv.lines().nth(1).unwrap().starts_with("4,305,31,336,1,1,"),
            "{csv}"
        );
    }

    std::fs::write(a.path().join("bad.yaml"), yaml.replace(":-sk-x", "")).unwrap();
    let out = Command::new(BIN)
        .args([
            "usage",
            "--config",
            a.path().join("bad.yaml").to_str().unwrap(),
        ])
        .env_remove("GPT_API_REPORT_TEST_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("GPT_API_REPORT_TEST_KEY") && stderr.contains("--dir"),
        "{stderr}"
    );
}

/// Values a caller (the model is whatever the request said) or a config could have stored: a 70,000-character
/// model, a line break, a terminal title sequence, NUL, a comma and a quote, a C1 CSI, a bidi override.
fn strange_values() -> Vec<String> {
    vec![
        "x".repeat(70_000),
        "two\nlines".into(),
        "\u{1b}]0;pwned\u{7}".into(),
        "nul\0byte".into(),
        "comma, \"quote\"".into(),
        "csi\u{9b}2J\u{202e}".into(),
    ]
}

/// A month whose records carry the strange values as model, key name, backend and type, one record each.
fn strange_month() -> (Gateway, Vec<String>) {
    let mut gateway = Gateway::new(true);
    let values = strange_values();
    for (i, value) in values.iter().enumerate() {
        let time = format!("2026-11-{:02}T10:00:00+00:00", i + 1);
        let other = &values[(i + 1) % values.len()];
        gateway.write_values(&time, value, other, value);
    }
    (gateway, values)
}

fn usage_of(gateway: &Gateway, format: &str) -> String {
    let dir = gateway.path().to_str().unwrap();
    let by = "model,key,backend";
    let out = usage(&[
        "--dir", dir, "--month", "2026-11", "--by", by, "--format", format,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "--format {format}: {}",
        text(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A raw control character (other than the line breaks `allowed`), or a bidi override that reorders the line.
fn raw_control(text: &str, allowed: &[char]) -> Option<char> {
    text.chars()
        .find(|c| !allowed.contains(c) && (c.is_control() || *c == '\u{202e}'))
}

#[test]
fn strange_stored_values_are_escaped_and_cut_in_the_table() {
    let (gateway, values) = strange_month();
    let table = usage_of(&gateway, "table");
    let lines: Vec<&str> = table.lines().collect();
    // Header, one line per record (none forged by a line break), rule, total.
    assert_eq!(lines.len(), values.len() + 3, "{table}");
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap();
    assert!(longest <= 400, "a line of {longest} characters");
    assert_eq!(raw_control(&table, &['\n']), None, "{table:?}");
    assert!(table.contains("\\u001b]0;pwned\\u0007"), "{table}");
    assert!(table.contains("nul\\u0000byte"), "{table}");
    assert!(table.contains("two\\nlines"), "{table}");
    assert!(table.contains(&format!("{}…", "x".repeat(20))), "{table}");
}

/// RFC 4180 records: fields split at commas, quoted fields may hold commas, doubled quotes and line breaks.
fn read_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => {
                assert!(
                    c != '"' && c != '\r',
                    "a bare {c:?} in an unquoted field: {text:?}"
                );
                field.push(c);
            }
        }
    }
    assert!(!quoted && field.is_empty() && record.is_empty(), "{text:?}");
    records
}

#[test]
fn strange_stored_values_are_quoted_and_escaped_in_csv() {
    let (gateway, values) = strange_month();
    let csv = usage_of(&gateway, "csv");
    // Line breaks only between records or inside quoted fields, where RFC 4180 allows them.
    assert_eq!(raw_control(&csv, &['\n']), None, "{csv:?}");
    let records = read_csv(&csv);
    assert_eq!(records.len(), values.len() + 1, "{csv:?}");
    assert!(
        records.iter().all(|r| r.len() == 15),
        "{} fields",
        records[0].len()
    );
    let models: Vec<&str> = records[1..].iter().map(|r| r[0].as_str()).collect();
    for expected in [
        "x".repeat(70_000),
        "two\nlines".into(),
        "\\u001b]0;pwned\\u0007".into(),
        "nul\\u0000byte".into(),
        "comma, \"quote\"".into(),
        "csi\\u009b2J\\u202e".into(),
    ] {
        assert!(
            models.contains(&expected.as_str()),
            "{expected:?} in {models:?}"
        );
    }
}

#[test]
fn strange_stored_values_come_back_whole_from_json() {
    let (gateway, values) = strange_month();
    let json = usage_of(&gateway, "json");
    assert_eq!(raw_control(&json, &['\n']), None, "{json:?}");
    assert!(
        json.lines().all(|l| l.len() < 70_100),
        "one value a line at most"
    );
    let report: Value = serde_json::from_str(&json).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), values.len(), "{report:#}");
    for value in &values {
        let row = rows.iter().find(|r| r["model"] == value.as_str());
        let row = row.unwrap_or_else(|| panic!("no row for {value:?}"));
        assert_eq!(row["backend"], value.as_str());
        assert_eq!(row["requests"], 1);
    }
    assert_eq!(report["total"]["requests"], values.len());
}

#[test]
fn the_monthly_bill_per_key_and_an_older_gateway_without_costs() {
    let (mut a, mut b) = (Gateway::new(true), Gateway::new(false));
    let priced = [
        ("2026-11-30T23:59:59.999+08:00", "team-a", Some(5.0), 0),
        ("2026-12-01T00:00:00.000+08:00", "team-a", Some(0.001_25), 0),
        (
            "2026-12-31T23:59:59.999-05:00",
            "team-a",
            Some(0.000_000_4),
            1,
        ),
        ("2026-12-10T10:00:00+08:00", "team-b", None, 0),
        ("2026-12-11T10:00:00+08:00", "@team-c", Some(2.5), 0),
        ("2027-01-01T00:00:00+08:00", "team-a", Some(7.0), 0),
    ];
    for (time, key, cost, estimated) in priced {
        a.write_values(time, "m", key, "openai");
        a.db(time)
            .execute(
                "UPDATE records SET CostUsd = ?1, UsageEstimated = ?2 WHERE id = last_insert_rowid()",
                params![cost, estimated],
            )
            .unwrap();
    }
    b.write(&[rec("2026-12-05T10:00:00+01:00", "m", 1, 1, 1)]);
    let mut args = dirs(&a, &b).to_vec();
    args.extend(["--by", "key", "--month", "2026-12"]);
    let out = usage(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let cost_of = |prefix: &str| {
        let line = table.lines().find(|l| l.starts_with(prefix));
        let line = line.unwrap_or_else(|| panic!("no {prefix} in\n{table}"));
        // cost_usd, then cached_tokens and cache_write_tokens.
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells[cells.len() - 3].to_string()
    };
    assert_eq!(cost_of("team-a"), "0.0013", "{table}");
    assert_eq!(cost_of("team-b"), "-", "no price: unknown");
    assert_eq!(cost_of("@team-c"), "2.5000");
    assert_eq!(
        cost_of("- "),
        "-",
        "the older gateway's record: no key, no cost"
    );
    assert_eq!(cost_of("total"), "2.5013");

    args.extend(["--format", "csv"]);
    let out = usage(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let csv = read_csv(&text(&out.stdout));
    assert_eq!(csv[0][0], "key");
    assert_eq!(csv[0][9..11], ["estimated", "cost_usd"]);
    let bill: Vec<[&str; 3]> = csv[1..]
        .iter()
        .map(|r| [r[0].as_str(), r[9].as_str(), r[10].as_str()])
        .collect();
    assert_eq!(
        bill,
        [
            ["", "0", ""],
            ["'@team-c", "0", "2.500000"],
            ["team-a", "1", "0.001250"],
            ["team-b", "0", ""],
        ]
    );
}
