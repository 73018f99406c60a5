//! Unit tests of `pricing.rs`: the shipped table, the `pricing:` section, price files and their errors.

#![allow(clippy::unwrap_used)]
use std::io::Write;

use super::*;
use crate::config::Config;
use crate::tokens::TokenUsage;

fn compile_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
    Config::parse(text, env).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

fn compile(text: &str) -> Result<Config, Vec<String>> {
    compile_with(text, &|_| None)
}

/// A price file in a temporary directory (kept alive by the returned guard).
fn price_file(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    (dir, path.to_string_lossy().into_owned())
}

fn with_file(path: &str, rest: &str) -> String {
    format!("openai_clients: []\npricing:\n  file: '{path}'\n{rest}")
}

fn input_of(config: &Config, model: &str) -> Option<f64> {
    config.prices.find(model).map(|p| p.input)
}

#[test]
fn the_shipped_table_parses_and_documents_every_price() {
    let table = shipped().as_ref().unwrap();
    assert!(table.len() > 50, "{} entries", table.len());
    let tree: Value = serde_yaml::from_str(SHIPPED).unwrap();
    let models = tree["models"].as_mapping().unwrap();
    assert_eq!(models.len(), table.len());
    for (key, entry) in models {
        for field in ["source", "read"] {
            let text = entry[field].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{key:?} has no {field}");
        }
        assert!(
            entry["source"].as_str().unwrap().starts_with("https://"),
            "{key:?}"
        );
        assert!(entry["read"].as_str().unwrap().starts_with("20"), "{key:?}");
    }
}

/// Anthropic bills cache writes above and cache reads below the input price: an entry that left them to their
/// defaults would misprice every cached call.
#[test]
fn shipped_claude_prices_have_their_cache_prices() {
    let table = shipped().as_ref().unwrap();
    let claude: Vec<_> = table
        .iter()
        .filter(|(k, _)| k.starts_with("claude"))
        .collect();
    assert!(claude.len() >= 10, "{} Claude entries", claude.len());
    for (key, price) in claude {
        assert!(price.cache_write > price.input, "{key}");
        assert!(price.cached_input < price.input / 5.0, "{key}");
    }
    let prices = Prices::new(Vec::new(), table.clone());
    let sonnet = prices.find("claude-sonnet-4-5-20250929").unwrap();
    let expected = (3.0, 0.3, 3.75, 15.0);
    let got = (
        sonnet.input,
        sonnet.cached_input,
        sonnet.cache_write,
        sonnet.output,
    );
    assert_eq!(got, expected);
}

/// Dated snapshots reach their family's price through a pattern, without catching a neighbouring model.
#[test]
fn shipped_patterns_reach_dated_snapshots() {
    let prices = Prices::new(Vec::new(), shipped().as_ref().unwrap().clone());
    let input = |model: &str| prices.find(model).map(|p| p.input);
    assert_eq!(input("gpt-4o-2024-08-06"), Some(2.5));
    assert_eq!(
        input("gpt-4o-2024-05-13"),
        Some(5.0),
        "an exact entry beats the pattern"
    );
    assert_eq!(input("gpt-4o-mini-2024-07-18"), Some(0.15));
    assert_eq!(input("gpt-4.1-mini-2025-04-14"), Some(0.4));
    assert_eq!(input("gpt-5-2025-08-07"), Some(1.25));
    assert_eq!(
        input("gpt-5.1-codex-mini"),
        Some(0.25),
        "the longer pattern wins"
    );
    assert_eq!(input("gpt-5.1-codex-max"), Some(1.25));
    assert_eq!(input("claude-opus-4-1-20250805"), Some(15.0));
    assert_eq!(input("claude-opus-4-5-20251101"), Some(5.0));
    assert_eq!(input("claude-haiku-4-5-20251001"), Some(1.0));
    assert_eq!(
        input("claude-sonnet-5-5"),
        None,
        "left out, not priced as Sonnet 5"
    );
    assert_eq!(input("deepseek-chat"), None, "retired");
}

#[test]
fn without_a_pricing_section_the_shipped_table_prices() {
    for text in ["openai_clients: []\n", "openai_clients: []\npricing: {}\n"] {
        let config = compile(text).unwrap();
        assert!(config.prices.len() > 50);
        assert!(config.prices.find("gpt-4o").is_some());
        assert!(config.prices.find("no-such-model").is_none());
    }
}

