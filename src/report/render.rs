//! The three shapes of a usage report: an aligned table, CSV and JSON.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::{Report, Stats};

/// The widest a group value is shown in the table, in characters; a longer one is cut and ends in `…`.
pub const MAX_CELL: usize = 64;

/// The figure columns, after the group columns, in every format. Columns added later go at the end, so that
/// a script reading the CSV by position keeps reading the same figures.
const FIGURES: [&str; 12] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "no_usage",
    "errors",
    "p50_ms",
    "p99_ms",
    "estimated",
    "cost_usd",
    "cached_tokens",
    "cache_write_tokens",
];

/// Decimals of a cost in the table: a hundredth of a cent, enough to tell small sums apart at a glance.
const TABLE_CENTS: u32 = 4;
/// Decimals of a cost in CSV and JSON: a millionth of a dollar, about what one small request costs.
const COST_DECIMALS: u32 = 6;

fn figures(s: &Stats, cost_decimals: u32) -> [Option<String>; 12] {
    [
        Some(s.requests.to_string()),
        Some(s.prompt_tokens.to_string()),
        Some(s.completion_tokens.to_string()),
        Some(s.total_tokens.to_string()),
        Some(s.no_usage.to_string()),
        Some(s.errors.to_string()),
        s.p50_ms.map(|ms| ms.to_string()),
        s.p99_ms.map(|ms| ms.to_string()),
        Some(s.estimated.to_string()),
        s.cost_usd.map(|usd| usd.decimal(cost_decimals)),
        Some(s.cached_tokens.to_string()),
        Some(s.cache_write_tokens.to_string()),
    ]
}

fn header(report: &Report) -> Vec<String> {
    let groups = report.by.iter().map(|dim| dim.name().to_string());
    groups
        .chain(FIGURES.iter().map(|f| f.to_string()))
        .collect()
}

/// Group values left-aligned (each cut to [`MAX_CELL`] characters, see [`table_cell`]), figures right-aligned,
/// two spaces between columns; a missing value is `-`. When grouped, a dashed rule and a `total` row close the table.
pub fn table(report: &Report) -> String {
    let dash = |cell: &Option<String>| cell.clone().unwrap_or_else(|| "-".into());
    let group = |cell: &Option<String>| cell.as_deref().map_or_else(|| "-".into(), table_cell);
    let mut lines: Vec<Vec<String>> = vec![header(report)];
    for row in &report.rows {
        let groups = row.key.iter().map(group);
        let figures = figures(&row.stats, TABLE_CENTS);
        lines.push(groups.chain(figures.iter().map(dash)).collect());
    }
    let grouped = !report.by.is_empty();
    if grouped {
        let label = (0..report.by.len()).map(|i| if i == 0 { "total" } else { "" }.to_string());
        lines.push(
            label
                .chain(figures(&report.total, TABLE_CENTS).iter().map(dash))
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
    // Padded by hand: a width argument to `format!` panics beyond 65,535.
    let format = |line: &[String]| {
        let cells = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, width))| {
                let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
                if c < report.by.len() {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
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
        let groups = row.key.iter().map(|v| v.as_deref().map(defuse));
        let cells = groups
            .chain(figures(&row.stats, COST_DECIMALS))
            .map(Option::unwrap_or_default);
        line(cells.collect());
    }
    out
}

/// A stored value for a CSV cell: one that a spreadsheet would run as a formula (starting with `=`, `+`, `-`
/// or `@`) gets a leading `'`, which shows it as text. Group values come from records, and a model name is
/// whatever a caller sent.
pub fn defuse(value: &str) -> String {
    if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_string()
    }
}

/// RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled. Other control
/// characters (a tab, ESC, NUL...) are escaped as in the table, so that no field sends the terminal a sequence.
pub fn csv_field(field: &str) -> String {
    let field = escape_controls(field, &['\r', '\n']);
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.into_owned()
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
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    let mut text = json_escape_rest(&text);
    text.push('\n');
    text
}

/// serde_json escapes the C0 controls in strings, but writes DEL, the C1 controls (U+0080-U+009F, which some
/// terminals obey: U+009B is CSI) and the bidi overrides as they are. Those can only stand inside strings in
/// its output (the line breaks and spaces between values are ASCII), where `\uXXXX` is the same value.
pub fn json_escape_rest(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c >= '\u{7f}' && needs_escape(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
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
        json!(s.estimated),
        json!(s.cost_usd.map(|usd| usd.rounded(COST_DECIMALS))),
        json!(s.cached_tokens),
        json!(s.cache_write_tokens),
    ];
    FIGURES.iter().map(|f| f.to_string()).zip(values).collect()
}

/// A stored value as one table cell: control characters escaped ([`escape_controls`]) so that it cannot break
/// the line or reach the terminal as a sequence, then cut to at most [`MAX_CELL`] characters, the last a `…`
/// when something was cut. Stops reading at the cut, so a huge value costs no more than a short one.
pub fn table_cell(value: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    // The length of `out` up to where a `…` still fits.
    let mut keep = 0;
    for c in value.chars() {
        if width < MAX_CELL {
            keep = out.len();
        }
        width += push_escaped(&mut out, c);
        if width > MAX_CELL {
            out.truncate(keep);
            out.push('…');
            return out;
        }
    }
    out
}

/// `text` with its control characters (and the invisible ones that reorder or break a line) written as
/// `\n`, `\r`, `\t` or `\u001b`-style escapes, except those in `keep`.
pub fn escape_controls<'t>(text: &'t str, keep: &[char]) -> Cow<'t, str> {
    if !text.chars().any(|c| needs_escape(c) && !keep.contains(&c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if keep.contains(&c) {
            out.push(c);
        } else {
            push_escaped(&mut out, c);
        }
    }
    Cow::Owned(out)
}

/// Appends `c`, escaped if it needs it; returns how many characters were appended.
fn push_escaped(out: &mut String, c: char) -> usize {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
            return 6;
        }
        c => {
            out.push(c);
            return 1;
        }
    }
    2
}

/// C0, DEL and C1 controls, the Unicode line and paragraph separators, and the bidi marks and overrides that
/// make a terminal show text in another order than it is stored.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
