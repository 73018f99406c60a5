//! The admin page on `server.admin_listen`, against records the real gateway wrote, API and browser.

// The admin page on `server.admin_listen`, against records the real gateway wrote: the JSON API (equal to `gpt-api
// usage` where it reports the same), its key, masking; and every page in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common::python::python_with;
use crate::common::records::{usage_config, wait_rows};
use crate::common::{client, free_port, http_client, post_with, Gateway, Mock, BIN};

const ADMIN_KEY: &str = "admin-key-it-1";
const BACKEND_KEY: &str = "sk-backend-secret-it";
const TEAM_KEY: &str = "sk-gateway-team-1";
const OTHER_KEY: &str = "sk-gateway-other-2";
const XSS_MODEL: &str = "gpt-<script>alert(1)</script>";
const XSS_HEADER: &str = "\"><img src=x onerror=alert(1)>";
const SELENIUM: &str = "selenium==4.27.1";

/// A gateway with the admin page on, and what it recorded: 3 requests of key `team` (one streamed), 2 of key
/// `other` with a hostile model name and header.
struct Setup {
    gw: Gateway,
    _mock: Mock,
    db: tempfile::TempDir,
    admin: String,
    /// The `x-request-id` of each request, in order.
    ids: Vec<String>,
}

async fn setup() -> Setup {
    let mock = Mock::start("b").await;
    let mut backend = client("backend-a", &mock.base_url("/v1"), "keyword", &["gpt"]);
    backend["api_key"] = json!(BACKEND_KEY);
    let db = tempfile::tempdir().unwrap();
    let mut config = usage_config(vec![backend], db.path(), json!({}));
    let port = free_port();
    config["server"] =
        json!({ "admin_listen": format!("127.0.0.1:{port}"), "admin_key": ADMIN_KEY });
    config["auth"] = json!({ "keys": [
        { "name": "team", "key": TEAM_KEY, "rpm": 100, "budget_usd": { "day": 5 } },
        { "name": "other", "key": OTHER_KEY },
    ]});
    let gw = Gateway::start(&config).await;
    let mut ids = Vec::new();
    let sends = [
        (TEAM_KEY, "gpt-4o", false, None),
        (TEAM_KEY, "gpt-4o", false, None),
        (TEAM_KEY, "gpt-4o", true, None),
        (OTHER_KEY, XSS_MODEL, false, Some(XSS_HEADER)),
        (OTHER_KEY, XSS_MODEL, false, Some(XSS_HEADER)),
    ];
    for (key, model, stream, note) in sends {
        let body = json!({
            "model": model, "stream": stream,
            "messages": [{ "role": "user", "content": "hello", "note": { "nested": [1, 2] } }],
        });
        let auth = format!("Bearer {key}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(note) = note {
            headers.push(("x-note", note));
        }
        let resp = post_with(&gw, "/v1/chat/completions", &body, &headers).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        ids.push(resp.header("x-request-id").unwrap().to_owned());
    }
    wait_rows(db.path(), 5).await;
    Setup {
        gw,
        _mock: mock,
        db,
        admin: format!("http://127.0.0.1:{port}"),
        ids,
    }
}

