//! Tests of the shipper's pure parts: the table's columns and SQL, partitions, row conversion, the legacy id,
//! the URL and its TLS, backoff; and the progress kept in a monthly file (a SQLite temp file).
#![allow(clippy::unwrap_used)]

use chrono::{NaiveDate, TimeZone, Utc};
use rusqlite::types::ValueRef;

use super::batch::{day_of, parse_time, Values};
use super::schema::{self, SHIPPED};
use super::*;
use crate::usage::sqlite::schema as local;
use crate::usage::Month;

const NOVEMBER: Month = Month {
    year: 2026,
    month: 11,
};

#[test]
fn the_shared_table_has_the_files_columns_in_their_order() {
    let names: Vec<&str> = SHIPPED.iter().map(|c| c.name).collect();
    let local: Vec<&str> = local::COLUMNS.iter().map(|c| c.name).collect();
    assert_eq!(
        names, local,
        "a column added to the files needs its kind in ship::schema::SHIPPED"
    );
    let ddl = schema::create_table();
    assert!(
        ddl.starts_with(
            "CREATE TABLE IF NOT EXISTS records (\"Time\" timestamptz NOT NULL, \"IP\" text"
        ),
        "{ddl}"
    );
    for part in [
        "\"Headers\" jsonb",
        "\"CostUsd\" double precision",
        "\"Tool\" boolean",
        "\"RequestId\" uuid NOT NULL",
        "\"Node\" text NOT NULL",
        "\"LocalId\" bigint NOT NULL",
        "\"Day\" date NOT NULL",
        "UNIQUE (\"RequestId\", \"Time\")) PARTITION BY RANGE (\"Time\")",
    ] {
        assert!(ddl.contains(part), "{part} in {ddl}");
    }
    let added = schema::add_column(&schema::EXTRA[1]);
    assert_eq!(
        added,
        "ALTER TABLE records ADD COLUMN IF NOT EXISTS \"Day\" date"
    );
}

#[test]
fn one_insert_binds_one_array_per_column() {
    let sql = schema::insert();
    let columns = schema::columns().count();
    assert_eq!(columns, 31);
    assert!(sql.contains(&format!("${columns}::date[]")), "{sql}");
    assert!(!sql.contains(&format!("${}", columns + 1)), "{sql}");
    assert!(
        sql.contains("c9::jsonb") && sql.contains("c26::uuid"),
        "{sql}"
    );
    assert!(sql.ends_with("ON CONFLICT DO NOTHING"), "{sql}");
    assert_eq!(Batch::new().params().len(), columns);
}

#[test]
fn partitions_are_utc_months() {
    assert_eq!(schema::partition_name(NOVEMBER), "records_202611");
    let december = Month {
        year: 2026,
        month: 12,
    };
    assert_eq!(
        schema::partition_bounds(december),
        (
            "2026-12-01 00:00:00+00".to_owned(),
            "2027-01-01 00:00:00+00".to_owned()
        )
    );
    assert_eq!(
        schema::create_partition(NOVEMBER),
        "CREATE TABLE IF NOT EXISTS records_202611 PARTITION OF records FOR VALUES FROM \
         ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')"
    );
    // 1 December 03:00 at +08:00 is still November in UTC.
    let time = parse_time("2026-12-01T03:00:00.000+08:00").unwrap();
    assert_eq!(schema::utc_month(&time), NOVEMBER);
}

#[test]
fn the_legacy_request_id_is_stable_and_tells_rows_apart() {
    let id = legacy_request_id("gw-1", NOVEMBER, 42);
    assert_eq!(id, legacy_request_id("gw-1", NOVEMBER, 42));
    assert_eq!(id.get_version_num(), 8);
    assert_ne!(id, legacy_request_id("gw-2", NOVEMBER, 42));
    assert_ne!(id, legacy_request_id("gw-1", NOVEMBER, 43));
    let december = Month {
        year: 2026,
        month: 12,
    };
    assert_ne!(id, legacy_request_id("gw-1", december, 42));
    // The separator keeps ("gw-1", 2) apart from ("gw-12", ...).
    assert_ne!(
        legacy_request_id("gw-1", NOVEMBER, 2),
        legacy_request_id("gw-12", NOVEMBER, 2)
    );
}

