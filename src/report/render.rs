//! The three shapes of a usage report: an aligned table, CSV and JSON.

use serde_json::{json, Map, Value};

use super::{Report, Stats};

/// The figure columns, after the group columns, in every format.
const FIGURES: [&str; 8] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "no_usage",
    "errors",
    "p50_ms",
    "p99_ms",
];

fn figures(s: &Stats) -> [Option<String>; 8] {
    [
        Some(s.requests.to_string()),
        Some(s.prompt_tokens.to_string()),
        Some(s.completion_tokens.to_string()),
        Some(s.total_tokens.to_string()),
        Some(s.no_usage.to_string()),
        Some(s.errors.to_string()),
        s.p50_ms.map(|ms| ms.to_string()),
        s.p99_ms.map(|ms| ms.to_string()),
    ]
}

fn header(report: &Report) -> Vec<String> {
    let groups = report.by.iter().map(|dim| dim.name().to_string());
    groups
        .chain(FIGURES.iter().map(|f| f.to_string()))
        .collect()
}

/// Group values left-aligned, figures right-aligned, two spaces between columns; a missing value is `-`.
/// When grouped, a dashed rule and a `total` row close the table.
pub fn table(report: &Report) -> String {
    let dash = |cell: &Option<String>| cell.clone().unwrap_or_else(|| "-".into());
    let mut lines: Vec<Vec<String>> = vec![header(report)];
    for row in &report.rows {
        let groups = row.key.iter().map(dash);
        lines.push(groups.chain(figures(&row.stats).iter().map(dash)).collect());
    }
    let grouped = !report.by.is_empty();
    if grouped {
        let label = (0..report.by.len()).map(|i| if i == 0 { "total" } else { "" }.to_string());
        lines.push(
            label
                .chain(figures(&report.total).iter().map(dash))
                .collect(),
        );
    }
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let format = |line: &[String]| {
        let cells = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, width))| {
                if c < report.by.len() {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            });
        cells.collect::<Vec<_>>().join("  ")
    };
    let mut out = String::new();
    let last = lines.len() - 1;
    for (i, line) in lines.iter().enumerate() {
        if grouped && i == last {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
        out.push_str(&format(line));
        out.push('\n');
    }
    out
}

/// A header line, then one line per row (no total: a spreadsheet sums itself); a missing value is empty.
pub fn csv(report: &Report) -> String {
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let quoted: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    };
    line(header(report));
    for row in &report.rows {
        let groups = row.key.iter().cloned();
        let cells = groups
            .chain(figures(&row.stats))
            .map(Option::unwrap_or_default);
        line(cells.collect());
    }
    out
}

/// RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled.
pub fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// `{"from", "to", "by", "files", "rows": [{<group values>, <figures>}], "total": {<figures>}}`, missing values null.
pub fn json(report: &Report) -> String {
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|row| {
            let mut object = Map::new();
            for (dim, value) in report.by.iter().zip(&row.key) {
                object.insert(dim.name().into(), json!(value));
            }
            object.extend(stats_json(&row.stats));
            Value::Object(object)
        })
        .collect();
    let files: Vec<String> = report
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let by: Vec<&str> = report.by.iter().map(|dim| dim.name()).collect();
    let value = json!({
        "from": report.range.from.format("%Y-%m-%d").to_string(),
        "to": report.range.to.format("%Y-%m-%d").to_string(),
        "by": by,
        "files": files,
        "rows": rows,
        "total": Value::Object(stats_json(&report.total)),
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

fn stats_json(s: &Stats) -> Map<String, Value> {
    let values = [
        json!(s.requests),
        json!(s.prompt_tokens),
        json!(s.completion_tokens),
        json!(s.total_tokens),
        json!(s.no_usage),
        json!(s.errors),
        json!(s.p50_ms),
        json!(s.p99_ms),
    ];
    FIGURES.iter().map(|f| f.to_string()).zip(values).collect()
}
