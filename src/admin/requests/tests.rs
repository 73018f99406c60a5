//! Tests of the request list: newest first, filters, pages across month files, ids.
#![allow(clippy::unwrap_used)]

use chrono::NaiveDate;

use super::*;
use crate::usage::sqlite::tests::record;
use crate::usage::Store;

fn seed(dir: &std::path::Path) {
    let mut records = Vec::new();
    for (month, days) in [(10, 31), (11, 30)] {
        for i in 0..40u32 {
            let mut r = record(&format!(
                "2026-{month}-{:02}T10:00:{:02}.000+08:00",
                1 + i % days,
                i % 60
            ));
            r.model = if i % 4 == 0 {
                "rare".into()
            } else {
                "common".into()
            };
            r.status = if i % 5 == 0 { 503 } else { 200 };
            r.stream = i % 2 == 0;
            records.push(r);
        }
    }
    Store::new(dir).write(&records).unwrap();
}

#[test]
fn pages_go_newest_first_across_months() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let files = Files {
        dir: dir.path().to_path_buf(),
    };
    let mut filter = Filter {
        limit: 15,
        ..Filter::default()
    };
    let mut seen: Vec<(String, String)> = Vec::new();
    loop {
        let page = list(&files, &filter).unwrap();
        for r in &page.requests {
            seen.push((
                r["time"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            ));
        }
        match page.next {
            Some(next) => filter.before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 80);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        seen.iter().map(|s| &s.0).collect::<Vec<_>>(),
        sorted.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    assert!(seen[0].1.starts_with("202611-"));
    assert!(seen[79].1.starts_with("202610-"));
    let distinct: std::collections::HashSet<_> = seen.iter().map(|s| &s.1).collect();
    assert_eq!(distinct.len(), 80, "no record twice");
}

#[test]
fn filters_narrow_the_list() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let files = Files {
        dir: dir.path().to_path_buf(),
    };
    let all = Filter {
        limit: 500,
        ..Filter::default()
    };
    let count = |f: Filter| list(&files, &f).unwrap().requests.len();
    assert_eq!(count(all.clone()), 80);
    assert_eq!(
        count(Filter {
            model: Some("rare".into()),
            ..all.clone()
        }),
        20
    );
    assert_eq!(
        count(Filter {
            status: Some(Status::Code(503)),
            ..all.clone()
        }),
        16
    );
    assert_eq!(
        count(Filter {
            status: Some(Status::Class(5)),
            ..all.clone()
        }),
        16
    );
    assert_eq!(
        count(Filter {
            status: Some(Status::Errors),
            ..all.clone()
        }),
        16
    );
    assert_eq!(
        count(Filter {
            stream: Some(true),
            ..all.clone()
        }),
        40
    );
    let november = Range {
        from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
    };
    assert_eq!(
        count(Filter {
            range: Some(november),
            model: Some("rare".into()),
            ..all.clone()
        }),
        10
    );
    assert_eq!(
        count(Filter {
            key: Some("nobody".into()),
            ..all
        }),
        0
    );
}

#[test]
fn ids_and_statuses_parse_strictly() {
    let id = RecordId::parse("202611-42").unwrap();
    assert_eq!(id.to_string(), "202611-42");
    for bad in ["202613-1", "202611-0", "202611-x", "2026-11-1", "202611"] {
        assert_eq!(RecordId::parse(bad), None, "{bad}");
    }
    assert_eq!(Status::parse("5xx"), Some(Status::Class(5)));
    assert_eq!(Status::parse("error"), Some(Status::Errors));
    assert_eq!(Status::parse("404"), Some(Status::Code(404)));
    assert_eq!(Status::parse("9xx"), None);
    assert_eq!(Status::parse("abc"), None);
}
