//! Tests of the admin page through [`Admin::handle`]: the gate, logins, escaping, masking, the answers.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;
use crate::usage::sqlite::tests::record;
use crate::usage::{Store, UsageRecord};

pub(crate) const XSS_MODEL: &str = "<script>alert(1)</script>";
pub(crate) const XSS_HEADER: &str = "\"><img src=x onerror=alert(1)>";
const BACKEND_KEY: &str = "sk-backend-secret-1";
const GATEWAY_KEY: &str = "sk-gateway-key-1";
const ADMIN_KEY: &str = "admin-key-123";

struct FakeLive(Arc<crate::config::Config>);

impl Live for FakeLive {
    fn config(&self) -> Arc<crate::config::Config> {
        Arc::clone(&self.0)
    }
    fn backends(&self) -> Vec<BackendState> {
        Vec::new()
    }
    fn keys(&self, _now: chrono::DateTime<Local>) -> Vec<KeyState> {
        vec![KeyState {
            name: "team".into(),
            rpm: Some(10),
            remaining_requests: Some(7),
            ..KeyState::default()
        }]
    }
}

fn config(dir: &Path, admin: &str) -> crate::config::Config {
    let yaml = format!(
        "openai_clients: [{{name: one, base_url: 'http://127.0.0.1:1', api_key: {BACKEND_KEY}, \
         model_match: {{type: keyword, value: gpt}}}}]\n\
         server: {{{admin}}}\nusage: {{dir: '{}'}}\nauth: {{keys: [{{name: team, key: {GATEWAY_KEY}}}]}}\n",
        dir.display()
    );
    crate::config::Config::parse(&yaml, &|_| None).unwrap()
}

fn admin(dir: &Path) -> Admin {
    let admin = format!("admin_listen: '127.0.0.1:9200', admin_key: {ADMIN_KEY}");
    Admin::new(Arc::new(FakeLive(Arc::new(config(dir, &admin)))), true)
}

/// Records of today: one ordinary, one with hostile strings and a pasted backend key.
fn seed(dir: &Path) -> Vec<UsageRecord> {
    let now = Local::now().fixed_offset();
    let mut plain = record("2026-11-26T13:05:09.123+08:00");
    plain.time = now;
    plain.request_id = Some(uuid::Uuid::now_v7().hyphenated().to_string());
    let mut hostile = plain.clone();
    hostile.model = XSS_MODEL.into();
    hostile.request_id = Some(uuid::Uuid::now_v7().hyphenated().to_string());
    hostile.headers =
        serde_json::json!({ "x-note": XSS_HEADER, "authorization": "***" }).to_string();
    hostile.request = Some(format!(
        r#"{{"model":"x","note":"my key is {BACKEND_KEY}","b":{{"c":1}}}}"#
    ));
    hostile.status = 500;
    let records = vec![plain, hostile];
    Store::new(dir).write(&records).unwrap();
    records
}

fn get(path: &str) -> Request {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    Request {
        method: Method::GET,
        path: path.into(),
        query: query.into(),
        authorization: None,
        cookie: None,
        body: Vec::new(),
    }
}

fn bearer(path: &str, key: &str) -> Request {
    Request {
        authorization: Some(format!("Bearer {key}").into_bytes()),
        ..get(path)
    }
}

fn body(reply: &Reply) -> String {
    String::from_utf8(reply.body.clone()).unwrap()
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn every_page_and_call_needs_the_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin(dir.path());
    let page = admin.handle(get("/requests?model=a")).await;
    assert_eq!(page.status, 303);
    assert_eq!(
        header(&page, "location"),
        Some("/login?next=%2Frequests%3Fmodel%3Da")
    );
    for key in [None, Some("wrong"), Some(GATEWAY_KEY)] {
        let request = key.map_or_else(|| get("/api/keys"), |k| bearer("/api/keys", k));
        let reply = admin.handle(request).await;
        assert_eq!(reply.status, 401, "{key:?}");
        assert!(body(&reply).contains("authentication_error"));
    }
    assert_eq!(
        admin.handle(bearer("/api/keys", ADMIN_KEY)).await.status,
        200
    );
    // Assets hold nothing recorded: no key needed.
    assert_eq!(admin.handle(get("/favicon.ico")).await.status, 200);
    assert_eq!(admin.handle(get("/static/app.css")).await.status, 200);
}

