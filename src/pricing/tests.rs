//! Unit tests of `pricing.rs`: matching, the cost formula, and the cost of a lookup.

#![allow(clippy::unwrap_used)]
use super::*;

/// A price told apart by its input price alone.
fn p(input: f64) -> Price {
    Price::new(input, 0.0)
}

fn entries(list: &[(&str, f64)]) -> Vec<(String, Price)> {
    list.iter().map(|(k, v)| (k.to_string(), p(*v))).collect()
}

fn table(list: &[(&str, f64)]) -> Prices {
    Prices::new(Vec::new(), entries(list))
}

fn input_of(prices: &Prices, model: &str) -> Option<f64> {
    prices.find(model).map(|price| price.input)
}

#[test]
fn an_exact_name_beats_every_pattern() {
    let prices = table(&[
        ("gpt-4o-*", 1.0),
        ("gpt-4o-mini", 2.0),
        ("gpt-4o-mini*", 3.0),
    ]);
    assert_eq!(input_of(&prices, "gpt-4o-mini"), Some(2.0));
    assert_eq!(input_of(&prices, "gpt-4o-mini-2024-07-18"), Some(3.0));
    assert_eq!(input_of(&prices, "gpt-4o-2024-08-06"), Some(1.0));
    assert_eq!(
        input_of(&prices, "gpt-4o"),
        None,
        "the dash is part of the pattern"
    );
    assert_eq!(
        input_of(&prices, "GPT-4o-mini"),
        None,
        "names are case-sensitive"
    );
    assert_eq!(prices.len(), 3);
}

#[test]
fn the_longest_pattern_wins_whatever_the_order() {
    let prices = table(&[("*", 0.5), ("claude-*", 1.0), ("claude-sonnet-4*", 2.0)]);
    assert_eq!(input_of(&prices, "claude-sonnet-4-5-20250929"), Some(2.0));
    assert_eq!(input_of(&prices, "claude-opus-4-1"), Some(1.0));
    assert_eq!(input_of(&prices, "llama"), Some(0.5));
    assert_eq!(
        input_of(&prices, ""),
        Some(0.5),
        "a lone star matches even nothing"
    );
}

#[test]
fn stars_may_stand_anywhere_and_more_than_once() {
    let prices = table(&[
        ("*-mini", 1.0),
        ("gemini-*-flash*", 2.0),
        ("a*b*c", 3.0),
        ("x**y", 4.0),
    ]);
    assert_eq!(input_of(&prices, "o4-mini"), Some(1.0));
    assert_eq!(input_of(&prices, "o4-mini-high"), None);
    assert_eq!(input_of(&prices, "gemini-2.5-flash"), Some(2.0));
    assert_eq!(input_of(&prices, "gemini-2.5-flash-lite"), Some(2.0));
    assert_eq!(
        input_of(&prices, "gemini-flash"),
        None,
        "both dashes around the star"
    );
    for hit in ["abc", "a-b-c", "abbc", "acbc", "abcbc"] {
        assert_eq!(input_of(&prices, hit), Some(3.0), "{hit}");
    }
    for miss in ["ac", "acb", "abcd", "bc", "a"] {
        assert_eq!(input_of(&prices, miss), None, "{miss}");
    }
    assert_eq!(input_of(&prices, "xy"), Some(4.0));
    assert_eq!(input_of(&prices, "x-y"), Some(4.0));
    let overlap = table(&[("ab*ba", 1.0)]);
    assert_eq!(
        input_of(&overlap, "aba"),
        None,
        "prefix and suffix may not share characters"
    );
    assert_eq!(input_of(&overlap, "abba"), Some(1.0));
}

#[test]
fn overrides_come_before_the_table() {
    let overrides = entries(&[("gpt-4o", 9.0), ("gpt-4o-*", 8.0), ("o3*", 7.0)]);
    let file = entries(&[
        ("gpt-4o", 1.0),
        ("gpt-4o-*", 2.0),
        ("o3-*", 3.0),
        ("o1", 4.0),
    ]);
    let prices = Prices::new(overrides, file);
    assert_eq!(input_of(&prices, "gpt-4o"), Some(9.0));
    assert_eq!(
        input_of(&prices, "gpt-4o-2024-05-13"),
        Some(8.0),
        "same length: the override"
    );
    assert_eq!(
        input_of(&prices, "o3-mini"),
        Some(7.0),
        "an override pattern beats a longer pattern of the file"
    );
    assert_eq!(input_of(&prices, "o3"), Some(7.0));
    assert_eq!(input_of(&prices, "o1"), Some(4.0));
    // An override pattern beats an exact name of the file.
    let prices = Prices::new(entries(&[("gpt-4o*", 5.0)]), entries(&[("gpt-4o", 1.0)]));
    assert_eq!(input_of(&prices, "gpt-4o"), Some(5.0));
}

