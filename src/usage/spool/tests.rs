//! Tests of the spool: frames read back as written, torn and damaged files, locks of living and dead
//! processes, and the files a clean finish leaves (none).
#![allow(clippy::unwrap_used)]

use std::io::Write;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::frame::{self, Damaged, Frames, Next};
use super::*;
use crate::usage::record::{capture_headers, RawBody, RawTexts};
use crate::usage::sqlite::tests::{record, TIME};
use crate::usage::UsageRecord;

/// A record as a request hands it over: raw headers (one of them cut), request and response bytes.
pub(crate) fn captured(n: usize) -> CapturedRecord {
    let mut headers = HeaderMap::new();
    headers.insert("x-n", HeaderValue::from(n));
    headers.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
    headers.insert(
        "x-long",
        HeaderValue::from_str(&"abcdefghij".repeat(20)).unwrap(),
    );
    let mut headers = capture_headers(&headers);
    headers.limit(120);
    let mut row = record(TIME);
    (row.headers, row.request, row.response) = (String::new(), None, None);
    row.error = Some(format!("error {n} \u{e9}"));
    CapturedRecord {
        row,
        raw: Some(Box::new(RawTexts {
            headers,
            request: Some(Bytes::from(format!("{{\"n\":{n}}}"))),
            response: Some(RawBody::Bytes(Bytes::from_static(b"ok \xff"))),
            max_body: 1000,
        })),
    }
}

fn write_frames(path: &Path, records: &[CapturedRecord]) -> Vec<u64> {
    let mut file = File::create(path).unwrap();
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    let mut at = 0;
    for r in records {
        let blobs = frame::encode(r, &mut buf).unwrap();
        at += frame::write(&mut file, &buf, blobs).unwrap();
        ends.push(at);
    }
    file.flush().unwrap();
    ends
}

fn read_all(path: &Path) -> (Vec<(UsageRecord, u64)>, Next) {
    let mut frames = Frames::open(path).unwrap();
    let mut out = Vec::new();
    loop {
        match frames.read_next().unwrap() {
            Next::Record(r, end) => out.push((r.render(), end)),
            last => return (out, last),
        }
    }
}

#[test]
fn frames_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.seg");
    // A row already rendered, in a month and offset of its own.
    let rendered = || {
        let mut row = record("2026-01-31T23:59:59.5-03:30");
        (row.cost_usd, row.usage_estimated) = (Some(0.000_123_4), true);
        CapturedRecord::from(row)
    };
    let records = vec![captured(1), rendered(), captured(3)];
    let expected: Vec<UsageRecord> = [captured(1), rendered(), captured(3)]
        .into_iter()
        .map(CapturedRecord::render)
        .collect();
    let ends = write_frames(&path, &records);
    let (read, last) = read_all(&path);
    assert!(matches!(last, Next::End), "{last:?}");
    let rows: Vec<UsageRecord> = read.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(rows, expected);
    assert_eq!(
        (rows[1].cost_usd, rows[1].usage_estimated),
        (Some(0.000_123_4), true)
    );
    assert_eq!((rows[0].cost_usd, rows[0].usage_estimated), (None, false));
    assert_eq!(read.iter().map(|(_, e)| *e).collect::<Vec<_>>(), ends);
    // The cut headers keep their cut and marker through the spool.
    let headers: serde_json::Value = serde_json::from_str(&rows[0].headers).unwrap();
    assert_eq!(headers["x-n"], "1");
    assert_eq!(headers["authorization"], "***");
    assert!(rows[0].headers.contains("…(+"), "{}", rows[0].headers);
    assert_eq!(rows[0].response.as_deref(), Some("ok \u{fffd}"));
}

