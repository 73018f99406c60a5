//! The `auth:` section: gateway keys with their model allow-lists and rate limits, validated at their paths.

use std::collections::HashMap;
use std::fmt;

use http::HeaderValue;

use super::compile::{Errors, Section, MISSING};
use super::file::{index_path, key_path, AuthFile, BudgetFile, ClientFile, KeyFile, OneOrMany};
use super::ConfigError;
use crate::money::Usd;
use crate::secret::Secret;

/// The `auth:` section, validated. Present means the gateway asks every caller for one of these keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Never empty; names and keys unique.
    pub keys: Vec<KeySettings>,
}

/// One `auth.keys[i]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    /// Names the key in logs and usage records (the key itself is never written anywhere).
    pub name: String,
    pub key: Secret,
    /// Exact model names or `*` patterns the key may use; `None`: every model.
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// What the key may spend per local calendar day and month; `None`: no budget.
    pub budget: Option<Budget>,
    /// Requests in flight at once (across the cluster when `cluster.redis_url` is set).
    pub max_concurrent: Option<u32>,
}

/// `auth.keys[i].budget_usd`: at least one of the two is set (`budget_usd: {}` is no budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub day: Option<Usd>,
    pub month: Option<Usd>,
}

/// What a new `auth:` section changes against the running one, by key name: the keys never leave the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Kept under the same name with another key.
    pub replaced: Vec<String>,
}

impl KeyChanges {
    /// `None` on either side: no `auth:` section, so no keys.
    pub fn between(old: Option<&AuthSettings>, new: Option<&AuthSettings>) -> KeyChanges {
        let (old, new) = (keys_of(old), keys_of(new));
        let find = |keys: &[KeySettings], name: &str| keys.iter().find(|k| k.name == name).cloned();
        let mut changes = KeyChanges::default();
        for key in new {
            match find(old, &key.name) {
                None => changes.added.push(key.name.clone()),
                Some(before) if before.key != key.key => changes.replaced.push(key.name.clone()),
                Some(_) => {}
            }
        }
        for key in old {
            if find(new, &key.name).is_none() {
                changes.removed.push(key.name.clone());
            }
        }
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.replaced.is_empty()
    }
}

fn keys_of(auth: Option<&AuthSettings>) -> &[KeySettings] {
    auth.map_or(&[], |a| &a.keys)
}

/// `1 added ["b"], 1 removed ["a"], 0 replaced []`: counts and names, quoted and escaped as Rust strings.
impl fmt::Display for KeyChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("added", &self.added),
            ("removed", &self.removed),
            ("replaced", &self.replaced),
        ];
        for (i, (what, names)) in parts.into_iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{} {what} {names:?}", names.len())?;
        }
        Ok(())
    }
}

pub(super) fn compile_auth(auth: AuthFile, errors: &mut Errors) -> Option<AuthSettings> {
    let Some(list) = auth.keys else {
        errors.push(ConfigError::new("auth.keys", MISSING));
        return None;
    };
    if list.is_empty() {
        let message = "must not be an empty list (remove the auth section to run without keys)";
        errors.push(ConfigError::new("auth.keys", message));
        return None;
    }
    check_unique(&list, errors);
    let mut keys = Vec::with_capacity(list.len());
    for (i, entry) in list.into_iter().enumerate() {
        let path = index_path("auth.keys", i);
        match entry {
            Some(key) => keys.extend(compile_key(key, path, errors)),
            None => errors.push(ConfigError::new(path, "expected a mapping")),
        }
    }
    Some(AuthSettings { keys })
}

/// Duplicates are reported at the later entry. A duplicate key is named by its index only: never printed.
fn check_unique(list: &[Option<KeyFile>], errors: &mut Errors) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in list.iter().enumerate() {
        let Some(entry) = entry else { continue };
        let path = index_path("auth.keys", i);
        if let Some(name) = entry.name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(first) = names.get(name) {
                let message =
                    format!("duplicate key name {name:?} (also used by auth.keys[{first}])");
                errors.push(ConfigError::new(key_path(&path, "name"), message));
            } else {
                names.insert(name, i);
            }
        }
        if let Some(key) = entry.key.as_deref().filter(|k| !k.is_empty()) {
            if let Some(first) = keys.get(key) {
                let message = format!("duplicate key (the same as auth.keys[{first}].key)");
                errors.push(ConfigError::new(key_path(&path, "key"), message));
            } else {
                keys.insert(key, i);
            }
        }
    }
}