#[test]
fn overrides_come_before_the_shipped_table() {
    let text = "openai_clients: []\npricing:\n  models:\n    gpt-4o: {input: 1, output: 2}\n    \
                'my-local-*': {input: 0, output: 0}\n";
    let config = compile(text).unwrap();
    assert_eq!(input_of(&config, "gpt-4o"), Some(1.0));
    assert_eq!(input_of(&config, "my-local-llama"), Some(0.0));
    assert!(
        config.prices.find("gpt-4o-mini").is_some(),
        "the rest of the shipped table stays"
    );
}

#[test]
fn entry_defaults() {
    let text = "openai_clients: []\npricing:\n  models:\n    a: {input: 2, output: 8}\n    \
                b: {per_request: 0.01}\n    \
                c: {input: 3, cached_input: 0.3, cache_write: 3.75, output: 15, reasoning: 20, \
                per_request: 0.5, tokenizer: o200k_base, source: 'https://x', read: '2026-12-04'}\n";
    let config = compile(text).unwrap();
    assert_eq!(*config.prices.find("a").unwrap(), Price::new(2.0, 8.0));
    let b = config.prices.find("b").unwrap();
    assert_eq!((b.input, b.output, b.per_request), (0.0, 0.0, 0.01));
    let c = *config.prices.find("c").unwrap();
    let expected = Price {
        input: 3.0,
        cached_input: 0.3,
        cache_write: 3.75,
        output: 15.0,
        reasoning: 20.0,
        per_request: 0.5,
        tokenizer: Some(Tokenizer::O200kBase),
    };
    assert_eq!(c, expected);
    let tokens = TokenUsage {
        prompt: Some(1_000_000),
        ..TokenUsage::default()
    };
    assert_eq!(c.cost(&tokens), 3.5);
}

#[test]
fn a_price_file_replaces_the_shipped_table() {
    let (_dir, path) = price_file("# mine\nmodels:\n  'mine-*': {input: 1, output: 2}\n");
    let text = with_file(&path, "  models: {mine-special: {input: 5, output: 5}}\n");
    let config = compile(&text).unwrap();
    assert_eq!(input_of(&config, "mine-x"), Some(1.0));
    assert_eq!(input_of(&config, "mine-special"), Some(5.0));
    assert_eq!(
        input_of(&config, "gpt-4o"),
        None,
        "the shipped table is gone"
    );
    assert_eq!(config.prices.len(), 2);
}

#[test]
fn the_price_file_is_read_again_at_each_load() {
    let (dir, path) = price_file("models: {m: {input: 1, output: 1}}\n");
    let text = with_file(&path, "");
    assert_eq!(input_of(&compile(&text).unwrap(), "m"), Some(1.0));
    std::fs::write(
        dir.path().join("prices.yaml"),
        "models: {m: {input: 2, output: 1}}\n",
    )
    .unwrap();
    assert_eq!(input_of(&compile(&text).unwrap(), "m"), Some(2.0));
}

#[test]
fn the_file_path_may_come_from_the_environment() {
    let (dir, path) = price_file("models: {m: {input: 7, output: 1}}\n");
    let env = |name: &str| match name {
        "PRICES" => Some(path.clone()),
        "PRICE_DIR" => Some(dir.path().to_string_lossy().into_owned()),
        _ => None,
    };
    for file in ["${PRICES}", "${PRICE_DIR}/prices.yaml"] {
        let text = format!("openai_clients: []\npricing: {{file: \"{file}\"}}\n");
        let config = compile_with(&text, &env).unwrap();
        assert_eq!(input_of(&config, "m"), Some(7.0), "{file}");
    }
    let errors = compile("openai_clients: []\npricing: {file: '${PRICES}'}\n").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("pricing.file: environment variable PRICES is not set"),
        "{errors:?}"
    );
}

