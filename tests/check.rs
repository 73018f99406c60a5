//! `gpt-api --check`: exit 0 with a one-line summary for a good config, exit 1 with field paths for a bad one.

use crate::common;
use crate::common::check;

const GOOD: &str = r#"
server:
  listen: "127.0.0.1:18000"
  max_body_bytes: 1048576
openai_clients:
  - name: "a"
    api_key: "sk-good-config-key"
    base_url: "http://127.0.0.1:9/v1"
    priority: 1
    weight: 2
    model_match: { type: "exact", value: ["m1", "m2"] }
    headers: { "x-extra": "v" }
    connect_timeout_ms: 1000
    read_timeout_ms: 5000
  - name: "b"
    base_url: "http://127.0.0.1:9"
    model_match: { type: "keyword", value: "gpt" }
"#;

#[test]
fn good_config_exits_0_with_one_line() {
    let out = check(GOOD, &[], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim_end().lines().count(),
        1,
        "one summary line expected: {:?}",
        out.stdout
    );
    assert!(!out.stdout.trim().is_empty());
    assert!(
        !out.stdout.contains("sk-good-config-key"),
        "summary must not print the key"
    );
}

#[test]
fn bad_match_type_names_the_field() {
    let yaml = r#"
openai_clients:
  - name: "a"
    api_key: "sk-must-not-appear"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "regex", value: "x" }
"#;
    let out = check(yaml, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("openai_clients[0].model_match.type"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("sk-must-not-appear"),
        "key printed: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("sk-must-not-appear"));
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let yaml = r#"
openai_clients:
  - name: "a"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "regex", value: "x" }
  - name: "b"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "glob", value: "y" }
"#;
    let out = check(yaml, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("openai_clients[0].model_match.type"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("openai_clients[1].model_match.type"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let yaml = r#"
openai_clients:
  - name: "a"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "exact", value: "m1" }
    pirority: 1
"#;
    let out = check(yaml, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("pirority"),
        "stderr should name the unknown key: {}",
        out.stderr
    );
}

#[test]
fn invalid_yaml_and_missing_file_exit_1() {
    let out = check("openai_clients: [ {name: \"a\"\n", &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stderr.trim().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let out = common::run_bin(
        &["--config", missing.to_str().unwrap(), "--check"],
        &[],
        &[],
        dir.path(),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stderr.trim().is_empty());
}

#[test]
fn env_var_in_config() {
    let yaml = r#"
openai_clients:
  - name: "a"
    api_key: "${GPT_API_TEST_CHECK_VAR_1}"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "exact", value: "m1" }
"#;
    let out = check(yaml, &[], &["GPT_API_TEST_CHECK_VAR_1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("GPT_API_TEST_CHECK_VAR_1"),
        "stderr should name the variable: {}",
        out.stderr
    );

    let out = check(yaml, &[("GPT_API_TEST_CHECK_VAR_1", "sk-env-value")], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("sk-env-value") && !out.stderr.contains("sk-env-value"));

    let with_default = yaml.replace(
        "${GPT_API_TEST_CHECK_VAR_1}",
        "${GPT_API_TEST_CHECK_VAR_1:-sk-default}",
    );
    let out = check(&with_default, &[], &["GPT_API_TEST_CHECK_VAR_1"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// A `base_url` carrying `user:s3cret@`: as a valid URL, with a bad port, a bad host, no host, a bad scheme,
/// without a scheme, a password holding a `/`, and inside a bad `${...}`. Each is an error at its field path,
/// and the password is printed nowhere.
#[test]
fn a_base_url_with_a_password_is_refused_without_echoing_it() {
    for url in [
        "https://user:s3cret@api.example.com/v1",
        "https://user:s3cret@host:99999/v1",
        "https://user:s3cret@ho st/v1",
        "https://user:s3cret@/v1",
        "ftp://user:s3cret@host/v1",
        "//user:s3cret@host/v1",
        "https://user:s3/cret@host/v1",
        "${https://user:s3cret@host/v1}",
    ] {
        let yaml = format!(
            "openai_clients:\n  - {{ name: a, api_key: k, base_url: {url:?}, model_match: {{ type: exact, value: m }} }}\n"
        );
        let out = check(&yaml, &[], &[]);
        assert_ne!(out.code, 0, "{url}: {out:?}");
        assert!(
            out.stderr.contains("openai_clients[0].base_url"),
            "{url}: the error names the field: {}",
            out.stderr
        );
        for shown in [&out.stdout, &out.stderr] {
            assert!(
                !shown.contains("s3cret"),
                "{url}: password printed: {shown}"
            );
            assert!(
                !shown.contains("s3/cret"),
                "{url}: password printed: {shown}"
            );
        }
    }
}
