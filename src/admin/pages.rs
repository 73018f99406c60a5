//! The HTML pages: the layout, the embedded assets, the login form and the overview.

// The HTML pages: the layout, the embedded assets, the login form and the overview; the record pages are in
// `pages/records.rs`, the live ones (backends, keys) in `pages/live.rs`. Everything goes through [`Html`].

mod live;
mod records;

use super::api::{by, range, step, Params};
use super::chart::{self, stacked_bars, Line};
use super::files::QueryError;
use super::html::{count, millis, percent, usd, Html};
use super::overview::{cost, By, Overview, Percentiles};
use super::{Admin, Reply, Request};
use crate::config::Config;
use crate::usage::sqlite::rollup::Sums;

const CSS: &str = include_str!("assets/app.css");
const FAVICON: &str = include_str!("assets/favicon.svg");

/// The embedded files, served to anyone (they hold nothing recorded).
pub fn asset(path: &str) -> Option<Reply> {
    let (kind, body) = match path {
        "/static/app.css" => ("text/css; charset=utf-8", CSS),
        "/favicon.svg" | "/favicon.ico" => ("image/svg+xml", FAVICON),
        _ => return None,
    };
    let mut reply = Reply::new(200, kind, body);
    reply
        .headers
        .push(("cache-control", "public, max-age=3600".into()));
    Some(reply)
}

/// Answers a page path.
pub async fn route(admin: &Admin, config: &Config, request: &Request) -> Reply {
    let params = Params::parse(&request.query);
    let path = request.path.as_str();
    let page = match path {
        "/" => overview_page(admin, config, &params).await,
        "/requests" => records::list(admin, config, &params).await,
        "/backends" => live::backends(admin, config).await,
        "/keys" => live::keys(admin, config).await,
        _ => match path.strip_prefix("/requests/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                records::record(admin, config, id).await
            }
            _ => Err(Problem::NotFound),
        },
    };
    match page {
        Ok(html) => Reply::html(200, html),
        Err(problem) => {
            let (status, message) = match problem {
                Problem::NotFound => (404, "No such page or record.".to_string()),
                Problem::Query(e) => (e.status(), e.to_string()),
            };
            let mut h = layout("Error", "");
            h.el("h1", &[], "Error")
                .el("p", &[("class", Some("bad"))], &message);
            Reply::html(status, end(h))
        }
    }
}

/// Why a page is not shown.
pub enum Problem {
    NotFound,
    Query(QueryError),
}

impl From<QueryError> for Problem {
    fn from(e: QueryError) -> Problem {
        Problem::Query(e)
    }
}

const NAV: [(&str, &str); 4] = [
    ("/", "Overview"),
    ("/requests", "Requests"),
    ("/backends", "Backends"),
    ("/keys", "Keys"),
];

/// The page head and the navigation; `here` is the current page's path.
pub fn layout(title: &str, here: &str) -> Html {
    let mut h = Html::new();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">")
        .raw("<link rel=\"stylesheet\" href=\"/static/app.css\">");
    h.el("title", &[], &format!("{title} · gpt-api admin"));
    h.raw("</head><body><header><a class=\"brand\" href=\"/\">gpt-api admin</a><nav>");
    for (path, name) in NAV {
        let class = (path == here).then_some("here");
        h.el("a", &[("href", Some(path)), ("class", class)], name);
    }
    h.raw("</nav><form method=\"post\" action=\"/logout\"><button class=\"link\" type=\"submit\">Log out</button></form>");
    h.raw("</header><main>");
    h
}

pub fn end(mut h: Html) -> String {
    h.raw("</main></body></html>");
    h.finish()
}

/// The login form; `failed` after a wrong key. The key is posted in the body, never put in a URL.
pub fn login(next: &str, failed: bool) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">")
        .raw("<link rel=\"stylesheet\" href=\"/static/app.css\"><title>Log in · gpt-api admin</title></head><body>")
        .raw("<form class=\"login\" method=\"post\" action=\"/login\"><h1>gpt-api admin</h1>");
    if failed {
        h.el(
            "p",
            &[("class", Some("bad")), ("id", Some("login-error"))],
            "Wrong key.",
        );
    }
    h.raw("<label for=\"key\">Admin key</label>")
        .raw("<input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>");
    h.open(
        "input",
        &[
            ("type", Some("hidden")),
            ("name", Some("next")),
            ("value", Some(next)),
        ],
    );
    h.raw("<button type=\"submit\">Log in</button></form></body></html>");
    h.finish()
}