#[test]
fn bad_override_entries_are_reported_at_their_paths() {
    let text = "openai_clients: []\npricing:\n  models:\n    gpt-4o: {input: -1, output: 2}\n    \
                'gpt 4o': {input: 1, output: 1}\n    '': {input: 1, output: 1}\n    \
                x: {input: 1, outptu: 2}\n    y: {input: .nan, output: 2000000}\n    z: {tokenizer: p50k}\n    \
                w:\n";
    let errors = compile(text).unwrap_err();
    assert_eq!(
        errors,
        [
            "pricing.models.\"x\".outptu: unknown field, expected one of input, cached_input, \
             cache_write, output, reasoning, per_request, tokenizer, source, read",
            "pricing.models.\"gpt-4o\".input: must be a number >= 0",
            "pricing.models.\"gpt 4o\": must not contain whitespace or control characters",
            "pricing.models.\"\": must not be empty",
            "pricing.models.\"x\".output: required field is missing",
            "pricing.models.\"y\".input: must be a number >= 0",
            "pricing.models.\"y\".output: must be at most 1000000",
            "pricing.models.\"z\".input: required field is missing",
            "pricing.models.\"z\".output: required field is missing",
            "pricing.models.\"z\".tokenizer: expected o200k_base or cl100k_base",
            "pricing.models.\"w\": expected a mapping",
        ]
    );
    let long = "x".repeat(257);
    let text =
        format!("openai_clients: []\npricing: {{models: {{{long}: {{input: 1, output: 1}}}}}}\n");
    let errors = compile(&text).unwrap_err();
    assert_eq!(
        errors,
        [format!(
            "pricing.models.\"{long}\": must not be longer than 256 bytes"
        )]
    );
    let errors = compile("openai_clients: []\npricing: {file: '', models: []}\n").unwrap_err();
    assert_eq!(
        errors,
        [
            "pricing.models: expected a mapping",
            "pricing.file: must not be empty"
        ]
    );
}

#[test]
fn bad_price_files_are_config_errors_naming_the_file() {
    let bad = "models:\n  gpt-4o: {input: -2.5, output: 10}\n  'a b*': {input: 1, output: 1}\n  \
               m: {input: 1, output: 1, color: red}\n";
    let (_dir, path) = price_file(bad);
    let errors = compile(&with_file(&path, "")).unwrap_err();
    assert_eq!(
        errors,
        [
            format!(
                "pricing.file ({path}): models.\"m\".color: unknown field, expected one of input, \
                 cached_input, cache_write, output, reasoning, per_request, tokenizer, source, read"
            ),
            format!("pricing.file ({path}): models.\"gpt-4o\".input: must be a number >= 0"),
            format!(
                "pricing.file ({path}): models.\"a b*\": must not contain whitespace or control characters"
            ),
        ]
    );
    for (yaml, expected) in [
        ("models: {a: [1\n", "not valid YAML: "),
        ("", "models: required field is missing"),
        (
            "prices: {}\n",
            "prices: unknown field, expected one of models",
        ),
        ("- 1\n", "expected a mapping"),
        ("models: {a: 1}\n", "models.\"a\": expected a mapping"),
    ] {
        let (_dir, path) = price_file(yaml);
        let errors = compile(&with_file(&path, "")).unwrap_err();
        let prefix = format!("pricing.file ({path}): {expected}");
        assert!(errors[0].starts_with(&prefix), "{yaml:?}: {errors:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml").to_string_lossy().into_owned();
    let errors = compile(&with_file(&missing, "")).unwrap_err();
    assert_eq!(errors.len(), 1);
    let prefix = format!("pricing.file ({missing}): cannot read: ");
    assert!(errors[0].starts_with(&prefix), "{errors:?}");
}

#[test]
fn an_oversized_price_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    let path = path.to_string_lossy().into_owned();
    let errors = compile(&with_file(&path, "")).unwrap_err();
    assert_eq!(
        errors,
        [format!("pricing.file ({path}): larger than 8 MiB")]
    );
}

#[test]
fn schema_and_entry_struct_agree() {
    let yaml =
        "{input: 1, cached_input: 2, cache_write: 3, output: 4, reasoning: 5, per_request: 6, \
                tokenizer: cl100k_base, source: s, read: r}";
    let mut tree: Value = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Vec::new();
    conform(&mut tree, &ENTRY, "", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let entry: PriceEntryFile = serde_yaml::from_value(tree).unwrap();
    let debug = format!("{entry:?}");
    assert!(!debug.contains("None"), "every entry field: {debug}");
}

/// The cost of `find` against the shipped table; run with
/// `cargo test --release --lib config::pricing::tests::lookup_speed -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run in release"]
fn lookup_speed() {
    let prices = compile("openai_clients: []\n").unwrap().prices;
    let cases = [
        ("exact hit", "gpt-4o-mini"),
        ("pattern hit", "claude-sonnet-4-5-20250929"),
        ("miss", "my-local-llama-3-70b"),
        // Every `g` pattern (most of the OpenAI and Gemini ones) is tried before the miss is known.
        ("worst miss", "gpt-99-experimental"),
    ];
    for (what, model) in cases {
        let rounds = 2_000_000u32;
        let start = std::time::Instant::now();
        let mut found = 0u32;
        for _ in 0..rounds {
            found += u32::from(prices.find(std::hint::black_box(model)).is_some());
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
        println!("{what:12} {model:32} {ns:7.1} ns per lookup (found {found})");
    }
}
