//! The backends page (health now, the last five minutes) and the keys page (use, limits, what is left).

// The backends page (each client's health now and its last five minutes) and the keys page (each key's use today and
// this month, its limits and what is left).

use super::{end, layout, Problem};
use crate::admin::html::{count, millis, percent, usd, Html};
use crate::admin::live::{key_usage, recent, RECENT, RECENT_RECORDS};
use crate::admin::overview::cost;
use crate::admin::Admin;
use crate::config::Config;

fn th(h: &mut Html, heads: &[&str]) {
    h.raw("<thead><tr>");
    for head in heads {
        h.el("th", &[], head);
    }
    h.raw("</tr></thead><tbody>");
}

pub async fn backends(admin: &Admin, config: &Config) -> Result<String, Problem> {
    let now = Admin::now();
    let backends = admin.live.backends();
    let files = Admin::files(config);
    let recent = admin.blocking(move || recent(&files, now)).await?;
    let mut h = layout("Backends", "/backends");
    h.el("h1", &[], "Backends");
    let window = match recent.sampled {
        false => format!("the last {} minutes", RECENT.as_secs() / 60),
        true => format!(
            "the newest {RECENT_RECORDS} records (the last {} s)",
            recent.seconds
        ),
    };
    let note = format!(
        "Health now; requests, error rate and p50 latency over {window}, from the records."
    );
    h.el("p", &[("class", Some("muted"))], &note);
    h.raw("<div class=\"scroll\"><table id=\"backends\">");
    th(
        &mut h,
        &[
            "Backend",
            "Priority",
            "State",
            "Failures in a row",
            "In flight",
            "Requests",
            "Error rate",
            "p50",
            "Models",
        ],
    );
    for b in &backends {
        let r = recent.backends.get(&b.name).cloned().unwrap_or_default();
        h.raw("<tr>").el("td", &[], &b.name);
        h.el("td", &[("class", Some("num"))], &b.priority.to_string());
        match b.cooling_until {
            Some(until) => {
                let text = format!("cooling until {}", until.format("%H:%M:%S"));
                h.el("td", &[("class", Some("bad"))], &text)
            }
            None => h.el("td", &[("class", Some("ok"))], "ok"),
        };
        h.el("td", &[("class", Some("num"))], &b.failures.to_string());
        h.el("td", &[("class", Some("num"))], &b.in_flight.to_string());
        h.el("td", &[("class", Some("num"))], &count(r.requests));
        h.el(
            "td",
            &[("class", Some("num"))],
            &percent(r.errors, r.requests),
        );
        let p50 = r
            .p50_ms
            .map_or_else(|| "–".into(), |ms| millis(i64::from(ms)));
        h.el("td", &[("class", Some("num"))], &p50);
        let models = format!("{}: {}", b.match_kind, b.models.join(", "));
        h.el("td", &[("class", Some("wrap"))], &models).raw("</tr>");
    }
    h.raw("</tbody></table></div>");
    Ok(end(h))
}

pub async fn keys(admin: &Admin, config: &Config) -> Result<String, Problem> {
    let now = Admin::now();
    let mut h = layout("Keys", "/keys");
    h.el("h1", &[], "Keys");
    if config.auth.is_none() {
        h.el(
            "p",
            &[("class", Some("muted")), ("id", Some("no-auth"))],
            "There is no auth section: the gateway takes no keys.",
        );
        return Ok(end(h));
    }
    let keys = admin.live.keys(now);
    let files = Admin::files(config);
    let usage = admin.blocking(move || key_usage(&files, now)).await?;
    h.el(
        "p",
        &[("class", Some("muted"))],
        "Use from the records; limits and what is left by this gateway's own count.",
    );
    h.raw("<div class=\"scroll\"><table id=\"keys\">");
    th(
        &mut h,
        &[
            "Key",
            "Requests today",
            "Tokens today",
            "Spend today",
            "Requests this month",
            "Tokens this month",
            "Spend this month",
            "rpm left",
            "tpm left",
            "Budget left (day · month)",
            "Max concurrent",
        ],
    );
    for k in &keys {
        let (today, month) = usage.get(&k.name).cloned().unwrap_or_default();
        let money = |s| cost(s).map_or_else(|| "–".to_string(), usd);
        let limit = |left: Option<String>, limit: Option<String>| match (left, limit) {
            (Some(left), Some(limit)) => format!("{left} of {limit}"),
            _ => "–".to_string(),
        };
        let budget = |b: Option<f64>, spent: f64| {
            b.map_or_else(
                || "–".to_string(),
                |b| format!("{} of {}", usd((b - spent).max(0.0)), usd(b)),
            )
        };
        let cells = [
            count(today.requests),
            count(today.total),
            money(&today),
            count(month.requests),
            count(month.total),
            money(&month),
            limit(
                k.remaining_requests.map(|n| n.to_string()),
                k.rpm.map(|n| n.to_string()),
            ),
            limit(
                k.remaining_tokens.map(|n| count(n as i64)),
                k.tpm.map(|n| count(n as i64)),
            ),
            format!(
                "{} · {}",
                budget(k.budget_day_usd, k.spent_day_usd),
                budget(k.budget_month_usd, k.spent_month_usd)
            ),
            k.max_concurrent
                .map_or_else(|| "–".into(), |n| n.to_string()),
        ];
        h.raw("<tr>").el("td", &[], &k.name);
        for cell in cells {
            h.el("td", &[("class", Some("num"))], &cell);
        }
        h.raw("</tr>");
    }
    h.raw("</tbody></table></div>");
    Ok(end(h))
}
