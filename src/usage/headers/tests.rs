//! Tests of the captured headers: their JSON (escapes, credentials, repeats, invalid UTF-8) and its cut.
#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderValue};

use super::*;

#[test]
fn header_values_are_escaped_into_valid_json() {
    let tricky = "a\"b\\c\nd\te\u{1}f\u{e9}";
    let json = headers_json([("X-Odd", tricky.as_bytes()), ("x-odd", b"2".as_slice())]);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["x-odd"], format!("{tricky}, 2"));
}

fn json(headers: &[(&'static str, &'static str)]) -> serde_json::Value {
    let pairs = headers.iter().map(|(n, v)| (*n, v.as_bytes()));
    serde_json::from_str(&headers_json(pairs)).unwrap()
}

#[test]
fn credentials_are_redacted_whatever_the_case_of_their_names() {
    let headers = json(&[
        ("Authorization", "Bearer sk-secret"),
        ("API-KEY", "azure-secret"),
        ("X-Api-Key", "anthropic-secret"),
        ("Cookie", "session=1"),
        ("cookie", "other=2"),
        ("Proxy-Authorization", "Basic x"),
        ("Content-Type", "application/json"),
    ]);
    let expected = serde_json::json!({
        "authorization": "***",
        "api-key": "***",
        "x-api-key": "***",
        "cookie": "***",
        "proxy-authorization": "***",
        "content-type": "application/json",
    });
    assert_eq!(headers, expected);
    let text = headers.to_string();
    assert!(
        !text.contains("secret") && !text.contains("session"),
        "{text}"
    );
}

#[test]
fn repeated_headers_are_joined_and_values_decoded_lossily() {
    let pairs: [(&str, &[u8]); 3] = [
        ("Accept", b"text/plain"),
        ("X-Forwarded-For", b"1.2.3.4"),
        ("accept", b"application/\xffjson"),
    ];
    let headers: serde_json::Value = serde_json::from_str(&headers_json(pairs)).unwrap();
    let expected = serde_json::json!({
        "accept": "text/plain, application/\u{fffd}json",
        "x-forwarded-for": "1.2.3.4",
    });
    assert_eq!(headers, expected);
    assert_eq!(headers_json([]), "{}");
}

#[test]
fn captured_headers_render_like_headers_json_valid_or_not() {
    // Plain text (copied whole), invalid UTF-8 (the lossy path), and bytes JSON escapes: a quote, a
    // backslash and a tab, in a repeated header and alone.
    for odd in [&b"plain"[..], b"caf\xe9 (latin-1)", b"say \"hi\"\t\\o/"] {
        let mut headers = HeaderMap::new();
        headers.insert("x-odd", HeaderValue::from_bytes(odd).unwrap());
        headers.append("accept", HeaderValue::from_static("a/b"));
        headers.append("accept", HeaderValue::from_bytes(odd).unwrap());
        headers.append("accept", HeaderValue::from_static("c/d"));
        headers.insert("cookie", HeaderValue::from_static("secret=1"));
        headers.append("cookie", HeaderValue::from_static("secret=2"));
        headers.insert("host", HeaderValue::from_static("h"));
        let captured = capture_headers(&headers);
        let direct = headers_json(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        assert_eq!(captured.to_json(), direct);
        assert!(!direct.contains("secret"));
        let value: serde_json::Value = serde_json::from_str(&direct).unwrap();
        assert_eq!(value["cookie"], "***");
        assert_eq!(value["host"], "h");
        let odd = String::from_utf8_lossy(odd);
        assert_eq!(value["accept"], format!("a/b, {odd}, c/d"));
        assert_eq!(value["x-odd"], *odd);
    }
}

fn big_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("h"));
    headers.insert("authorization", HeaderValue::from_static("Bearer sk-x"));
    let big = "a\u{e9}\"\t".repeat(5000);
    headers.insert("x-big", HeaderValue::from_str(&big).unwrap());
    headers.insert("x-after", HeaderValue::from_static("z"));
    headers
}

fn parse(json: &str) -> serde_json::Map<String, serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    value.as_object().unwrap().clone()
}

#[test]
fn limited_headers_are_cut_into_valid_json_with_a_marker() {
    let mut captured = capture_headers(&big_headers());
    let whole = captured.to_json();
    assert!(whole.len() > 20_000);
    captured.limit(1000);
    assert!(
        captured.as_bytes().len() <= 1000,
        "the capture itself is cut"
    );
    let json = captured.render();
    assert!(json.len() <= 1000, "{} bytes", json.len());
    let object = parse(&json);
    assert_eq!(object["host"], "h");
    assert_eq!(object["authorization"], "***");
    let big = object["x-big"].as_str().unwrap();
    assert!(big.starts_with("a\u{e9}\"\ta"), "{big}");
    let (_, marker) = big.rsplit_once('…').unwrap();
    assert!(
        marker.starts_with("(+") && marker.ends_with(" bytes)"),
        "{marker}"
    );
    let left: usize = marker[2..marker.len() - 7].parse().unwrap();
    assert!(left > 20_000 - 1000, "{left} bytes left out");
    assert!(!object.contains_key("x-after"));
}

#[test]
fn every_limit_gives_valid_json_within_it() {
    let mut headers = big_headers();
    // A name longer than most limits below: the cut can fall inside a name too.
    let name = format!("x-{}", "n".repeat(300));
    headers.insert(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_static("v"),
    );
    let captured = capture_headers(&headers);
    for max in (0..600).chain([1000, 5000, 30_000, 100_000]) {
        let mut limited = captured.clone();
        limited.limit(max);
        let json = limited.render();
        assert!(
            json.len() <= max.max(2),
            "limit {max}: {} bytes",
            json.len()
        );
        let object = parse(&json);
        if max > 100 {
            assert_eq!(object["host"], "h", "limit {max}: {json}");
        }
        if max > 100 && max < 30_000 {
            assert!(json.contains("…(+"), "limit {max}: {json}");
        }
    }
}

#[test]
fn headers_within_the_limit_are_unchanged() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("cookie", HeaderValue::from_static("secret"));
    let mut captured = capture_headers(&headers);
    let whole = captured.to_json();
    captured.limit(whole.len());
    assert_eq!(captured.render(), whole);
    assert_eq!(capture_headers(&headers).render(), whole, "no limit");
}

#[test]
fn a_cut_capture_is_marked_even_when_its_json_fits() {
    // Repeated headers join into less JSON than the capture holds: the cut still shows.
    let mut headers = HeaderMap::new();
    for _ in 0..40 {
        headers.append("x-repeated-header-name", HeaderValue::from_static("v"));
    }
    let mut captured = capture_headers(&headers);
    let raw = captured.as_bytes().len();
    captured.limit(raw - 100);
    let json = captured.render();
    let object = parse(&json);
    let value = object["x-repeated-header-name"].as_str().unwrap();
    assert!(value.starts_with("v, v, v"), "{value}");
    assert!(value.ends_with("…(+100 bytes)"), "{value}");
}
