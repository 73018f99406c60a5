//! Unit tests of the metrics: rendered series, bounded labels, scrape-time sources.
#![allow(clippy::unwrap_used)]

use super::*;

fn tokens(prompt: i64, completion: i64) -> TokenUsage {
    TokenUsage {
        prompt: Some(prompt),
        completion: Some(completion),
        total: Some(prompt + completion),
        cached: Some(0),
        reasoning: None,
        cache_write: None,
    }
}

fn finish(m: &Metrics, model: &str, backend: Option<&str>, status: u16) {
    m.request_started();
    let ttfb = Some(Duration::from_millis(20));
    m.request_finished(
        model,
        backend,
        status,
        Duration::from_millis(30),
        ttfb,
        &tokens(10, 5),
    );
}

/// The lines of `text` for metric `name` (samples only, no HELP/TYPE).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = [format!("{name}{{"), format!("{name} ")];
    text.lines()
        .filter(|l| prefix.iter().any(|p| l.starts_with(p.as_str())))
        .collect()
}

#[test]
fn requests_latency_and_tokens_are_rendered_by_model_and_backend() {
    let m = Metrics::new().unwrap();
    m.set_known_models(["gpt-4".to_string(), "deepseek-chat".to_string()]);
    finish(&m, "gpt-4", Some("openai"), 200);
    finish(&m, "gpt-4", Some("openai"), 200);
    finish(&m, "gpt-4", Some("openai"), 429);
    finish(&m, "deepseek-chat", None, 404);
    m.request_started();
    let text = m.render();
    let requests = samples(&text, "gpt_api_requests_total");
    assert_eq!(
        requests,
        [
            r#"gpt_api_requests_total{backend="none",model="deepseek-chat",status="404"} 1"#,
            r#"gpt_api_requests_total{backend="openai",model="gpt-4",status="200"} 2"#,
            r#"gpt_api_requests_total{backend="openai",model="gpt-4",status="429"} 1"#,
        ]
    );
    assert!(text.contains("gpt_api_requests_in_flight 1\n"), "{text}");
    assert!(
        text.contains(r#"gpt_api_tokens_total{backend="openai",kind="prompt",model="gpt-4"} 30"#)
    );
    assert!(text
        .contains(r#"gpt_api_tokens_total{backend="openai",kind="completion",model="gpt-4"} 15"#));
    assert!(
        text.contains(r#"gpt_api_tokens_total{backend="openai",kind="reasoning",model="gpt-4"} 0"#)
    );
    assert!(text.contains(
        r#"gpt_api_request_duration_seconds_bucket{backend="openai",model="gpt-4",le="0.025"} 0"#
    ));
    assert!(text.contains(
        r#"gpt_api_request_duration_seconds_bucket{backend="openai",model="gpt-4",le="0.05"} 3"#
    ));
    assert!(text.contains(
        r#"gpt_api_time_to_first_byte_seconds_bucket{backend="openai",model="gpt-4",le="0.025"} 3"#
    ));
    assert!(text.contains(
        r#"gpt_api_request_duration_seconds_bucket{backend="openai",model="gpt-4",le="600"} 3"#
    ));
    assert!(text.contains("# TYPE gpt_api_request_duration_seconds histogram"));
}

#[test]
fn unknown_models_are_other_and_labels_stay_bounded() {
    let m = Metrics::new().unwrap();
    m.set_known_models(["gpt-4".to_string()]);
    for i in 0..100 {
        finish(&m, &format!("made-up-{i}"), Some("local"), 200);
    }
    finish(&m, "gpt-4o", Some("local"), 200);
    let text = m.render();
    assert_eq!(
        samples(&text, "gpt_api_requests_total"),
        [r#"gpt_api_requests_total{backend="local",model="other",status="200"} 101"#]
    );
    assert!(!text.contains("made-up"));
    assert_eq!(samples(&text, "gpt_api_tokens_total").len(), 4);
}

#[test]
fn a_reload_changes_the_known_models_and_keeps_counts() {
    let m = Metrics::new().unwrap();
    m.set_known_models(["a".to_string()]);
    finish(&m, "a", Some("x"), 200);
    finish(&m, "b", Some("x"), 200);
    m.set_known_models(["a".to_string(), "b".to_string()]);
    finish(&m, "a", Some("x"), 200);
    finish(&m, "b", Some("x"), 200);
    let text = m.render();
    assert_eq!(
        samples(&text, "gpt_api_requests_total"),
        [
            r#"gpt_api_requests_total{backend="x",model="a",status="200"} 2"#,
            r#"gpt_api_requests_total{backend="x",model="b",status="200"} 1"#,
            r#"gpt_api_requests_total{backend="x",model="other",status="200"} 1"#,
        ]
    );
}

#[test]
fn failovers_and_backend_health() {
    let m = Metrics::new().unwrap();
    m.failover("a", "connect");
    m.failover("a", "503");
    m.failover("a", "5xx");
    m.failover("a", "429");
    m.failover("a", "anything the caller made up");
    m.failover("b", "timeout");
    m.backend_health("a", 3, true);
    m.backend_health("b", 1, false);
    m.backend_health("b", 0, false);
    let text = m.render();
    assert_eq!(
        samples(&text, "gpt_api_failovers_total"),
        [
            r#"gpt_api_failovers_total{backend="a",reason="429"} 1"#,
            r#"gpt_api_failovers_total{backend="a",reason="5xx"} 2"#,
            r#"gpt_api_failovers_total{backend="a",reason="connect"} 1"#,
            r#"gpt_api_failovers_total{backend="a",reason="other"} 1"#,
            r#"gpt_api_failovers_total{backend="b",reason="timeout"} 1"#,
        ]
    );
    assert!(text.contains(r#"gpt_api_backend_consecutive_failures{backend="a"} 3"#));
    assert!(text.contains(r#"gpt_api_backend_cooling{backend="a"} 1"#));
    assert!(text.contains(r#"gpt_api_backend_consecutive_failures{backend="b"} 0"#));
    assert!(text.contains(r#"gpt_api_backend_cooling{backend="b"} 0"#));
    assert_eq!(status_reason(404), "4xx");
    assert_eq!(status_reason(200), "other");
}

#[test]
fn usage_and_reload_counts_are_read_at_scrape_time() {
    let m = Metrics::new().unwrap();
    let stats = Arc::new(UsageStats::default());
    m.watch_usage(stats.clone());
    let reloads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = reloads.clone();
    m.watch_reloads(move || (seen.load(Relaxed), 1));
    // The depth is the records accepted and not yet committed (`waiting`), not only those in the channel.
    stats.waiting.store(7, Relaxed);
    stats.waiting_bytes.store(7 << 20, Relaxed);
    stats.written.store(100, Relaxed);
    stats.dropped.store(2, Relaxed);
    stats.write_errors.store(1, Relaxed);
    reloads.store(4, Relaxed);
    m.reload(true);
    let text = m.render();
    assert!(text.contains("gpt_api_usage_queue_depth 7\n"), "{text}");
    assert!(
        text.contains("gpt_api_usage_queue_bytes 7340032\n"),
        "{text}"
    );
    assert!(text.contains("gpt_api_usage_records_written_total 100\n"));
    assert!(text.contains("gpt_api_usage_records_dropped_total 2\n"));
    assert!(text.contains("gpt_api_usage_write_errors_total 1\n"));
    assert!(text.contains(r#"gpt_api_config_reloads_total{outcome="applied"} 4"#));
    assert!(text.contains(r#"gpt_api_config_reloads_total{outcome="rejected"} 1"#));
    stats.written.store(150, Relaxed);
    stats.waiting.store(0, Relaxed);
    let text = m.render();
    assert!(text.contains("gpt_api_usage_records_written_total 150\n"));
    assert!(text.contains("gpt_api_usage_queue_depth 0\n"));
    assert!(text.contains(r#"gpt_api_config_reloads_total{outcome="applied"} 4"#));
}

#[test]
fn instances_do_not_share_series() {
    let a = Metrics::new().unwrap();
    let b = Metrics::new().unwrap();
    finish(&a, "m", Some("x"), 200);
    assert!(samples(&b.render(), "gpt_api_requests_total").is_empty());
    assert_eq!(samples(&a.render(), "gpt_api_requests_total").len(), 1);
    let text = Metrics::new().unwrap().render();
    assert!(text.contains("gpt_api_requests_in_flight 0\n"), "{text}");
    assert!(text.contains(r#"gpt_api_config_reloads_total{outcome="applied"} 0"#));
}

#[test]
fn concurrent_first_requests_share_one_series() {
    let m = Metrics::new().unwrap();
    m.set_known_models(["m".to_string()]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..250u16 {
                    finish(&m, "m", Some("x"), 200 + i % 3);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let text = m.render();
    let counts: u64 = samples(&text, "gpt_api_requests_total")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counts, 1000);
    assert!(text.contains(r#"gpt_api_request_duration_seconds_count{backend="x",model="m"} 1000"#));
}

#[test]
fn the_scrape_service_builds() {
    let s = service(Metrics::new().unwrap(), "127.0.0.1:0");
    assert_eq!(s.threads, Some(1));
}

#[test]
fn known_models_are_the_configured_match_values() {
    let text = "openai_clients:\n\
                - {name: a, base_url: 'http://h', model_match: {type: keyword, value: [gpt-4, o1]}}\n\
                - {name: b, base_url: 'http://h', model_match: {type: exact, value: gpt-4}}\n";
    let config = crate::config::Config::parse(text, &|_| None).unwrap();
    assert_eq!(known_models(&config), ["gpt-4", "o1"]);
}

#[test]
fn costs_are_counted_by_model_and_backend_with_the_request_labels() {
    let m = Metrics::new().unwrap();
    m.set_known_models(["gpt-4".to_string()]);
    finish(&m, "gpt-4", Some("openai"), 200);
    m.add_cost("gpt-4", Some("openai"), 0.25);
    m.add_cost("gpt-4", Some("openai"), 0.000_125);
    // An unknown model is "other" and no backend is "none", as for the other series.
    m.add_cost("made-up", Some("openai"), 1.5);
    m.add_cost("gpt-4", None, 0.0);
    // A pair that is never priced has no cost series (not a misleading 0).
    finish(&m, "gpt-4", Some("azure"), 200);
    let text = m.render();
    assert_eq!(
        samples(&text, "gpt_api_cost_usd_total"),
        [
            r#"gpt_api_cost_usd_total{backend="none",model="gpt-4"} 0"#,
            r#"gpt_api_cost_usd_total{backend="openai",model="gpt-4"} 0.250125"#,
            r#"gpt_api_cost_usd_total{backend="openai",model="other"} 1.5"#,
        ]
    );
    assert!(
        text.contains("# TYPE gpt_api_cost_usd_total counter"),
        "{text}"
    );
    assert!(!text.contains("made-up"));
}

#[test]
fn a_cost_that_is_negative_infinite_or_not_a_number_is_ignored() {
    let m = Metrics::new().unwrap();
    for bad in [
        -0.01,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -f64::MIN_POSITIVE,
    ] {
        m.add_cost("m", Some("x"), bad);
    }
    assert!(samples(&m.render(), "gpt_api_cost_usd_total").is_empty());
    m.add_cost("m", Some("x"), 2.0);
    m.add_cost("m", Some("x"), f64::NAN);
    m.add_cost("m", Some("x"), -1.0);
    assert_eq!(
        samples(&m.render(), "gpt_api_cost_usd_total"),
        [r#"gpt_api_cost_usd_total{backend="x",model="other"} 2"#]
    );
}

#[test]
fn costs_from_other_threads_after_the_requests_add_up() {
    let m = Metrics::new().unwrap();
    m.set_known_models(["m".to_string()]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    if t % 2 == 0 {
                        finish(&m, "m", Some("x"), 200);
                    }
                    // Quarters and halves add up exactly in binary.
                    m.add_cost("m", Some("x"), if t < 2 { 0.25 } else { 0.5 });
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(
        samples(&m.render(), "gpt_api_cost_usd_total"),
        [r#"gpt_api_cost_usd_total{backend="x",model="m"} 375"#]
    );
}

#[test]
fn shipping_counts_are_read_at_scrape_time() {
    let m = Metrics::new().unwrap();
    let text = m.render();
    assert!(
        text.contains("gpt_api_usage_ship_pending_rows 0\n"),
        "{text}"
    );
    assert!(
        text.contains("gpt_api_usage_shipped_rows_total 0\n"),
        "{text}"
    );
    let stats = Arc::new(crate::usage::ship::ShipStats::default());
    m.watch_shipping(stats.clone());
    stats.pending.store(1234, Relaxed);
    stats.shipped.store(50, Relaxed);
    let text = m.render();
    assert!(
        text.contains("gpt_api_usage_ship_pending_rows 1234\n"),
        "{text}"
    );
    assert!(
        text.contains("gpt_api_usage_shipped_rows_total 50\n"),
        "{text}"
    );
    stats.pending.store(0, Relaxed);
    stats.shipped.store(1284, Relaxed);
    let text = m.render();
    assert!(
        text.contains("gpt_api_usage_ship_pending_rows 0\n"),
        "{text}"
    );
    assert!(
        text.contains("gpt_api_usage_shipped_rows_total 1284\n"),
        "{text}"
    );
}

#[test]
fn redis_up_is_shown_only_with_redis_and_read_at_each_scrape() {
    let m = Metrics::new().unwrap();
    assert!(samples(&m.render(), "gpt_api_redis_up").is_empty());
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Arc::clone(&up);
    m.watch_redis(move || seen.load(Relaxed));
    assert_eq!(
        samples(&m.render(), "gpt_api_redis_up"),
        ["gpt_api_redis_up 1"]
    );
    up.store(false, Relaxed);
    assert_eq!(
        samples(&m.render(), "gpt_api_redis_up"),
        ["gpt_api_redis_up 0"]
    );
}
