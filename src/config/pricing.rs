//! The `pricing:` section and the price file format: the shipped table, an operator's file, the overrides.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::compile::{Errors, Section, MISSING};
use super::file::{conform, quoted_key_path, Shape};
use super::ConfigError;
use crate::pricing::{key_problem, Price, Prices};
use crate::tokens::Tokenizer;

/// The table built into the binary, used unless `pricing.file` names another.
const SHIPPED: &str = include_str!("../../config/prices.yaml");
/// What shipped-table errors are reported under (a unit test keeps there from being any).
const SHIPPED_LABEL: &str = "shipped price table (config/prices.yaml)";
/// A price file larger than this is refused (the shipped one is about 25 KiB).
const MAX_FILE_BYTES: u64 = 8 << 20;
/// The highest price accepted, in USD per 1M tokens or per call: anything above is a typo, and keeps
/// costs finite.
const MAX_PRICE: f64 = 1e6;

/// The path of the `pricing.file` field.
const FILE: &str = "pricing.file";

/// `pricing:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PricingFile {
    /// A price file replacing the shipped table.
    pub file: Option<String>,
    /// Model name or pattern to a [`PriceEntryFile`], in file order; shapes already checked by `conform`.
    pub models: Option<Mapping>,
}

/// A price file: the shipped `config/prices.yaml` or an operator's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    models: Option<Mapping>,
}

/// One model's entry, in `pricing.models` or in a price file's `models`. Prices in USD per 1M tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PriceEntryFile {
    pub input: Option<f64>,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub output: Option<f64>,
    pub reasoning: Option<f64>,
    /// USD per call.
    pub per_request: Option<f64>,
    pub tokenizer: Option<String>,
    /// Where the price was published: documentation for the file's readers (a string, checked by `conform`),
    /// accepted and not kept.
    #[serde(rename = "source")]
    pub _source: Option<serde::de::IgnoredAny>,
    /// When it was read there: documentation too.
    #[serde(rename = "read")]
    pub _read: Option<serde::de::IgnoredAny>,
}

const ENTRY: Shape = Shape::Section(&[
    ("input", Shape::Number),
    ("cached_input", Shape::Number),
    ("cache_write", Shape::Number),
    ("output", Shape::Number),
    ("reasoning", Shape::Number),
    ("per_request", Shape::Number),
    ("tokenizer", Shape::Str),
    ("source", Shape::Str),
    ("read", Shape::Str),
]);

/// `pricing:`; mirrors [`PricingFile`].
pub(super) const PRICING: Shape =
    Shape::Section(&[("file", Shape::Str), ("models", Shape::MapOf(&ENTRY))]);

/// A price file's top level; mirrors [`PriceFile`].
const PRICE_FILE: Shape = Shape::Section(&[("models", Shape::MapOf(&ENTRY))]);

/// The price table of a config: `pricing.models` first, then `pricing.file` or the shipped table, and the
/// file's path (watched with the config file). The file is read here, so each load or reload reads it again.
pub(super) fn compile_pricing(
    f: Option<PricingFile>,
    errors: &mut Errors,
) -> (Arc<Prices>, Option<PathBuf>) {
    let f = f.unwrap_or_default();
    let overrides = match f.models {
        Some(models) => entries(models, "pricing.models", errors),
        None => Vec::new(),
    };
    // A `${VAR}` that failed left the text as written, and was reported: no file is looked for under that name.
    let reported = errors.iter().any(|e| e.path == FILE);
    let path = f
        .file
        .as_deref()
        .filter(|p| !reported && !p.is_empty())
        .map(PathBuf::from);
    let table = match f.file {
        Some(_) if reported => Vec::new(),
        Some(path) if path.is_empty() => {
            errors.push(ConfigError::new(FILE, "must not be empty"));
            Vec::new()
        }
        Some(path) => read_price_file(Path::new(&path), errors),
        None => match shipped() {
            Ok(table) => table.clone(),
            Err(problems) => {
                errors.extend(problems.iter().cloned());
                Vec::new()
            }
        },
    };
    (Arc::new(Prices::new(overrides, table)), path)
}

/// The shipped table's entries, parsed once per process.
fn shipped() -> &'static Result<Vec<(String, Price)>, Errors> {
    static TABLE: OnceLock<Result<Vec<(String, Price)>, Errors>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut errors = Vec::new();
        let table = parse_price_file(SHIPPED, SHIPPED_LABEL, &mut errors);
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    })
}

/// Reads and parses an operator's price file; every problem is reported under `pricing.file (<path>)`.
fn read_price_file(path: &Path, errors: &mut Errors) -> Vec<(String, Price)> {
    let shown = path.to_string_lossy();
    let label = format!("{FILE} ({})", crate::escape::text(&shown));
    match read_limited(path) {
        Ok(text) => parse_price_file(&text, &label, errors),
        Err(message) => {
            errors.push(ConfigError::new(label, message));
            Vec::new()
        }
    }
}