#[test]
fn times_are_read_with_their_offset_or_as_utc() {
    let utc = |s: &str| Utc.from_utc_datetime(&s.parse().unwrap());
    assert_eq!(
        parse_time("2026-11-26T13:05:09.123+08:00"),
        Some(utc("2026-11-26T05:05:09.123"))
    );
    assert_eq!(
        parse_time("2026-11-26 13:05:09"),
        Some(utc("2026-11-26T13:05:09"))
    );
    assert_eq!(
        parse_time("2026-11-26T13:05:09.5"),
        Some(utc("2026-11-26T13:05:09.5"))
    );
    assert_eq!(parse_time("2026-11-26"), Some(utc("2026-11-26T00:00:00")));
    assert_eq!(parse_time("yesterday"), None);
    assert_eq!(parse_time(""), None);
    assert_eq!(
        day_of("2026-12-01T03:00:00+08:00"),
        NaiveDate::from_ymd_opt(2026, 12, 1)
    );
}

/// A full row as a monthly file holds it, every column in [`SHIPPED`] order.
fn values<'a>(
    time: &'a str,
    request_id: Option<&'a str>,
    node: Option<&'a str>,
) -> Vec<ValueRef<'a>> {
    let text = |s: &'a str| ValueRef::Text(s.as_bytes());
    let opt = |s: Option<&'a str>| s.map_or(ValueRef::Null, text);
    vec![
        text(time),
        text("10.0.0.1"),
        text("gpt-4o"),
        text("chat.completions"),
        ValueRef::Integer(34),
        text(" 12 "), // an integer stored as text by an older writer
        ValueRef::Real(46.0),
        ValueRef::Integer(1),
        ValueRef::Integer(0),
        text("{\"a\":\"b\""), // cut short: no JSON
        text("body\0with NUL"),
        ValueRef::Null,
        text("openai"),
        ValueRef::Null,
        ValueRef::Integer(0),
        ValueRef::Integer(200),
        ValueRef::Integer(321),
        ValueRef::Null,
        ValueRef::Integer(1),
        ValueRef::Integer(0),
        ValueRef::Null,
        ValueRef::Null,
        text("team"),
        ValueRef::Real(f64::INFINITY),
        ValueRef::Integer(1),
        ValueRef::Null,
        opt(request_id),
        opt(node),
        ValueRef::Integer(5),
    ]
}

fn column(batch: &Batch, name: &str) -> Values {
    let i = schema::columns().position(|c| c.name == name).unwrap();
    batch.column(i).clone()
}

#[test]
fn a_row_is_converted_to_the_tables_types() {
    let origin = Origin {
        node: "gw-9",
        month: NOVEMBER,
    };
    let mut batch = Batch::new();
    let id = "0191E1A6-5A3B-7C4D-8E9F-0123456789AB";
    batch
        .push(
            7,
            &values("2026-11-26T13:05:09.123+08:00", Some(id), Some("gw-1")),
            origin,
        )
        .unwrap();
    batch
        .push(
            8,
            &values("2026-11-30T23:30:00.000-05:00", None, None),
            origin,
        )
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch.ids(), [7, 8]);
    let utc = |s: &str| Utc.from_utc_datetime(&s.parse().unwrap());
    assert_eq!(
        column(&batch, "Time"),
        Values::Time(vec![
            utc("2026-11-26T05:05:09.123"),
            utc("2026-12-01T04:30:00")
        ])
    );
    // The partitions are those of the UTC months.
    let december = Month {
        year: 2026,
        month: 12,
    };
    assert_eq!(
        batch.months().iter().copied().collect::<Vec<_>>(),
        [NOVEMBER, december]
    );
    let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    assert_eq!(
        column(&batch, "Day"),
        Values::Day(vec![day(26), day(30)]),
        "the date as written"
    );
    assert_eq!(
        column(&batch, "LocalId"),
        Values::Int(vec![Some(7), Some(8)])
    );
    let legacy = legacy_request_id("gw-9", NOVEMBER, 8)
        .hyphenated()
        .to_string();
    assert_eq!(
        column(&batch, "RequestId"),
        Values::Text(vec![Some(id.to_ascii_lowercase()), Some(legacy)])
    );
    assert_eq!(
        column(&batch, "Node"),
        Values::Text(vec![Some("gw-1".into()), Some("gw-9".into())]),
        "a row without a node is the shipping node's"
    );
    assert_eq!(
        column(&batch, "PromptTokens"),
        Values::Int(vec![Some(12), Some(12)])
    );
    assert_eq!(
        column(&batch, "TotalTokens"),
        Values::Int(vec![Some(46), Some(46)])
    );
    assert_eq!(
        column(&batch, "Tool"),
        Values::Flag(vec![Some(true), Some(true)])
    );
    assert_eq!(
        column(&batch, "Stream"),
        Values::Flag(vec![Some(false), Some(false)])
    );
    assert_eq!(
        column(&batch, "FirstTokenMs"),
        Values::Int(vec![None, None])
    );
    assert_eq!(
        column(&batch, "CostUsd"),
        Values::Real(vec![None, None]),
        "not finite: unknown"
    );
    let headers = serde_json::to_string("{\"a\":\"b\"").unwrap();
    assert_eq!(
        column(&batch, "Headers"),
        Values::Text(vec![Some(headers.clone()), Some(headers)]),
        "text that is no JSON is kept as a JSON string"
    );
    assert_eq!(
        column(&batch, "Request"),
        Values::Text(vec![Some("body\u{fffd}with NUL".into()); 2])
    );
}

