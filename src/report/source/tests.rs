//! The report over a fake source: what a source hands over is grouped and summed, and what it read is listed.
#![allow(clippy::unwrap_used)]

use chrono::NaiveDate;

use super::*;
use crate::report::summarize;

/// Hands over the same records whatever it is asked.
struct Fake(Vec<(Option<&'static str>, Fields)>);

impl Source for Fake {
    fn read(
        &mut self,
        _: Range,
        by: &[Dim],
        add: &mut dyn FnMut(Vec<Option<String>>, Fields),
    ) -> Result<Vec<PathBuf>, ReportError> {
        for (model, fields) in &self.0 {
            let key = by.iter().map(|_| model.map(String::from)).collect();
            add(key, *fields);
        }
        Ok(vec![PathBuf::from("fake")])
    }
}

fn fields(prompt: i64, status: i64, latency_ms: i64) -> Fields {
    Fields {
        prompt: Some(prompt),
        status: Some(status),
        latency_ms: Some(latency_ms),
        ..Fields::default()
    }
}

#[test]
fn a_sources_records_are_grouped_and_summed() {
    let mut source = Fake(vec![
        (Some("a"), fields(1, 200, 30)),
        (None, fields(2, 500, 20)),
        (Some("a"), fields(3, 200, 10)),
    ]);
    let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let range = Range { from: day, to: day };
    let report = summarize(&mut source, range, &[Dim::Model]).unwrap();
    assert_eq!(report.files, [PathBuf::from("fake")]);
    let keys: Vec<Option<String>> = report.rows.iter().map(|r| r.key[0].clone()).collect();
    assert_eq!(keys, [None, Some("a".to_string())]);
    let a = &report.rows[1].stats;
    assert_eq!((a.requests, a.prompt_tokens, a.errors), (2, 4, 0));
    assert_eq!((a.p50_ms, a.p99_ms), (Some(10), Some(30)));
    let total = &report.total;
    assert_eq!(
        (total.requests, total.prompt_tokens, total.errors),
        (3, 6, 1)
    );
    assert_eq!(total.completion_tokens, 0);
    assert_eq!(total.no_usage, 0, "a prompt count is a usage");
}
