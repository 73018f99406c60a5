//! The requests page (filters, newest first, a page at a time) and one record's page.

// The requests page (filters, newest first, a page at a time) and one record's page (headers, bodies as indented
// JSON, attempts, error, timings).

use serde_json::Value;

use super::{end, layout, Problem};
use crate::admin::api::{filter, Params};
use crate::admin::html::{count, millis, usd, Html};
use crate::admin::requests;
use crate::admin::Admin;
use crate::config::Config;

/// The filter fields of the form, in order: (parameter, label, input type).
const FIELDS: [(&str, &str, &str); 7] = [
    ("from", "From", "date"),
    ("to", "To", "date"),
    ("model", "Model", "text"),
    ("key", "Key", "text"),
    ("backend", "Backend", "text"),
    ("status", "Status (200, 5xx, error)", "text"),
    ("stream", "Stream", "select"),
];

pub async fn list(admin: &Admin, config: &Config, params: &Params) -> Result<String, Problem> {
    let filter = filter(params)?;
    let files = Admin::files(config);
    let page = admin
        .blocking(move || requests::list(&files, &filter))
        .await?;
    let mut h = layout("Requests", "/requests");
    h.el("h1", &[], "Requests");
    h.raw("<form class=\"inline controls\" id=\"filters\" method=\"get\" action=\"/requests\">");
    for (name, label, kind) in FIELDS {
        h.open("label", &[]).text(label);
        let value = params.get(name);
        if kind == "select" {
            h.open("select", &[("name", Some(name))]);
            for (v, text) in [("", "any"), ("true", "stream"), ("false", "not stream")] {
                let selected = (value.unwrap_or("") == v).then_some("selected");
                h.el(
                    "option",
                    &[("value", Some(v)), ("selected", selected)],
                    text,
                );
            }
            h.close("select");
        } else {
            h.open(
                "input",
                &[("type", Some(kind)), ("name", Some(name)), ("value", value)],
            );
        }
        h.close("label");
    }
    h.raw("<button type=\"submit\">Filter</button> <a href=\"/requests\">Clear</a></form>");
    h.open("div", &[("class", Some("scroll"))])
        .raw("<table id=\"requests\"><thead><tr>");
    let heads = [
        "Time",
        "Model",
        "Key",
        "Backend",
        "Status",
        "Stream",
        "Latency",
        "First token",
        "Tokens",
        "Cost",
    ];
    for head in heads {
        h.el("th", &[], head);
    }
    h.raw("</tr></thead><tbody>");
    for r in &page.requests {
        row(&mut h, r);
    }
    h.raw("</tbody></table></div>");
    if page.requests.is_empty() {
        h.el("p", &[("class", Some("muted"))], "No records match.");
    }
    if let Some(next) = page.next {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, _, _) in FIELDS {
            if let Some(v) = params.get(name) {
                query.append_pair(name, v);
            }
        }
        if let Some(v) = params.get("limit") {
            query.append_pair("limit", v);
        }
        query.append_pair("before", &next.to_string());
        let href = format!("/requests?{}", query.finish());
        h.raw("<p class=\"pager\">")
            .el(
                "a",
                &[("href", Some(&href)), ("id", Some("older"))],
                "Older →",
            )
            .raw("</p>");
    }
    Ok(end(h))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) if s.is_empty() => "–".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_i64().map_or_else(|| "–".into(), millis)
}

fn row(h: &mut Html, r: &Value) {
    let id = text(&r["id"]);
    let href = format!("/requests/{id}");
    let status = r["status"].as_i64().unwrap_or(0);
    let failed = status >= 400 || !r["error"].is_null();
    h.raw("<tr><td>")
        .el("a", &[("href", Some(&href))], &text(&r["time"]))
        .raw("</td>");
    for name in ["model", "key", "backend"] {
        h.el("td", &[("class", Some("wrap"))], &text(&r[name]));
    }
    h.el(
        "td",
        &[("class", failed.then_some("bad"))],
        &text(&r["status"]),
    );
    let stream = match r["stream"].as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "–",
    };
    h.el("td", &[], stream);
    h.el("td", &[("class", Some("num"))], &ms(&r["latency_ms"]));
    h.el("td", &[("class", Some("num"))], &ms(&r["first_token_ms"]));
    let tokens = r["total_tokens"].as_i64().map_or_else(|| "–".into(), count);
    h.el("td", &[("class", Some("num"))], &tokens);
    let cost = r["cost_usd"].as_f64().map_or_else(|| "–".into(), usd);
    h.el("td", &[("class", Some("num"))], &cost);
    h.raw("</tr>");
}