#[test]
fn a_row_that_cannot_be_shipped_leaves_the_batch_as_it_was() {
    let origin = Origin {
        node: "gw-1",
        month: NOVEMBER,
    };
    let mut batch = Batch::new();
    batch
        .push(1, &values("2026-11-26T13:05:09+00:00", None, None), origin)
        .unwrap();
    let before = batch.clone();
    let error = batch.push(2, &values("not a time", None, None), origin);
    assert_eq!(error, Err(RowError::Time { id: 2 }));
    let short = batch.push(
        3,
        &values("2026-11-26T13:05:09+00:00", None, None)[..5],
        origin,
    );
    assert!(matches!(short, Err(RowError::Width { id: 3, .. })));
    assert_eq!(batch, before);
    assert!(
        !error.unwrap_err().to_string().contains("not a time"),
        "no row contents in errors"
    );
}

#[test]
fn valid_json_headers_are_kept_as_they_are() {
    let origin = Origin {
        node: "gw-1",
        month: NOVEMBER,
    };
    let mut row = values("2026-11-26T13:05:09+00:00", None, None);
    let headers = "{\"content-type\":\"application/json\"}";
    row[9] = ValueRef::Text(headers.as_bytes());
    let mut batch = Batch::new();
    batch.push(1, &row, origin).unwrap();
    // jsonb refuses \u0000: such JSON is kept as a JSON string too.
    row[9] = ValueRef::Text(b"{\"x\":\"a\\u0000b\"}");
    batch.push(2, &row, origin).unwrap();
    assert_eq!(
        column(&batch, "Headers"),
        Values::Text(vec![
            Some(headers.into()),
            Some(serde_json::to_string("{\"x\":\"a\\u0000b\"}").unwrap())
        ])
    );
    assert_eq!(batch.row(1).ids(), [2]);
    assert_eq!(batch.row(1).len(), 1);
}

#[test]
fn the_url_keeps_its_ssl_settings_and_shows_no_password() {
    let (rest, ssl) = split_ssl(
        "postgres://u:pw@db:5433/usage?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
    );
    assert_eq!(rest, "postgres://u:pw@db:5433/usage?application_name=x");
    assert_eq!(ssl.mode.as_deref(), Some("verify-full"));
    assert_eq!(ssl.root_cert, Some(std::path::PathBuf::from("/etc/ca.pem")));
    assert_eq!(split_ssl("postgres://db/x").0, "postgres://db/x");
    assert_eq!(
        split_ssl("postgres://db/x?sslmode=require").0,
        "postgres://db/x"
    );

    let target =
        Target::parse("postgres://gw:s3cret@db.example:6432/usage?sslmode=require").unwrap();
    assert_eq!(target.key(), "db.example:6432/usage");
    assert_eq!(target.shown(), "postgres://gw@db.example:6432/usage");
    let target = Target::parse("postgresql://gw@127.0.0.1/postgres?password=s3cret").unwrap();
    assert_eq!(target.key(), "127.0.0.1:5432/postgres");
    assert!(!format!("{target:?}").contains("s3cret"));

    for bad in [
        "postgres://gw:s3cret@db/x?sslmode=sometimes",
        "postgres://gw:s3cret@db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        "postgres://gw:s3cret@db:notaport/x",
    ] {
        let error = Target::parse(bad).unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("***@db"), "{error}");
    }
}

#[test]
fn every_sslmode_builds_its_tls() {
    for mode in ["disable", "allow", "prefer", "require"] {
        let url = format!("postgres://db/x?sslmode={mode}");
        assert!(Target::parse(&url).is_ok(), "{mode}");
    }
    // verify-* read the system's roots, which a test machine may lack: either way, no panic.
    for mode in ["verify-ca", "verify-full"] {
        let url = format!("postgres://db/x?sslmode={mode}");
        if let Err(e) = Target::parse(&url) {
            assert!(e.to_string().contains("root certificates"), "{e}");
        }
    }
}

#[test]
fn backoff_doubles_up_to_five_seconds() {
    let waits: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
    assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
}

mod progress;