#[tokio::test]
async fn a_login_makes_a_session_cookie_that_never_holds_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin(dir.path());
    let post = |key: &str| Request {
        method: Method::POST,
        body: format!("key={key}&next=%2Fkeys").into_bytes(),
        ..get("/login")
    };
    let wrong = admin.handle(post("nope")).await;
    assert_eq!(wrong.status, 401);
    assert!(body(&wrong).contains("Wrong key"));
    assert_eq!(header(&wrong, "set-cookie"), None);
    let gateway = admin.handle(post(GATEWAY_KEY)).await;
    assert_eq!(gateway.status, 401, "a gateway key is never an admin key");
    let ok = admin.handle(post(ADMIN_KEY)).await;
    assert_eq!(ok.status, 303);
    assert_eq!(header(&ok, "location"), Some("/keys"));
    let cookie = header(&ok, "set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly; SameSite=Strict; Path=/"),
        "{cookie}"
    );
    assert!(!cookie.contains(ADMIN_KEY));
    let token = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = |path: &str| Request {
        cookie: Some(format!("other=1; {token}")),
        ..get(path)
    };
    assert_eq!(admin.handle(with_cookie("/keys")).await.status, 200);
    assert_eq!(admin.handle(with_cookie("/api/keys")).await.status, 200);
    let out = admin
        .handle(Request {
            method: Method::POST,
            ..with_cookie("/logout")
        })
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(admin.handle(with_cookie("/keys")).await.status, 303);
    // A login never sends the browser elsewhere.
    let away = Request {
        method: Method::POST,
        body: format!("key={ADMIN_KEY}&next=%2F%2Fevil.example").into_bytes(),
        ..get("/login")
    };
    assert_eq!(header(&admin.handle(away).await, "location"), Some("/"));
}

#[tokio::test]
async fn without_a_key_only_a_loopback_listener_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let open = Arc::new(FakeLive(Arc::new(config(
        dir.path(),
        "admin_listen: '127.0.0.1:9200'",
    ))));
    assert_eq!(
        Admin::new(open.clone(), true)
            .handle(get("/api/keys"))
            .await
            .status,
        200
    );
    assert_eq!(
        Admin::new(open, false)
            .handle(get("/api/keys"))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn recorded_strings_are_shown_as_text_and_credentials_masked() {
    let dir = tempfile::tempdir().unwrap();
    let records = seed(dir.path());
    let admin = admin(dir.path());
    let month = crate::usage::Month::of(&records[0].time);
    let hostile = format!("/requests/{month}-2");
    for path in [
        "/",
        "/?by=model&range=today",
        "/requests",
        hostile.as_str(),
        "/keys",
    ] {
        let reply = admin.handle(bearer(path, ADMIN_KEY)).await;
        assert_eq!(reply.status, 200, "{path}");
        let html = body(&reply);
        assert!(!html.contains("<script>alert"), "{path}: {html}");
        assert!(!html.contains("<img"), "{path}");
        assert!(!html.contains(BACKEND_KEY), "{path}");
        assert!(
            !html.contains("style="),
            "{path}: the CSP forbids inline styles"
        );
    }
    let record = body(&admin.handle(bearer(&hostile, ADMIN_KEY)).await);
    assert!(record.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(record.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(record.contains("my key is ***"), "{record}");
    assert!(
        record.contains("\n  &quot;b&quot;: {\n    &quot;c&quot;: 1\n  }"),
        "indented: {record}"
    );
    let api = body(
        &admin
            .handle(bearer(&format!("/api{hostile}"), ADMIN_KEY))
            .await,
    );
    assert!(
        !api.contains(BACKEND_KEY) && api.contains("my key is ***"),
        "{api}"
    );
    let by_uuid = format!(
        "/api/requests/{}",
        records[0].request_id.as_deref().unwrap()
    );
    let found: Value =
        serde_json::from_str(&body(&admin.handle(bearer(&by_uuid, ADMIN_KEY)).await)).unwrap();
    assert_eq!(found["id"], json!(format!("{month}-1")));
    let missing = admin
        .handle(bearer("/api/requests/202001-5", ADMIN_KEY))
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        admin
            .handle(bearer("/api/requests/xyz", ADMIN_KEY))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn the_usage_call_answers_what_the_report_prints() {
    let dir = tempfile::tempdir().unwrap();
    let records = seed(dir.path());
    let admin = admin(dir.path());
    let day = records[0].time.format("%Y-%m-%d").to_string();
    let path = format!("/api/usage?from={day}&to={day}&by=day,model");
    let reply = admin.handle(bearer(&path, ADMIN_KEY)).await;
    let range = crate::report::Range {
        from: records[0].time.date_naive(),
        to: records[0].time.date_naive(),
    };
    let by = [crate::report::Dim::Day, crate::report::Dim::Model];
    let expected = crate::report::json(
        &crate::report::collect(&[dir.path().to_path_buf()], range, &by).unwrap(),
    );
    assert_eq!(body(&reply), expected);
    let bad = admin
        .handle(bearer("/api/usage?from=2026-13-01", ADMIN_KEY))
        .await;
    assert_eq!(bad.status, 400);
    let overview: Value = serde_json::from_str(&body(
        &admin
            .handle(bearer("/api/overview?range=today", ADMIN_KEY))
            .await,
    ))
    .unwrap();
    assert_eq!(overview["total"]["requests"], json!(2));
    assert_eq!(overview["total"]["errors"], json!(1));
    assert_eq!(overview["labels"].as_array().unwrap().len(), 24);
}