async fn api(s: &Setup, path: &str, key: Option<&str>) -> (u16, String) {
    let mut request = http_client().get(format!("{}{path}", s.admin));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn api_json(s: &Setup, path: &str) -> Value {
    let (status, text) = api(s, path, Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn today() -> String {
    chrono::Local::now().format("%Y-%m-%d").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_from_the_records_and_the_running_gateway() {
    let s = setup().await;
    for key in [None, Some("wrong"), Some(TEAM_KEY)] {
        let (status, text) = api(&s, "/api/keys", key).await;
        assert_eq!(status, 401, "{key:?}: {text}");
    }
    // The same rows and sums as `gpt-api usage --format json`.
    let day = today();
    let (status, usage) = api(
        &s,
        &format!("/api/usage?from={day}&to={day}&by=day,model"),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let dir = s.db.path().to_str().unwrap();
    let cli = Command::new(BIN)
        .args([
            "usage",
            "--dir",
            dir,
            "--from",
            &day,
            "--to",
            &day,
            "--by",
            "day,model",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(usage, String::from_utf8(cli.stdout).unwrap());

    let overview = api_json(&s, "/api/overview?range=today&by=key").await;
    assert_eq!(overview["total"]["requests"], json!(5));
    let names: Vec<&Value> = overview["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(names, [&json!("team"), &json!("other")]);

    let first = api_json(&s, "/api/requests?limit=2").await;
    assert_eq!(first["requests"].as_array().unwrap().len(), 2);
    let next = first["next"].as_str().unwrap();
    let rest = api_json(&s, &format!("/api/requests?limit=10&before={next}")).await;
    assert_eq!(rest["requests"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next"], Value::Null);
    let team = api_json(&s, "/api/requests?key=team&stream=true").await;
    assert_eq!(team["requests"].as_array().unwrap().len(), 1);
    assert_eq!(team["requests"][0]["request_id"], json!(s.ids[2]));

    let by_uuid = api_json(&s, &format!("/api/requests/{}", s.ids[3])).await;
    assert_eq!(by_uuid["model"], json!(XSS_MODEL));
    let id = by_uuid["id"].as_str().unwrap();
    let by_id = api_json(&s, &format!("/api/requests/{id}")).await;
    assert_eq!(by_id, by_uuid);
    assert!(
        by_id["headers"].as_str().unwrap().contains("onerror"),
        "{by_id}"
    );

    let backends = api_json(&s, "/api/backends").await;
    let backend = &backends["backends"][0];
    assert_eq!(backend["name"], json!("backend-a"));
    assert_eq!(backend["recent"]["requests"], json!(5));
    assert_eq!(backend["consecutive_failures"], json!(0));

    let keys = api_json(&s, "/api/keys").await;
    let team = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "team")
        .unwrap();
    assert_eq!(team["today"]["requests"], json!(3));
    assert_eq!(team["limits"]["rpm"], json!(100));
    assert_eq!(team["left"]["requests_this_minute"], json!(97));
    assert_eq!(team["limits"]["budget_day_usd"], json!(5.0));

    for path in [
        "/api/keys",
        "/api/backends",
        "/api/requests",
        &format!("/api/requests/{id}"),
    ] {
        let (_, text) = api(&s, path, Some(ADMIN_KEY)).await;
        for secret in [BACKEND_KEY, TEAM_KEY, OTHER_KEY, ADMIN_KEY] {
            assert!(!text.contains(secret), "{path} shows a key");
        }
    }
    drop(s.gw);
}

/// Headless Chromium with its WebDriver, installed from Debian when missing (tests run in parallel
/// processes: one installs under the lock, the others wait for it).
fn chromium() -> Result<(), String> {
    let script = "command -v chromedriver >/dev/null && command -v chromium >/dev/null || \
                  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)";
    let out = Command::new("flock")
        .args(["/tmp/gpt-api-apt.lock", "sh", "-c", script])
        .output()
        .map_err(|e| format!("flock: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("admin-screenshots")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_in_a_real_browser() {
    chromium().expect("chromium and chromium-driver (Debian)");
    let python = python_with("py-venv-browser", SELENIUM);
    let s = setup().await;
    let record = api_json(&s, &format!("/api/requests/{}", s.ids[3])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let args = json!({
        "base": s.admin, "key": ADMIN_KEY, "shots": screenshots(), "record": record,
        "filter_model": XSS_MODEL, "xss_model": XSS_MODEL,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/admin_browser.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(args.to_string())
            .env("SE_AVOID_STATS", "true")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_str(stdout.trim()).unwrap();
    for (page, errors) in found["console"].as_object().unwrap() {
        assert_eq!(errors, &json!([]), "console errors on {page}");
    }
    assert!(
        found["login_url"]
            .as_str()
            .unwrap()
            .contains("/login?next="),
        "{found}"
    );
    assert_eq!(found["wrong_key_refused"], json!(true));
    let wrong: Vec<String> = serde_json::from_value(found["wrong_key_console"].clone()).unwrap();
    assert!(
        wrong.iter().all(|e| e.contains("401")),
        "only the refusal itself: {wrong:?}"
    );
    assert!(
        found["after_login"].as_str().unwrap().ends_with('/'),
        "{found}"
    );
    assert_eq!(found["overview_requests"], json!("5"));
    assert!(
        found["bars"].as_u64().unwrap() >= 1 && found["bar_height"].as_f64().unwrap() > 1.0,
        "{found}"
    );
    assert!(
        found["top_models_text"]
            .as_str()
            .unwrap()
            .contains(XSS_MODEL),
        "shown as text: {found}"
    );
    assert_eq!(found["injected_elements"], json!(0));
    assert_eq!(
        found["phone_overflow"],
        json!(false),
        "the overview fits a phone's width"
    );
    assert_eq!(found["rows_before"], json!(5));
    assert_eq!(
        found["rows_after"],
        json!(2),
        "the model filter narrows the table"
    );
    let body = found["request_body"].as_str().unwrap();
    assert!(
        body.contains("{\n  \"model\": "),
        "indented, one key per line: {body}"
    );
    assert!(body.contains("\"nested\": [\n"), "{body}");
    assert!(
        found["headers_text"].as_str().unwrap().contains(XSS_HEADER),
        "{found}"
    );
    assert_eq!(found["record_injected"], json!(0));
    assert!(found["backends_text"]
        .as_str()
        .unwrap()
        .contains("backend-a"));
    assert!(found["keys_text"].as_str().unwrap().contains("team"));
    assert_eq!(found["alert"], json!(false));
    for page in [
        "login",
        "overview",
        "overview-phone",
        "requests",
        "record",
        "backends",
        "keys",
    ] {
        assert!(
            screenshots().join(format!("{page}.png")).is_file(),
            "{page}.png"
        );
    }
    drop(s.gw);
}