/// A figure card: label, big value, a small line under it.
pub fn card(h: &mut Html, id: &'static str, label: &str, value: &str, sub: &str) {
    h.open("div", &[("class", Some("card")), ("id", Some(id))]);
    h.el("div", &[("class", Some("label"))], label);
    h.el("div", &[("class", Some("value"))], value);
    h.el("div", &[("class", Some("sub"))], sub);
    h.close("div");
}

fn ms(p: Option<i64>) -> String {
    p.map_or_else(|| "–".into(), millis)
}

fn cost_text(s: &Sums) -> String {
    cost(s).map_or_else(|| "–".into(), usd)
}

async fn overview_page(admin: &Admin, config: &Config, params: &Params) -> Result<String, Problem> {
    let today = Admin::now().date_naive();
    let range = range(params, today)?;
    let (step, by) = (step(params, range)?, by(params)?);
    let o = admin.overview(config, range, step, by).await?;
    let mut h = layout("Overview", "/");
    h.el("h1", &[], "Overview");
    controls(&mut h, params, &o);
    figures(&mut h, &o);
    h.el(
        "h2",
        &[],
        &format!("Requests per {} by {}", o.step.name(), o.by.name()),
    );
    chart_box(&mut h, &o, "Requests", |s| &s.requests);
    h.el(
        "h2",
        &[],
        &format!("Tokens per {} by {}", o.step.name(), o.by.name()),
    );
    chart_box(&mut h, &o, "Tokens", |s| &s.tokens);
    h.raw("<div class=\"two\"><div>");
    h.el("h2", &[], "Top models");
    top_table(&mut h, "top-models", "Model", &o.models, "model");
    h.raw("</div><div>");
    h.el("h2", &[], "Top keys");
    top_table(&mut h, "top-keys", "Key", &o.keys, "key");
    h.raw("</div></div>");
    h.el(
        "p",
        &[("class", Some("muted"))],
        "Latency and time-to-first-token percentiles come from daily histograms (two significant digits): \
         within 5% of the exact values. Dates are the gateway's local dates.",
    );
    Ok(end(h))
}

/// The range links, the custom range form, and what the charts are stacked by.
fn controls(h: &mut Html, params: &Params, o: &Overview) {
    let chosen = params
        .get("range")
        .unwrap_or(if params.get("from").is_some() {
            "custom"
        } else {
            "month"
        });
    h.raw("<div class=\"controls\"><span class=\"muted\">Range:</span>");
    for (value, name) in [
        ("today", "Today"),
        ("7d", "7 days"),
        ("30d", "30 days"),
        ("month", "This month"),
    ] {
        let href = format!("/?range={value}&by={}", o.by.name());
        let class = (chosen == value).then_some("here");
        h.el("a", &[("href", Some(&href)), ("class", class)], name);
    }
    h.raw("<span class=\"muted\">Stack by:</span>");
    for by in [By::Model, By::Key, By::Backend] {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for name in ["range", "from", "to", "step"] {
            if let Some(v) = params.get(name) {
                query.append_pair(name, v);
            }
        }
        query.append_pair("by", by.name());
        let href = format!("/?{}", query.finish());
        let class = (o.by == by).then_some("here");
        h.el("a", &[("href", Some(&href)), ("class", class)], by.name());
    }
    h.raw("</div><form class=\"inline controls\" method=\"get\" action=\"/\">");
    let from = o.range.from.format("%Y-%m-%d").to_string();
    let to = o.range.to.format("%Y-%m-%d").to_string();
    for (name, label, value) in [("from", "From", &from), ("to", "To", &to)] {
        h.open("label", &[]).text(label);
        h.open(
            "input",
            &[
                ("type", Some("date")),
                ("name", Some(name)),
                ("value", Some(value)),
            ],
        );
        h.close("label");
    }
    h.open("label", &[]).text("Bars");
    h.raw("<select name=\"step\">");
    for step in ["hour", "day"] {
        let selected = (o.step.name() == step).then_some("selected");
        h.el(
            "option",
            &[("value", Some(step)), ("selected", selected)],
            step,
        );
    }
    h.raw("</select>").close("label");
    h.open(
        "input",
        &[
            ("type", Some("hidden")),
            ("name", Some("by")),
            ("value", Some(o.by.name())),
        ],
    );
    h.raw("<button type=\"submit\">Show</button></form>");
}