pub async fn record(admin: &Admin, config: &Config, id: &str) -> Result<String, Problem> {
    let files = Admin::files(config);
    let wanted = id.to_owned();
    let record = admin
        .blocking(move || requests::detail(&files, &wanted))
        .await?;
    let Some(r) = record else {
        return Err(Problem::NotFound);
    };
    let mut h = layout("Request", "/requests");
    h.el("h1", &[], &format!("Request {}", text(&r["id"])));
    h.raw("<dl class=\"facts\" id=\"facts\">");
    let facts = [
        ("Time", text(&r["time"])),
        ("Request id", text(&r["request_id"])),
        ("Model", text(&r["model"])),
        ("Sent upstream as", text(&r["upstream_model"])),
        ("Type", text(&r["type"])),
        ("Key", text(&r["key"])),
        ("Backend", text(&r["backend"])),
        ("Attempts", text(&r["attempts"])),
        ("Status", text(&r["status"])),
        ("Stream", text(&r["stream"])),
        ("Latency", ms(&r["latency_ms"])),
        ("First token", ms(&r["first_token_ms"])),
        (
            "Prompt · completion · total tokens",
            format!(
                "{} · {} · {}",
                text(&r["prompt_tokens"]),
                text(&r["completion_tokens"]),
                text(&r["total_tokens"])
            ),
        ),
        (
            "Cache read · write · reasoning tokens",
            format!(
                "{} · {} · {}",
                text(&r["cached_tokens"]),
                text(&r["cache_write_tokens"]),
                text(&r["reasoning_tokens"])
            ),
        ),
        ("Tokens estimated", text(&r["usage_estimated"])),
        (
            "Cost",
            r["cost_usd"].as_f64().map_or_else(|| "–".into(), usd),
        ),
        ("Caller IP", text(&r["ip"])),
        ("Node", text(&r["node"])),
    ];
    for (name, value) in facts {
        h.el("dt", &[], name).el("dd", &[], &value);
    }
    h.raw("</dl>");
    if !r["error"].is_null() {
        h.el("h2", &[], "Error");
        h.el(
            "pre",
            &[("class", Some("bad")), ("id", Some("error"))],
            &text(&r["error"]),
        );
    }
    h.el("h2", &[], "Request headers (credentials masked as stored)");
    headers(&mut h, &r["headers"]);
    h.el("h2", &[], "Request body");
    body(&mut h, "request-body", &r["request"]);
    let streamed = r["stream"].as_bool() == Some(true);
    h.el(
        "h2",
        &[],
        if streamed {
            "Response (the stream's rebuilt message)"
        } else {
            "Response body"
        },
    );
    body(&mut h, "response-body", &r["response"]);
    Ok(end(h))
}

/// The stored headers (a JSON object of name to value, or to a list of values) as a table.
fn headers(h: &mut Html, stored: &Value) {
    let parsed: Option<Value> = stored.as_str().and_then(|s| serde_json::from_str(s).ok());
    let Some(Value::Object(map)) = parsed else {
        body(h, "headers", stored);
        return;
    };
    h.raw("<div class=\"scroll\"><table id=\"headers\"><tbody>");
    for (name, value) in &map {
        let values: Vec<String> = match value {
            Value::Array(items) => items.iter().map(text).collect(),
            other => vec![text(other)],
        };
        for value in values {
            h.raw("<tr>")
                .el("th", &[], name)
                .el("td", &[("class", Some("wrap"))], &value)
                .raw("</tr>");
        }
    }
    h.raw("</tbody></table></div>");
}

/// A body: JSON indented (one key per line), anything else as stored.
fn body(h: &mut Html, id: &'static str, stored: &Value) {
    let Some(text) = stored.as_str() else {
        h.el(
            "p",
            &[("class", Some("muted")), ("id", Some(id))],
            "Not recorded.",
        );
        return;
    };
    let pretty = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    h.el(
        "pre",
        &[("id", Some(id))],
        pretty.as_deref().unwrap_or(text),
    );
}
