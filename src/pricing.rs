//! Model prices: the compiled price table, matching a model name to its price, and the cost of one request.

use foldhash::HashMap;

use crate::tokens::{TokenUsage, Tokenizer};

/// The longest model name or pattern a price table accepts.
pub const MAX_KEY_BYTES: usize = 256;

/// One model's price in USD per 1M tokens (`per_request` in USD per call), its defaults already applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Input that was neither read from nor written to a cache.
    pub input: f64,
    /// Cache reads (`cached_input`, default `input`).
    pub cached_input: f64,
    /// Cache writes (default `input`).
    pub cache_write: f64,
    /// Output other than reasoning.
    pub output: f64,
    /// Reasoning tokens (default `output`).
    pub reasoning: f64,
    /// Added to every priced call (default 0).
    pub per_request: f64,
    /// Counts this model's tokens when a backend reports none (`None`: the caller's default).
    pub tokenizer: Option<Tokenizer>,
}

impl Price {
    /// `input` and `output` with every other field at its default.
    pub fn new(input: f64, output: f64) -> Price {
        Price {
            input,
            cached_input: input,
            cache_write: input,
            output,
            reasoning: output,
            per_request: 0.0,
            tokenizer: None,
        }
    }

    /// The cost in USD of one call that used `tokens`. A count not reported is 0; input that is neither a
    /// cache read nor a cache write, and output that is not reasoning, never count below 0 (a backend may
    /// report parts larger than their whole). `per_request` is always added: whether a call is priced at
    /// all is the caller's decision.
    pub fn cost(&self, tokens: &TokenUsage) -> f64 {
        let count = |n: Option<i64>| n.unwrap_or(0).max(0) as f64;
        let (cached, written) = (count(tokens.cached), count(tokens.cache_write));
        let uncached = (count(tokens.prompt) - cached - written).max(0.0);
        let reasoning = count(tokens.reasoning);
        let output = (count(tokens.completion) - reasoning).max(0.0);
        let per_million = uncached * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + output * self.output
            + reasoning * self.reasoning;
        per_million / 1e6 + self.per_request
    }
}

/// Why `key` cannot name a model or a pattern in a price table, if it cannot.
pub fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        Some("must not be empty".into())
    } else if key.len() > MAX_KEY_BYTES {
        Some(format!("must not be longer than {MAX_KEY_BYTES} bytes"))
    } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain whitespace or control characters".into())
    } else {
        None
    }
}

/// A name with `*` wildcards (each matches any run of characters, empty included), kept split at its stars.
#[derive(Debug)]
struct Pattern {
    /// As written; its length ranks it.
    text: Box<str>,
    /// The text before the first star.
    prefix: Box<str>,
    /// The text after the last star.
    suffix: Box<str>,
    /// The texts between stars, in order (empty ones left out).
    middle: Vec<Box<str>>,
}

impl Pattern {
    /// `None` when `text` has no star (it is an exact name).
    fn new(text: &str) -> Option<Pattern> {
        let (prefix, rest) = text.split_once('*')?;
        let (between, suffix) = rest.rsplit_once('*').unwrap_or(("", rest));
        Some(Pattern {
            text: text.into(),
            prefix: prefix.into(),
            suffix: suffix.into(),
            middle: between
                .split('*')
                .filter(|part| !part.is_empty())
                .map(Into::into)
                .collect(),
        })
    }

    /// Prefix and suffix anchor the ends without overlapping; each middle part is taken at its leftmost
    /// place after the previous one, which finds a match whenever there is one (stars are the only wildcard).
    fn matches(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(&*self.prefix) else {
            return false;
        };
        let Some(mut rest) = rest.strip_suffix(&*self.suffix) else {
            return false;
        };
        for part in &self.middle {
            match rest.find(&**part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

/// `price`, when `pattern` matches `model`.
fn matching<'a>((pattern, price): &'a (Pattern, Price), model: &str) -> Option<&'a Price> {
    pattern.matches(model).then_some(price)
}

/// The compiled price table: the `pricing.models` overrides, searched whole (exact names, then patterns) before
/// the price file's (or the shipped) entries, so that an override pattern beats a shipped exact name.
#[derive(Debug, Default)]
pub struct Prices {
    overrides: Table,
    table: Table,
}

impl Prices {
    /// No prices: every model is unpriced.
    pub fn empty() -> Prices {
        Prices::default()
    }

    /// `overrides`, then `table`, each in its own order. Keys are assumed valid (see [`key_problem`]); for an
    /// exact name given twice in one of them the first wins.
    pub fn new(
        overrides: impl IntoIterator<Item = (String, Price)>,
        table: impl IntoIterator<Item = (String, Price)>,
    ) -> Prices {
        Prices {
            overrides: Table::new(overrides),
            table: Table::new(table),
        }
    }

    /// The price of `model`: from the overrides if one matches it, else from the table; in each, its exact
    /// name, else the longest pattern that matches it.
    pub fn find(&self, model: &str) -> Option<&Price> {
        self.overrides
            .find(model)
            .or_else(|| self.table.find(model))
    }

    /// The price of the first of `names` that has one (the model a backend answered with, the model sent
    /// upstream, the model requested).
    pub fn first<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<&Price> {
        names.into_iter().find_map(|name| self.find(name))
    }

    /// Exact names and patterns in the overrides and the table.
    pub fn len(&self) -> usize {
        self.overrides.len() + self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One list of prices: exact names in a map, patterns longest first.
#[derive(Debug, Default)]
struct Table {
    exact: HashMap<Box<str>, Price>,
    /// Longest pattern first; among equal lengths, list order.
    patterns: Vec<(Pattern, Price)>,
    /// For each first byte of a model name, the indices into `patterns` that can match such a name (those whose
    /// prefix starts with it, and those that start with a star), in `patterns` order: a lookup tries only these.
    by_first_byte: Vec<Vec<u32>>,
}

impl Table {
    fn new(entries: impl IntoIterator<Item = (String, Price)>) -> Table {
        let mut t = Table::default();
        for (key, price) in entries {
            match Pattern::new(&key) {
                Some(pattern) => t.patterns.push((pattern, price)),
                None => {
                    t.exact.entry(key.into()).or_insert(price);
                }
            }
        }
        // Stable: equal lengths keep their order.
        t.patterns
            .sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.text.len()));
        t.by_first_byte = vec![Vec::new(); 256];
        for (i, (pattern, _)) in t.patterns.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match pattern.prefix.as_bytes().first() {
                Some(&byte) => t.by_first_byte[usize::from(byte)].push(i),
                None => t.by_first_byte.iter_mut().for_each(|v| v.push(i)),
            }
        }
        t
    }

    fn find(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.exact.get(model) {
            return Some(price);
        }
        if self.patterns.is_empty() {
            return None;
        }
        let Some(&first) = model.as_bytes().first() else {
            // Only a pattern with nothing before its first star matches an empty name.
            return self
                .patterns
                .iter()
                .find_map(|entry| matching(entry, model));
        };
        let candidates = self.by_first_byte.get(usize::from(first))?;
        candidates.iter().find_map(|&i| {
            let entry = self.patterns.get(usize::try_from(i).ok()?)?;
            matching(entry, model)
        })
    }

    fn len(&self) -> usize {
        self.exact.len() + self.patterns.len()
    }
}

#[cfg(test)]
mod tests;