#[test]
fn a_torn_last_frame_ends_the_file_and_damage_before_it_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.seg");
    let ends = write_frames(&path, &[captured(1), captured(2), captured(3)]);
    // Cut inside the last frame's payload, then inside its header.
    for cut in [ends[2] - 5, ends[1] + 7] {
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (read, last) = read_all(&path);
        assert_eq!(read.len(), 2);
        assert!(matches!(last, Next::Torn(at) if at == ends[1]), "{last:?}");
    }
    // A last frame whose length is all there but whose bytes are not (zeros, as after a crash).
    write_frames(&path, &[captured(1), captured(2), captured(3)]);
    let whole = std::fs::read(&path).unwrap();
    let (second, third) = (
        usize::try_from(ends[1]).unwrap(),
        usize::try_from(ends[2]).unwrap(),
    );
    let mut bytes = whole[..second + frame::HEADER].to_vec();
    bytes.resize(third, 0);
    std::fs::write(&path, &bytes).unwrap();
    let (read, last) = read_all(&path);
    assert_eq!(read.len(), 2);
    assert!(matches!(last, Next::Torn(at) if at == ends[1]), "{last:?}");
    // The same damage in the middle: the frames after it cannot be trusted.
    write_frames(&path, &[captured(1), captured(2), captured(3)]);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = usize::try_from(ends[0]).unwrap() + frame::HEADER + 3;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mut frames = Frames::open(&path).unwrap();
    assert!(matches!(frames.read_next().unwrap(), Next::Record(..)));
    assert!(matches!(frames.read_next(), Err(Damaged::Checksum)));
}

fn names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn the_spool_of_a_living_process_is_left_alone_and_a_dead_ones_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let living = Spool::new(dir.path());
    let spooled: Vec<Spooled> = (0..3)
        .map(|n| living.shard().append(&captured(n)).unwrap())
        .collect();
    assert_eq!(spooled[2].segment.name(), spooled[0].segment.name());
    let files = names(living.dir());
    assert_eq!(files.len(), 2, "a lock file and a segment: {files:?}");
    let other = Spool::new(dir.path());
    assert!(other.orphans().is_empty(), "its lock is held");
    // The process dies: its lock goes with it, its files stay.
    drop(spooled);
    drop(living);
    let mut orphans = other.orphans();
    assert_eq!(orphans.len(), 1);
    assert!(other.orphans().is_empty(), "already being imported");
    let third = Spool::new(dir.path());
    assert!(third.orphans().is_empty(), "locked by the importer");
    let mut rows = Vec::new();
    while let Next::Record(r, _) = orphans[0].frames.read_next().unwrap() {
        rows.push(r.render());
    }
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].request.as_deref(), Some("{\"n\":2}"));
    let orphan = orphans.pop().unwrap();
    other.imported(&orphan.segment);
    assert!(other.collect().is_empty(), "the import still holds it");
    drop(orphan);
    assert_eq!(other.collect().len(), 1);
    assert!(
        names(other.dir()).is_empty(),
        "segment and lock file deleted"
    );
}

#[test]
fn an_abandoned_import_leaves_its_files_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let dead = Spool::new(dir.path());
    dead.shard().append(&captured(1)).unwrap();
    drop(dead);
    let first = Spool::new(dir.path());
    let orphans = first.orphans();
    assert_eq!(orphans.len(), 1);
    first.abandon(orphans);
    assert!(first.collect().is_empty());
    assert_eq!(names(first.dir()).len(), 2);
    drop(first);
    let second = Spool::new(dir.path());
    assert_eq!(second.orphans().len(), 1, "imported by the next start");
}

#[test]
fn finish_deletes_the_files_of_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path());
    assert!(
        !spool.dir().exists(),
        "nothing on disk before the first record"
    );
    let spooled = spool.shard().append(&captured(1)).unwrap();
    assert!(spool.collect().is_empty(), "the open segment stays");
    drop(spooled);
    spool.finish();
    assert!(!spool.dir().exists(), "{:?}", names(spool.dir()));
    // A record after the finish opens a new segment (and lock file) again.
    assert!(spool.shard().append(&captured(2)).is_some());
    assert_eq!(names(spool.dir()).len(), 2);
}