fn figures(h: &mut Html, o: &Overview) {
    let t = &o.total;
    let range = format!(
        "{} to {}",
        o.range.from.format("%Y-%m-%d"),
        o.range.to.format("%Y-%m-%d")
    );
    h.el(
        "p",
        &[("class", Some("muted")), ("id", Some("range"))],
        &range,
    );
    h.raw("<div class=\"cards\">");
    card(
        h,
        "requests",
        "Requests",
        &count(t.requests),
        &format!("{} errors", count(t.errors)),
    );
    card(
        h,
        "tokens",
        "Tokens",
        &count(t.total),
        &format!(
            "{} prompt · {} completion",
            count(t.prompt),
            count(t.completion)
        ),
    );
    card(
        h,
        "cached",
        "Cache read · write · reasoning",
        &format!(
            "{} · {} · {}",
            count(t.cached),
            count(t.cache_write),
            count(t.reasoning)
        ),
        "tokens",
    );
    card(
        h,
        "cost",
        "Cost",
        &cost_text(t),
        &format!("{} records priced", count(t.costed)),
    );
    card(
        h,
        "errors",
        "Error rate",
        &percent(t.errors, t.requests),
        "status ≥ 400 or an error",
    );
    let p = |p: &Percentiles| format!("{} · {}", ms(p.p50), ms(p.p99));
    card(
        h,
        "latency",
        "Latency p50 · p99",
        &p(&o.latency),
        "whole request",
    );
    card(
        h,
        "ttft",
        "First token p50 · p99",
        &p(&o.first_token),
        "time to first token",
    );
    h.raw("</div>");
}

fn chart_box(
    h: &mut Html,
    o: &Overview,
    title: &str,
    values: impl Fn(&super::overview::Series) -> &Vec<i64>,
) {
    let lines: Vec<Line<'_>> = o
        .series
        .iter()
        .map(|s| Line {
            name: &s.name,
            values: values(s),
        })
        .collect();
    h.raw("<div class=\"chartbox\">");
    stacked_bars(h, title, &o.labels, &lines);
    h.raw("<div class=\"legend\">");
    for (i, s) in o.series.iter().enumerate() {
        let total: i64 = values(s).iter().sum();
        let class = format!("swatch {}", chart::class(i));
        h.raw("<span>")
            .open("span", &[("class", Some(&class))])
            .close("span");
        h.text(&format!("{} ({})", chart::shown(&s.name), count(total)))
            .raw("</span>");
    }
    if o.series.is_empty() {
        h.el(
            "span",
            &[("class", Some("muted"))],
            "No records in this range.",
        );
    }
    h.raw("</div></div>");
}

fn top_table(h: &mut Html, id: &'static str, what: &str, rows: &[(String, Sums)], filter: &str) {
    h.open("div", &[("class", Some("scroll"))])
        .open("table", &[("id", Some(id))]);
    h.raw("<thead><tr>").el("th", &[], what);
    for name in ["Requests", "Tokens", "Cost", "Errors"] {
        h.el("th", &[("class", Some("num"))], name);
    }
    h.raw("</tr></thead><tbody>");
    for (name, s) in rows {
        h.raw("<tr><td>");
        if name.is_empty() {
            h.text("-");
        } else {
            let href = format!(
                "/requests?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(filter, name)
                    .finish()
            );
            h.el("a", &[("href", Some(&href))], name);
        }
        h.raw("</td>");
        for value in [
            count(s.requests),
            count(s.total),
            cost_text(s),
            percent(s.errors, s.requests),
        ] {
            h.el("td", &[("class", Some("num"))], &value);
        }
        h.raw("</tr>");
    }
    h.raw("</tbody></table></div>");
}