fn read_limited(path: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    Ok(text)
}

/// A price file's entries; problems are reported as `<label>: <path in the file>`.
fn parse_price_file(text: &str, label: &str, errors: &mut Errors) -> Vec<(String, Price)> {
    let mut found = Vec::new();
    let table = parse_checked(text, &mut found);
    errors.extend(found.into_iter().map(|e| {
        let path = if e.path.is_empty() {
            label.to_string()
        } else {
            format!("{label}: {}", e.path)
        };
        ConfigError::new(path, e.message)
    }));
    table
}

fn parse_checked(text: &str, errors: &mut Errors) -> Vec<(String, Price)> {
    let mut tree: Value = match serde_yaml::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Mapping::new()),
        Ok(tree) => tree,
        Err(e) => {
            errors.push(ConfigError::new("", format!("not valid YAML: {e}")));
            return Vec::new();
        }
    };
    conform(&mut tree, &PRICE_FILE, "", errors);
    if tree.is_null() {
        // Not a mapping at all, already reported.
        return Vec::new();
    }
    match serde_yaml::from_value::<PriceFile>(tree) {
        Ok(PriceFile {
            models: Some(models),
        }) => entries(models, "models", errors),
        Ok(PriceFile { models: None }) => {
            errors.push(ConfigError::new("models", MISSING));
            Vec::new()
        }
        Err(e) => {
            errors.push(ConfigError::new("", internal(e)));
            Vec::new()
        }
    }
}

/// `conform` removed what serde could reject, so this is only reached if schema and structs disagree.
fn internal(e: serde_yaml::Error) -> String {
    format!("internal error, schema and structs disagree: {e}")
}

/// The valid entries of a `models` mapping at `path`, in order; each problem is reported at its entry.
fn entries(models: Mapping, path: &str, errors: &mut Errors) -> Vec<(String, Price)> {
    let mut table = Vec::with_capacity(models.len());
    for (key, value) in models {
        // `conform` dropped the keys that are not strings.
        let Value::String(key) = key else { continue };
        let entry_path = quoted_key_path(path, &key);
        if let Some(problem) = key_problem(&key) {
            errors.push(ConfigError::new(entry_path, problem));
            continue;
        }
        if !value.is_mapping() {
            // A wrong type was reported and nulled by `conform`: only an empty entry is left to report.
            if value.is_null() {
                errors.push(ConfigError::new(entry_path, "expected a mapping"));
            }
            continue;
        }
        match serde_yaml::from_value(value) {
            Ok(entry) => {
                let price = compile_entry(entry, Section::new(entry_path, errors));
                table.extend(price.map(|price| (key, price)));
            }
            Err(e) => errors.push(ConfigError::new(entry_path, internal(e))),
        }
    }
    table
}

/// One entry with its defaults applied: `cached_input` and `cache_write` default to `input`, `reasoning`
/// to `output`; `input` and `output` are required unless `per_request` is given (then they default to 0).
fn compile_entry(e: PriceEntryFile, mut s: Section) -> Option<Price> {
    let s = &mut s;
    if e.per_request.is_none() {
        for (field, value) in [("input", e.input), ("output", e.output)] {
            if value.is_none() {
                s.report(field, MISSING);
            }
        }
    }
    let input = amount(s, "input", e.input).unwrap_or(0.0);
    let output = amount(s, "output", e.output).unwrap_or(0.0);
    let price = Price {
        input,
        cached_input: amount(s, "cached_input", e.cached_input).unwrap_or(input),
        cache_write: amount(s, "cache_write", e.cache_write).unwrap_or(input),
        output,
        reasoning: amount(s, "reasoning", e.reasoning).unwrap_or(output),
        per_request: amount(s, "per_request", e.per_request).unwrap_or(0.0),
        tokenizer: e.tokenizer.and_then(|name| tokenizer(s, name)),
    };
    (!s.failed).then_some(price)
}

/// A price, reported unless it is between 0 and [`MAX_PRICE`].
fn amount(s: &mut Section, field: &str, value: Option<f64>) -> Option<f64> {
    let n = value?;
    if n.is_nan() || n < 0.0 {
        s.report(field, "must be a number >= 0");
        None
    } else if n > MAX_PRICE {
        s.report(field, format!("must be at most {MAX_PRICE}"));
        None
    } else {
        Some(n)
    }
}

fn tokenizer(s: &mut Section, name: String) -> Option<Tokenizer> {
    let parsed = serde_yaml::from_value(Value::String(name));
    parsed
        .map_err(|_| s.report("tokenizer", "expected o200k_base or cl100k_base"))
        .ok()
}

#[cfg(test)]
mod tests;
