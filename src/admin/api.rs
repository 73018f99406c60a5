//! The JSON API under `/api/`, and the query parameters it shares with the pages.

use std::collections::HashMap;

use chrono::{Datelike, Days, NaiveDate};
use clap::ValueEnum;
use serde_json::Value;

use super::files::QueryError;
use super::live::{backends_json, key_usage, keys_json, recent};
use super::overview::{By, Step};
use super::requests::{self, Filter, RecordId, Status, DEFAULT_LIMIT, MAX_LIMIT};
use super::{Admin, Reply, Request};
use crate::config::Config;
use crate::report::{self, Dim, Range};

/// A query string's parameters; an empty value counts as absent (forms send empty fields).
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(query: &str) -> Params {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if !v.is_empty() {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Params(map)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn bad(message: String) -> QueryError {
    QueryError::BadRequest(message)
}

fn date(params: &Params, name: &str) -> Result<Option<NaiveDate>, QueryError> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    let parsed = (text.len() == 10)
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten();
    parsed
        .map(Some)
        .ok_or_else(|| bad(format!("{name}: expected a date YYYY-MM-DD, not {text:?}")))
}

/// `range=today|7d|30d|month` or `from`/`to` (`to` defaults to today); default: this month up to today.
pub fn range(params: &Params, today: NaiveDate) -> Result<Range, QueryError> {
    let back = |days: u64| today.checked_sub_days(Days::new(days)).unwrap_or(today);
    let month_start = today.with_day(1).unwrap_or(today);
    let (from, to) = (date(params, "from")?, date(params, "to")?);
    let range = match (params.get("range"), from) {
        (_, Some(from)) => Range {
            from,
            to: to.unwrap_or(today),
        },
        (Some("today"), None) => Range {
            from: today,
            to: today,
        },
        (Some("7d"), None) => Range {
            from: back(6),
            to: today,
        },
        (Some("30d"), None) => Range {
            from: back(29),
            to: today,
        },
        (Some("month") | None, None) => Range {
            from: month_start,
            to: today,
        },
        (Some(other), None) => {
            return Err(bad(format!(
                "range: expected today, 7d, 30d or month, not {other:?}"
            )))
        }
    };
    if range.from > range.to {
        return Err(bad(format!("from {} is after to {}", range.from, range.to)));
    }
    if (range.to - range.from).num_days() > 400 {
        return Err(bad("a range covers 400 days at most".into()));
    }
    Ok(range)
}

pub fn by(params: &Params) -> Result<By, QueryError> {
    let text = params.get("by").unwrap_or("model");
    By::parse(text).ok_or_else(|| bad(format!("by: expected model, key or backend, not {text:?}")))
}

pub fn step(params: &Params, range: Range) -> Result<Step, QueryError> {
    match params.get("step") {
        None => Ok(Step::for_range(range)),
        Some(text) => Step::parse(text)
            .ok_or_else(|| bad(format!("step: expected hour or day, not {text:?}"))),
    }
}

/// The request list's filters.
pub fn filter(params: &Params) -> Result<Filter, QueryError> {
    let range = match (date(params, "from")?, date(params, "to")?) {
        (None, None) => None,
        (from, to) => {
            let to = to.or(from).unwrap_or_default();
            let from = from.unwrap_or(to);
            if from > to {
                return Err(bad(format!("from {from} is after to {to}")));
            }
            Some(Range { from, to })
        }
    };
    let status = match params.get("status") {
        None => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            bad(format!(
                "status: expected a code, 2xx-5xx or error, not {text:?}"
            ))
        })?),
    };
    let stream = match params.get("stream") {
        None => None,
        Some("true" | "1" | "yes") => Some(true),
        Some("false" | "0" | "no") => Some(false),
        Some(other) => {
            return Err(bad(format!(
                "stream: expected true or false, not {other:?}"
            )))
        }
    };
    let before = match params.get("before") {
        None => None,
        Some(text) => Some(
            RecordId::parse(text)
                .ok_or_else(|| bad(format!("before: not a record id: {text:?}")))?,
        ),
    };
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad(format!("limit: expected 1 to {MAX_LIMIT}")))?,
    };
    let text = |name| params.get(name).map(str::to_owned);
    Ok(Filter {
        range,
        model: text("model"),
        key: text("key"),
        backend: text("backend"),
        status,
        stream,
        before,
        limit,
    })
}

/// `by=day,model` as the report's dimensions, each once, in order.
fn dims(params: &Params) -> Result<Vec<Dim>, QueryError> {
    let mut dims = Vec::new();
    for part in params
        .get("by")
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let dim = Dim::from_str(part, true).map_err(|_| {
            bad(format!(
                "by: expected day, model, backend or key, not {part:?}"
            ))
        })?;
        if !dims.contains(&dim) {
            dims.push(dim);
        }
    }
    Ok(dims)
}

/// Answers `/api/...`.
pub async fn route(admin: &Admin, config: &Config, request: &Request) -> Reply {
    match answer(admin, config, request).await {
        Ok(reply) => reply,
        Err(e) => Reply::error(e.status(), kind(&e), &e.to_string()),
    }
}

fn kind(e: &QueryError) -> &'static str {
    match e.status() {
        400 => "invalid_request_error",
        _ => "server_error",
    }
}

async fn answer(admin: &Admin, config: &Config, request: &Request) -> Result<Reply, QueryError> {
    let params = Params::parse(&request.query);
    let files = Admin::files(config);
    let now = Admin::now();
    let today = now.date_naive();
    let path = request.path.as_str();
    let value: Value = match path {
        "/api/usage" => {
            let range = Range::from_args(None, params.get("from"), params.get("to"), today)?;
            let dims = dims(&params)?;
            let dir = files.dir.clone();
            let text = admin
                .blocking(move || {
                    let dirs = if dir.is_dir() { vec![dir] } else { Vec::new() };
                    Ok(report::json(&report::collect(&dirs, range, &dims)?))
                })
                .await?;
            return Ok(Reply::new(200, "application/json", text));
        }
        "/api/overview" => {
            let range = range(&params, today)?;
            let (step, by) = (step(&params, range)?, by(&params)?);
            admin.overview(config, range, step, by).await?.to_json()
        }
        "/api/requests" => {
            let filter = filter(&params)?;
            let page = admin
                .blocking(move || requests::list(&files, &filter))
                .await?;
            serde_json::json!({
                "requests": page.requests,
                "next": page.next.map(|n| n.to_string()),
            })
        }
        "/api/backends" => {
            let backends = admin.live.backends();
            let recent = admin.blocking(move || recent(&files, now)).await?;
            backends_json(&backends, &recent)
        }
        "/api/keys" => {
            let keys = admin.live.keys(now);
            let usage = admin.blocking(move || key_usage(&files, now)).await?;
            keys_json(&keys, &usage, config.auth.is_some())
        }
        _ => match path.strip_prefix("/api/requests/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                let id = id.to_owned();
                match admin
                    .blocking(move || requests::detail(&files, &id))
                    .await?
                {
                    Some(record) => record,
                    None => return Ok(Reply::error(404, "not_found_error", "no such record")),
                }
            }
            _ => return Ok(Reply::error(404, "not_found_error", "no such API endpoint")),
        },
    };
    Ok(Reply::json(200, &value))
}
