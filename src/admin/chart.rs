//! Stacked bar charts as SVG drawn by the server: a bar per hour or day, a colour per series.

// Stacked bar charts as SVG, drawn by the server: a bar per hour or day, a colour per series (CSS classes, so light
// and dark themes and the `default-src 'self'` policy both hold), a `<title>` on every segment.
//
// Hand-written rather than `plotters`: the charts need rectangles, a few grid lines and labels, which is less code
// than adapting plotters' SVG backend (inline styles, which the page's CSP forbids) and no dependency.

use super::html::{count, Html};

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 52.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;
/// Colour classes `s0`..`s7` in the stylesheet; series beyond share the last.
const COLOURS: usize = 8;
const CLASSES: [&str; COLOURS] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"];

/// One stacked series: its name and a value per label.
pub struct Line<'a> {
    pub name: &'a str,
    pub values: &'a [i64],
}

/// The chart's `<svg>`: bars for `labels` (`YYYY-MM-DD` or `YYYY-MM-DDTHH`), the series stacked in order.
pub fn stacked_bars(h: &mut Html, title: &str, labels: &[String], lines: &[Line<'_>]) {
    let totals: Vec<i64> = (0..labels.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l.values.get(i).copied().unwrap_or(0).max(0))
                .sum()
        })
        .collect();
    let top = nice_max(totals.iter().copied().max().unwrap_or(0));
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / labels.len().max(1) as f64;
    let view_box = format!("0 0 {WIDTH} {HEIGHT}");
    h.open(
        "svg",
        &[
            ("class", Some("chart")),
            ("viewBox", Some(&view_box)),
            ("role", Some("img")),
            ("aria-label", Some(title)),
            ("xmlns", Some("http://www.w3.org/2000/svg")),
        ],
    );
    h.el("title", &[], title);
    for i in 0..=4 {
        let value = top * i / 4;
        let y = TOP + plot_h - plot_h * i as f64 / 4.0;
        let (x1, x2, y) = (
            format!("{LEFT}"),
            format!("{}", WIDTH - 4.0),
            format!("{y:.1}"),
        );
        h.open(
            "line",
            &[
                ("class", Some("grid")),
                ("x1", Some(&x1)),
                ("x2", Some(&x2)),
                ("y1", Some(&y)),
                ("y2", Some(&y)),
            ],
        )
        .close("line");
        let ty = format!("{:.1}", y_text(&y));
        let tx = format!("{}", LEFT - 6.0);
        h.el(
            "text",
            &[
                ("class", Some("axis")),
                ("x", Some(&tx)),
                ("y", Some(&ty)),
                ("text-anchor", Some("end")),
            ],
            &count(value),
        );
    }
    let every = labels.len().div_ceil(8).max(1);
    for (i, label) in labels.iter().enumerate() {
        let x = LEFT + slot * i as f64;
        let mut y = TOP + plot_h;
        for (s, line) in lines.iter().enumerate() {
            let value = line.values.get(i).copied().unwrap_or(0).max(0);
            if value == 0 {
                continue;
            }
            let height = plot_h * value as f64 / top.max(1) as f64;
            y -= height;
            let (bx, by) = (format!("{:.1}", x + slot * 0.1), format!("{y:.1}"));
            let (bw, bh) = (format!("{:.1}", slot * 0.8), format!("{height:.1}"));
            let class = format!("bar {}", CLASSES[s.min(COLOURS - 1)]);
            let value_text = value.to_string();
            h.open(
                "rect",
                &[
                    ("class", Some(&class)),
                    ("x", Some(&bx)),
                    ("y", Some(&by)),
                    ("width", Some(&bw)),
                    ("height", Some(&bh)),
                    ("data-value", Some(&value_text)),
                ],
            );
            let tip = format!("{label}  {}: {value}", shown(line.name));
            h.el("title", &[], &tip).close("rect");
        }
        if i % every == 0 {
            let tx = format!("{:.1}", x + slot / 2.0);
            let ty = format!("{}", HEIGHT - 6.0);
            h.el(
                "text",
                &[
                    ("class", Some("axis")),
                    ("x", Some(&tx)),
                    ("y", Some(&ty)),
                    ("text-anchor", Some("middle")),
                ],
                &short_label(label),
            );
        }
    }
    h.close("svg");
}

fn y_text(y: &str) -> f64 {
    y.parse::<f64>().unwrap_or(0.0) + 4.0
}

/// A series name as shown: a missing one is `-`.
pub fn shown(name: &str) -> &str {
    if name.is_empty() {
        "-"
    } else {
        name
    }
}

/// The colour class of series `i`.
pub fn class(i: usize) -> &'static str {
    CLASSES[i.min(COLOURS - 1)]
}

/// `MM-DD` for a day, `HH:00` for an hour.
fn short_label(label: &str) -> String {
    match label.get(11..13) {
        Some(hour) => format!("{hour}:00"),
        None => label.get(5..).unwrap_or(label).to_string(),
    }
}

/// The axis top: the smallest 1, 2, 4, 5 or 8 times a power of ten at or above `max` that four divides, so the
/// four grid steps are whole numbers.
fn nice_max(max: i64) -> i64 {
    let mut scale: i64 = 1;
    loop {
        for m in [1, 2, 4, 5, 8] {
            let top = m * scale;
            if top >= max && top % 4 == 0 {
                return top;
            }
        }
        scale = scale.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_and_names_are_escaped() {
        let labels = vec!["2026-11-01".to_string(), "2026-11-02".to_string()];
        let mut h = Html::new();
        stacked_bars(
            &mut h,
            "Requests",
            &labels,
            &[
                Line {
                    name: "<script>",
                    values: &[3, 0],
                },
                Line {
                    name: "",
                    values: &[1, 2],
                },
            ],
        );
        let svg = h.finish();
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("&lt;script&gt;: 3"), "{svg}");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("11-02"));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn axis_tops() {
        assert_eq!(nice_max(0), 4);
        assert_eq!(nice_max(7), 8);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(4321), 5000);
    }
}