#[test]
fn equal_lengths_keep_table_order() {
    let prices = table(&[("a*", 1.0), ("*b", 2.0)]);
    assert_eq!(input_of(&prices, "ab"), Some(1.0));
    let prices = table(&[("*b", 2.0), ("a*", 1.0)]);
    assert_eq!(input_of(&prices, "ab"), Some(2.0));
}

#[test]
fn first_takes_the_first_name_with_a_price() {
    let prices = table(&[("gpt-4o", 1.0), ("deepseek-*", 2.0)]);
    let names = ["gpt-4o-2099", "deepseek-chat", "gpt-4o"];
    assert_eq!(prices.first(names).map(|p| p.input), Some(2.0));
    assert_eq!(prices.first(["x", "gpt-4o"]).map(|p| p.input), Some(1.0));
    assert_eq!(prices.first(["x", "y"]), None);
    assert_eq!(prices.first([]), None);
    assert_eq!(Prices::empty().first(["gpt-4o"]), None);
    assert!(Prices::empty().is_empty());
}

#[test]
fn new_fills_the_defaults() {
    let price = Price::new(2.0, 8.0);
    assert_eq!((price.cached_input, price.cache_write), (2.0, 2.0));
    assert_eq!((price.reasoning, price.per_request), (8.0, 0.0));
    assert_eq!(price.tokenizer, None);
}

fn usage(prompt: i64, completion: i64) -> TokenUsage {
    TokenUsage {
        prompt: Some(prompt),
        completion: Some(completion),
        total: Some(prompt + completion),
        ..TokenUsage::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// Distinct prices per part, so each part's share shows in the sum.
const PRICE: Price = Price {
    input: 2.0,
    cached_input: 0.5,
    cache_write: 3.0,
    output: 10.0,
    reasoning: 20.0,
    per_request: 0.0,
    tokenizer: None,
};

#[test]
fn cost_of_plain_input_and_output() {
    let cost = PRICE.cost(&usage(1_000_000, 500_000));
    assert!(close(cost, 2.0 + 5.0), "{cost}");
    assert!(close(PRICE.cost(&usage(1000, 100)), 0.002 + 0.001));
}

#[test]
fn cost_splits_cache_reads_writes_and_reasoning() {
    let tokens = TokenUsage {
        cached: Some(400_000),
        cache_write: Some(100_000),
        reasoning: Some(300_000),
        ..usage(1_000_000, 500_000)
    };
    // 500k uncached x 2 + 400k x 0.5 + 100k x 3 + 200k x 10 + 300k x 20, per million.
    let expected = 1.0 + 0.2 + 0.3 + 2.0 + 6.0;
    assert!(
        close(PRICE.cost(&tokens), expected),
        "{}",
        PRICE.cost(&tokens)
    );
}

#[test]
fn per_request_is_always_added() {
    let price = Price {
        per_request: 0.005,
        ..PRICE
    };
    assert!(close(price.cost(&TokenUsage::default()), 0.005));
    assert!(close(price.cost(&usage(1_000_000, 0)), 2.005));
}

#[test]
fn missing_counts_are_zero() {
    assert_eq!(PRICE.cost(&TokenUsage::default()), 0.0);
    let only_output = TokenUsage {
        completion: Some(1_000_000),
        ..TokenUsage::default()
    };
    assert!(close(PRICE.cost(&only_output), 10.0));
    let only_cached = TokenUsage {
        cached: Some(1_000_000),
        ..TokenUsage::default()
    };
    assert!(
        close(PRICE.cost(&only_cached), 0.5),
        "cache reads count without a prompt count"
    );
}

#[test]
fn parts_larger_than_their_whole_never_go_negative() {
    let tokens = TokenUsage {
        cached: Some(2_000_000),
        reasoning: Some(3_000_000),
        ..usage(1_000_000, 1_000_000)
    };
    // No uncached input and no plain output; the cache reads and the reasoning are priced as reported.
    assert!(
        close(PRICE.cost(&tokens), 1.0 + 60.0),
        "{}",
        PRICE.cost(&tokens)
    );
    let negative = TokenUsage {
        prompt: Some(-5),
        completion: Some(-5),
        ..TokenUsage::default()
    };
    assert_eq!(PRICE.cost(&negative), 0.0);
}

#[test]
fn key_problems() {
    assert_eq!(key_problem("gpt-4o*"), None);
    assert_eq!(key_problem("*"), None);
    assert_eq!(key_problem(&"x".repeat(MAX_KEY_BYTES)), None);
    assert_eq!(key_problem("").unwrap(), "must not be empty");
    assert_eq!(
        key_problem(&"x".repeat(MAX_KEY_BYTES + 1)).unwrap(),
        "must not be longer than 256 bytes"
    );
    for bad in ["gpt 4o", "gpt-4o\n", "\tx", "a\u{7f}b", "a\u{a0}b"] {
        assert_eq!(
            key_problem(bad).unwrap(),
            "must not contain whitespace or control characters",
            "{bad:?}"
        );
    }
}