fn compile_key(k: KeyFile, path: String, errors: &mut Errors) -> Option<KeySettings> {
    let s = &mut Section::new(path, errors);
    let name = s
        .required("name", k.name)
        .filter(|n| s.non_empty("name", n));
    let key = s.required("key", k.key).filter(|key| valid_key(key, s));
    let models = k.models.map(|models| patterns(models, s));
    let rpm = k.rpm.map(|n| s.positive("rpm", Some(n), 0));
    let rpm = rpm.and_then(|n| {
        let n = u32::try_from(n).map_err(|_| format!("must be at most {}", u32::MAX));
        s.ok("rpm", n)
    });
    let tpm = k.tpm.map(|n| s.positive("tpm", Some(n), 0));
    let budget = k.budget_usd.and_then(|b| budget(b, s));
    let max_concurrent = k
        .max_concurrent
        .map(|n| s.positive("max_concurrent", Some(n), 0));
    let max_concurrent = max_concurrent.and_then(|n| {
        let n = u32::try_from(n).map_err(|_| format!("must be at most {}", u32::MAX));
        s.ok("max_concurrent", n)
    });
    if s.failed {
        return None;
    }
    Some(KeySettings {
        name: name?,
        key: Secret::new(key?),
        models,
        rpm,
        tpm,
        budget,
        max_concurrent,
    })
}

/// Dollars, at least 0 (a budget of 0 refuses every request of the key: a way to freeze it).
fn budget(b: BudgetFile, s: &mut Section) -> Option<Budget> {
    if b.day.is_none() && b.month.is_none() {
        // `{}`, or values already reported as ill-typed or unknown: no budget.
        return None;
    }
    let mut amount = |field: &str, usd: Option<f64>| {
        let usd = usd?;
        if !usd.is_finite() || usd < 0.0 {
            s.report(field, "must be a number of dollars >= 0");
            return None;
        }
        Some(Usd::from_f64(usd))
    };
    let day = amount("budget_usd.day", b.day);
    let month = amount("budget_usd.month", b.month);
    Some(Budget { day, month })
}

/// Spend is what a key's records cost, read back from them after a restart: budgets need the records.
pub(super) fn report_budgets_without_records(auth: Option<&AuthSettings>, errors: &mut Errors) {
    for (i, key) in auth.map_or(&[][..], |a| &a.keys).iter().enumerate() {
        if key.budget.is_some() {
            let path = key_path(&index_path("auth.keys", i), "budget_usd");
            let message = "needs usage records (usage.enabled: true): spend is counted from them";
            errors.push(ConfigError::new(path, message));
        }
    }
}

/// The value is never echoed: it is a credential.
fn valid_key(key: &str, s: &mut Section) -> bool {
    let problem = if key.is_empty() {
        Some("must not be empty")
    } else if HeaderValue::from_str(key).is_err() {
        Some("contains characters not allowed in an HTTP header")
    } else if key.trim() != key {
        // HTTP strips the whitespace around a header value, so such a key could never match.
        Some("must not start or end with whitespace")
    } else {
        None
    };
    if let Some(problem) = problem {
        s.report("key", problem);
    }
    problem.is_none()
}

/// `models: "gpt-4*"` or a list; each entry an exact name or a pattern where `*` matches any run of characters.
fn patterns(models: OneOrMany, s: &mut Section) -> Vec<String> {
    let list = match models {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(list) => list,
    };
    if list.is_empty() {
        s.report(
            "models",
            "must not be an empty list (leave it out to allow every model)",
        );
    }
    for (i, model) in list.iter().enumerate() {
        s.non_empty(&index_path("models", i), model);
    }
    list
}

/// With auth on, a client without its own key would be sent the caller's `Authorization`, which is now a
/// gateway key. Takes the file's clients (before compiling) so the indices match the file even when other
/// clients fail; called after they are compiled so the client's own errors come first.
pub(super) fn keyless_clients(clients: Option<&[Option<ClientFile>]>) -> Vec<usize> {
    let clients = clients.unwrap_or_default();
    let keyless = |c: &Option<ClientFile>| {
        c.as_ref()
            .is_some_and(|c| c.api_key.as_deref().unwrap_or_default().is_empty())
    };
    (0..clients.len())
        .filter(|&i| keyless(&clients[i]))
        .collect()
}