#[test]
fn a_full_segment_is_deleted_once_its_records_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path());
    let mut big = captured(1);
    big.raw.as_mut().unwrap().request = Some(Bytes::from(vec![b'x'; 1 << 20]));
    let mut held = Vec::new();
    while held.len() < 9 {
        held.push(spool.shard().append(&big).unwrap());
    }
    let first = held[0].segment.name().to_owned();
    assert_ne!(held[8].segment.name(), first, "8 MiB make a segment full");
    assert!(spool.collect().is_empty(), "its records still wait");
    held.retain(|s| s.segment.name() != first);
    assert_eq!(spool.collect(), [first]);
    assert_eq!(names(spool.dir()).len(), 2);
}

#[test]
fn a_record_that_cannot_be_spooled_is_refused_not_half_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spool"), "a file where the spool should be").unwrap();
    let spool = Spool::new(dir.path());
    assert!(spool.shard().append(&captured(1)).is_none());
    // A response still to be made cannot be spooled either.
    let mut later = captured(2);
    later.raw.as_mut().unwrap().response = Some(RawBody::Later(Box::new(|| "x".into())));
    let mut buf = Vec::new();
    assert!(frame::encode(&later, &mut buf).is_none());
    later.settle();
    assert!(frame::encode(&later, &mut buf).is_some());
}

/// Frames written by version 1 (before the cost), byte for byte: a rendered row (ip "ip", model "m", kind "k",
/// headers "{}", request "rq", backend "b", error "e", key "t"), and `captured(7)` with ip "ip" and no error.
const VERSION_1: [&str; 2] = [
    concat!(
        "475552318600000076e40ac00105be076b00000000c0d454078070000000000000020000006970010000006d010000006b01",
        "0c00000000000000012200000000000000012e000000000000000100000000000000000001020000007b7d01020000007271",
        "0001010000006200c80000004101000000000000012d000000000000000100000001010000006501010000007400",
    ),
    concat!(
        "47555231540100004968a3e30105be076b00000000c0d454078070000000000000020000006970060000006770742d346f",
        "10000000636861742e636f6d706c6574696f6e73010c00000000000000012200000000000000012e000000000000000100",
        "00000000000000000100000000000001060000006f70656e616901110000006770742d346f2d323032342d30382d3036c8",
        "0000004101000000000000012d00000000000000010000000001040000007465616d01e8030000000000006d0000000000",
        "00000178000000000000007800000001070000000104000000782d6e3a370a617574686f72697a6174696f6e3a0a782d6c",
        "6f6e673a6162636465666768696a6162636465666768696a6162636465666768696a6162636465666768696a6162636465",
        "666768696a6162636465666768696a6162636465666768696a6162636465666768696a6162636465666768696a61627b22",
        "6e223a377d6f6b20ff",
    ),
];

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn frames_of_version_1_read_as_unpriced_and_not_estimated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.seg");
    let bytes: Vec<u8> = VERSION_1.iter().flat_map(|h| unhex(h)).collect();
    std::fs::write(&path, &bytes).unwrap();
    let (read, last) = read_all(&path);
    assert!(matches!(last, Next::End), "{last:?}");
    let mut row = record(TIME);
    (row.ip, row.model, row.kind, row.headers) = ("ip".into(), "m".into(), "k".into(), "{}".into());
    (row.request, row.response, row.upstream_model) = (Some("rq".into()), None, None);
    (row.backend, row.error, row.key_name) = (Some("b".into()), Some("e".into()), Some("t".into()));
    let mut raw = captured(7);
    (raw.row.ip, raw.row.error) = ("ip".into(), None);
    let rows: Vec<UsageRecord> = read.into_iter().map(|(r, _)| r).collect();
    assert_eq!(rows, [row, raw.render()]);
    // Written again now, the same records read back the same, in frames of the new version.
    for (i, row) in rows.iter().enumerate() {
        let mut buf = Vec::new();
        let record = CapturedRecord::from(row.clone());
        frame::encode(&record, &mut buf).unwrap();
        assert_eq!(buf[frame::HEADER], 5, "version");
        assert_eq!(
            frame::decode(&buf[frame::HEADER..]).unwrap().row,
            *row,
            "{i}"
        );
        // An unknown later version is refused, not misread.
        buf[frame::HEADER] = 6;
        assert!(matches!(
            frame::decode(&buf[frame::HEADER..]),
            Err(Damaged::Malformed("version"))
        ));
    }
}

