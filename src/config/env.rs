//! `${VAR}` and `${VAR:-default}` expansion, applied to the string leaves of the parsed YAML tree.

use serde_yaml::Value;

use super::base_url::mask_userinfo;
use super::file::{index_path, key_path, key_text};
use super::ConfigError;

/// Why one string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum EnvError {
    #[error("environment variable {0} is not set (use ${{{0}:-default}} for a default)")]
    Unset(String),
    #[error("unterminated \"${{\": expected \"}}\" after the variable name")]
    Unterminated,
    #[error(
        "invalid environment variable name {0:?} in \"${{...}}\" (letters, digits and _ only)"
    )]
    BadName(String),
}

/// Expands every string in `tree` in place; a string that fails is left as written and reported at its path.
///
/// Expanding after parsing, not in the raw text, means a value can never change the YAML structure whatever it
/// contains. Only `${` starts a reference: `$$` and a lone `$` stay literal.
pub(super) fn expand_tree(
    tree: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match tree {
        Value::String(text) => match expand(text, env) {
            Ok(expanded) => *text = expanded,
            Err(e) => errors.push(ConfigError::new(path, e.to_string())),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &index_path(path, i), env, errors);
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                expand_tree(value, &key_path(path, &key_text(key)), env, errors);
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, path, env, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands the `${...}` references in one string.
pub(super) fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..];
        let end = inner.find('}').ok_or(EnvError::Unterminated)?;
        out.push_str(&lookup(&inner[..end], env)?);
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves `VAR` or `VAR:-default`. Like the shell, `:-` also applies when the variable is set but empty,
/// so `OPENAI_API_KEY=` in an env file behaves like an unset key.
fn lookup(reference: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let (name, default) = match reference.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (reference, None),
    };
    if !is_valid_name(name) {
        // Whatever was written there is shown, so a URL pasted into `${...}` shows no password.
        return Err(EnvError::BadName(mask_userinfo(name).into_owned()));
    }
    match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_string()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(EnvError::Unset(name.to_string())),
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            "URL" => Some("http://h:1/v1".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        expand(text, &env).unwrap()
    }

    #[test]
    fn expands_set_variables() {
        assert_eq!(ok("${KEY}"), "sk-123");
        assert_eq!(ok("Bearer ${KEY}!"), "Bearer sk-123!");
        assert_eq!(ok("${URL}${KEY}"), "http://h:1/v1sk-123");
        assert_eq!(ok("${EMPTY}"), "");
        assert_eq!(ok("${KEY:-other}"), "sk-123");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(
            ok("${NOPE:-http://127.0.0.1:8001/v1}"),
            "http://127.0.0.1:8001/v1"
        );
        assert_eq!(ok("${NOPE:-}"), "");
        assert_eq!(ok("${EMPTY:-fallback}"), "fallback");
        assert_eq!(ok("${NOPE:-a:-b}"), "a:-b");
    }

    #[test]
    fn dollars_without_brace_stay_literal() {
        assert_eq!(ok("$$"), "$$");
        assert_eq!(ok("a$b$"), "a$b$");
        assert_eq!(ok("$KEY"), "$KEY");
        assert_eq!(ok("$${KEY}"), "$sk-123");
        assert_eq!(ok("plain"), "plain");
        assert_eq!(ok(""), "");
    }

    #[test]
    fn reports_unset_bad_and_unterminated_references() {
        let err = |t: &str| expand(t, &env).unwrap_err();
        assert_eq!(
            err("${OPENAI_API_KEY}"),
            EnvError::Unset("OPENAI_API_KEY".into())
        );
        assert_eq!(
            err("${OPENAI_API_KEY}").to_string(),
            "environment variable OPENAI_API_KEY is not set (use ${OPENAI_API_KEY:-default} for a default)"
        );
        assert_eq!(err("${KEY"), EnvError::Unterminated);
        assert_eq!(err("${}"), EnvError::BadName(String::new()));
        assert_eq!(err("${1X}"), EnvError::BadName("1X".into()));
        assert_eq!(err("${A-b}"), EnvError::BadName("A-b".into()));
        assert_eq!(err("${KEY}${NOPE}"), EnvError::Unset("NOPE".into()));
    }

    #[test]
    fn a_url_in_a_bad_reference_is_shown_without_its_password() {
        let err = expand("${https://user:s3cret@h/v1}", &env).unwrap_err();
        assert_eq!(err, EnvError::BadName("https://***@h/v1".into()));
    }

    #[test]
    fn expands_every_string_leaf_and_reports_paths() {
        let mut tree: Value = serde_yaml::from_str(
            "a: ${KEY}\nlist: [x, '${NOPE}']\nnested: {n: 5, s: '${URL}', t: !tag '${KEY}'}\nkeep: ${NOPE2:-d}",
        )
        .unwrap();
        let mut errors = Vec::new();
        expand_tree(&mut tree, "", &env, &mut errors);
        assert_eq!(tree["a"], "sk-123");
        assert_eq!(
            tree["list"][1], "${NOPE}",
            "a failed string is left as written"
        );
        assert_eq!(tree["nested"]["n"], 5);
        assert_eq!(tree["nested"]["s"], "http://h:1/v1");
        assert_eq!(tree["keep"], "d");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "list[1]");
        assert!(errors[0].message.contains("NOPE is not set"));
    }
}