pub(super) fn report_keyless(indices: &[usize], errors: &mut Errors) {
    for &i in indices {
        let path = key_path(&index_path("openai_clients", i), "api_key");
        let message =
            "required when auth is on: the caller's gateway key is never forwarded upstream";
        errors.push(ConfigError::new(path, message));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::KeyChanges;
    use crate::config::Config;
    use crate::money::Usd;

    const CLIENT: &str =
        "openai_clients:\n  - {name: c, api_key: k, base_url: 'http://h', model_match: {type: exact, value: m}}\n";

    fn env(name: &str) -> Option<String> {
        (name == "TEAM_KEY").then(|| "sk-team-from-env".to_string())
    }

    fn parse(auth: &str) -> Result<Config, Vec<String>> {
        let text = format!("{CLIENT}auth:\n{auth}");
        Config::parse(&text, &env).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn keys_compile_with_env_models_and_limits() {
        let config = parse(
            "  keys:\n    - {name: team, key: '${TEAM_KEY}', models: ['gpt-4*', o1], rpm: 60, tpm: 100000}\n    \
             - {name: ci, key: sk-ci, models: '*-mini'}\n    - {name: open, key: sk-open}\n",
        )
        .unwrap();
        let auth = config.auth.unwrap();
        let [team, ci, open] = &auth.keys[..] else {
            panic!("expected 3 keys: {auth:?}");
        };
        assert_eq!(team.name, "team");
        assert_eq!(team.key.expose(), "sk-team-from-env");
        assert_eq!(
            team.models.as_deref(),
            Some(&["gpt-4*".into(), "o1".into()][..])
        );
        assert_eq!((team.rpm, team.tpm), (Some(60), Some(100_000)));
        assert_eq!(ci.models.as_deref(), Some(&["*-mini".into()][..]));
        assert_eq!(
            (open.models.as_ref(), open.rpm, open.tpm),
            (None, None, None)
        );
        assert!(!format!("{auth:?}").contains("sk-"), "keys never print");
    }

    #[test]
    fn key_changes_name_the_keys_added_removed_and_replaced_never_the_keys() {
        let auth = |keys: &str| parse(&format!("  keys: {keys}\n")).unwrap().auth;
        let old = auth("[{name: a, key: sk-a}, {name: c, key: sk-c}, {name: d, key: sk-d}]");
        let new =
            auth("[{name: b, key: sk-b}, {name: c, key: sk-c2}, {name: d, key: sk-d, rpm: 5}]");
        let changes = KeyChanges::between(old.as_ref(), new.as_ref());
        assert_eq!(
            changes,
            KeyChanges {
                added: vec!["b".into()],
                removed: vec!["a".into()],
                replaced: vec!["c".into()],
            }
        );
        let text = changes.to_string();
        assert_eq!(text, r#"1 added ["b"], 1 removed ["a"], 1 replaced ["c"]"#);
        assert!(!text.contains("sk-"));
        assert!(KeyChanges::between(old.as_ref(), old.as_ref()).is_empty());
        let off = KeyChanges::between(old.as_ref(), None);
        assert_eq!((off.added.len(), off.removed.len()), (0, 3));
        let escaped = auth("[{name: \"x\\e[2J\", key: sk-x}]");
        let text = KeyChanges::between(None, escaped.as_ref()).to_string();
        assert_eq!(
            text,
            r#"1 added ["x\u{1b}[2J"], 0 removed [], 0 replaced []"#
        );
    }

    #[test]
    fn no_auth_section_means_open() {
        assert!(Config::parse(CLIENT, &env).unwrap().auth.is_none());
        let keyless = CLIENT.replace("api_key: k, ", "");
        assert!(Config::parse(&keyless, &env).unwrap().auth.is_none());
    }

    /// Each line: the `auth.keys` list | the errors it gives, `;`-separated.
    const BAD: &str = r#"
        [{name: a, key: k1}, {name: a, key: k2}] | auth.keys[1].name: duplicate key name "a" (also used by auth.keys[0])
        [{name: a, key: sk-same}, {name: b, key: sk-same}] | auth.keys[1].key: duplicate key (the same as auth.keys[0].key)
        [{name: a, key: ''}] | auth.keys[0].key: must not be empty
        [{name: a, key: '${NOPE:-}'}] | auth.keys[0].key: must not be empty
        [{name: a}] | auth.keys[0].key: required field is missing
        [{key: k, name: ''}] | auth.keys[0].name: must not be empty
        [{name: a, key: ' sk-x'}] | auth.keys[0].key: must not start or end with whitespace
        [{name: a, key: "sk\nx"}] | auth.keys[0].key: contains characters not allowed in an HTTP header
        [{name: a, key: k, rpm: 0}] | auth.keys[0].rpm: must be a positive integer
        [{name: a, key: k, rpm: -5, tpm: 0}] | auth.keys[0].rpm: must be a positive integer; auth.keys[0].tpm: must be a positive integer
        [{name: a, key: k, rpm: 5000000000}] | auth.keys[0].rpm: must be at most 4294967295
        [{name: a, key: k, rpm: many}] | auth.keys[0].rpm: expected an integer
        [{name: a, key: k, models: []}] | auth.keys[0].models: must not be an empty list (leave it out to allow every model)
        [{name: a, key: k, models: [x, '']}] | auth.keys[0].models[1]: must not be empty
        [{name: a, key: k, model: x}] | auth.keys[0].model: unknown field, expected one of name, key, models, rpm, tpm, budget_usd, max_concurrent
        [{name: a, key: k, budget_usd: {day: -1, month: 5}}] | auth.keys[0].budget_usd.day: must be a number of dollars >= 0
        [{name: a, key: k, budget_usd: {day: lots}}] | auth.keys[0].budget_usd.day: expected a number
        [{name: a, key: k, budget_usd: {week: 1}}] | auth.keys[0].budget_usd.week: unknown field, expected one of day, month
        [{name: a, key: '${NOPE}'}] | auth.keys[0].key: environment variable NOPE is not set (use ${NOPE:-default} for a default)
        [] | auth.keys: must not be an empty list (remove the auth section to run without keys)
        [7] | auth.keys[0]: expected a mapping
    "#;

    #[test]
    fn budgets_are_dollars_per_day_and_month_and_need_records() {
        let config =
            parse("  keys:\n    - {name: a, key: k, budget_usd: {day: 5, month: 100.5}}\n")
                .unwrap();
        let budget = config.auth.unwrap().keys[0].budget.unwrap();
        assert_eq!(budget.day, Some(Usd(5_000_000_000)));
        assert_eq!(budget.month, Some(Usd(100_500_000_000)));
        let only_month =
            parse("  keys:\n    - {name: a, key: k, budget_usd: {month: 0}}\n").unwrap();
        let budget = only_month.auth.unwrap().keys[0].budget.unwrap();
        assert_eq!((budget.day, budget.month), (None, Some(Usd::ZERO)));
        let text = format!("{CLIENT}usage: {{enabled: false}}\nauth:\n  keys:\n    - {{name: a, key: k, budget_usd: {{day: 5}}}}\n");
        let errors = Config::parse(&text, &env).unwrap_err().0;
        let expected = "auth.keys[0].budget_usd: needs usage records (usage.enabled: true): spend is counted from them";
        assert_eq!(
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            [expected]
        );
    }

    #[test]
    fn bad_keys_are_reported_at_their_paths_without_the_key() {
        for line in BAD.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (keys, expected) = line.split_once(" | ").unwrap();
            let errors = parse(&format!("  keys: {keys}\n")).unwrap_err();
            let expected: Vec<&str> = expected.split("; ").collect();
            assert_eq!(errors, expected, "{keys}");
            assert!(!errors.concat().contains("sk-"), "{errors:?}");
        }
    }

    #[test]
    fn the_section_itself_is_checked() {
        assert_eq!(
            parse("  {}\n").unwrap_err(),
            ["auth.keys: required field is missing"]
        );
        assert_eq!(
            parse("  {keys: [], extra: 1}\n").unwrap_err(),
            [
                "auth.extra: unknown field, expected one of keys",
                "auth.keys: must not be an empty list (remove the auth section to run without keys)"
            ]
        );
        assert_eq!(parse("  [a]\n").unwrap_err(), ["auth: expected a mapping"]);
    }

    #[test]
    fn clients_need_their_own_key_when_auth_is_on() {
        let text = "openai_clients:\n  - {name: a, api_key: k, base_url: 'http://h', model_match: {type: exact, value: m}}\n  \
                    - {name: b, base_url: 'ftp://h', model_match: {type: exact, value: m}}\n  \
                    - {name: c, api_key: '${NOPE:-}', base_url: 'http://h', model_match: {type: exact, value: m}}\n\
                    auth: {keys: [{name: t, key: sk-t}]}\n";
        let errors: Vec<String> = Config::parse(text, &env)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        let message =
            "required when auth is on: the caller's gateway key is never forwarded upstream";
        assert_eq!(
            errors,
            [
                "openai_clients[1].base_url: scheme must be http or https, not \"ftp\"".to_string(),
                format!("openai_clients[1].api_key: {message}"),
                format!("openai_clients[2].api_key: {message}"),
            ]
        );
    }
}