/// A version-2 frame is a version-3 one without the affinity key: the same record without a key, its key's
/// byte taken out and the version put back, reads as the record without a key; a key round-trips in version 3.
#[test]
fn frames_of_version_2_read_without_an_affinity_key() {
    let mut row = record(TIME);
    (row.cost_usd, row.usage_estimated, row.affinity_key) = (Some(0.25), true, None);
    let mut buf = Vec::new();
    frame::encode(&CapturedRecord::from(row.clone()), &mut buf).unwrap();
    let mut payload = buf[frame::HEADER..].to_vec();
    let n = payload.len();
    assert_eq!(
        payload[n - 5..],
        [0; 5],
        "no affinity key, id, node, cache writes, raw texts"
    );
    payload.drain(n - 5..n - 1);
    payload[0] = 2;
    assert_eq!(frame::decode(&payload).unwrap().row, row);
    row.affinity_key = Some("0123456789ab".into());
    let mut buf = Vec::new();
    frame::encode(&CapturedRecord::from(row.clone()), &mut buf).unwrap();
    assert_eq!(frame::decode(&buf[frame::HEADER..]).unwrap().row, row);
}

/// A version-3 frame is a version-4 one without the request id and node: they read as absent; both
/// round-trip in version 4.
#[test]
fn frames_of_version_3_read_without_a_request_id_or_node() {
    let mut row = record(TIME);
    row.affinity_key = Some("0123456789ab".into());
    let mut buf = Vec::new();
    frame::encode(&CapturedRecord::from(row.clone()), &mut buf).unwrap();
    let mut payload = buf[frame::HEADER..].to_vec();
    let n = payload.len();
    assert_eq!(
        payload[n - 4..],
        [0; 4],
        "no id, no node, no cache writes, no raw texts"
    );
    payload.drain(n - 4..n - 1);
    payload[0] = 3;
    assert_eq!(frame::decode(&payload).unwrap().row, row);
    row.request_id = Some("0190a5b2-0000-7000-8000-000000000001".into());
    row.node = Some("gw-1".into());
    let mut buf = Vec::new();
    frame::encode(&CapturedRecord::from(row.clone()), &mut buf).unwrap();
    assert_eq!(frame::decode(&buf[frame::HEADER..]).unwrap().row, row);
}

/// A version-4 frame is a version-5 one without the cache write tokens: they read as absent; they round-trip
/// in version 5.
#[test]
fn frames_of_version_4_read_without_cache_writes() {
    let mut row = record(TIME);
    let mut buf = Vec::new();
    frame::encode(&CapturedRecord::from(row.clone()), &mut buf).unwrap();
    let mut payload = buf[frame::HEADER..].to_vec();
    let n = payload.len();
    assert_eq!(payload[n - 2..], [0; 2], "no cache writes, no raw texts");
    payload.remove(n - 2);
    payload[0] = 4;
    assert_eq!(frame::decode(&payload).unwrap().row, row);
    row.tokens.cache_write = Some(5);
    let mut buf = Vec::new();
    frame::encode(&CapturedRecord::from(row.clone()), &mut buf).unwrap();
    assert_eq!(frame::decode(&buf[frame::HEADER..]).unwrap().row, row);
}

#[test]
fn a_segment_is_emptied_in_steps_before_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.0.seg");
    std::fs::write(
        &path,
        vec![7u8; (SHRINK_STEP * 2 + SHRINK_STEP / 2) as usize],
    )
    .unwrap();
    let yields = super::pace::yields();
    shrink(&path);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    // A pace step after each of the three cuts (whether each yields depends on the time they took).
    assert!(super::pace::yields() <= yields + 3);
    // A file already gone is left to the deletion.
    shrink(&dir.path().join("gone.seg"));
}
