//! The dates a usage report covers: `--month` or `--from`/`--to`, strictly parsed, and the month files they touch.

use chrono::{Datelike, NaiveDate};

use super::ReportError;
use crate::usage::Month;

/// Dates `from..=to`, compared with the date at the start of each record's Time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Range {
    /// From `--month` or `--from`/`--to`; neither: the month of `today`; `--from` alone: up to `today`.
    pub fn from_args(
        month: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        today: NaiveDate,
    ) -> Result<Range, ReportError> {
        if let Some(month) = month {
            return parse_month(month).ok_or_else(|| ReportError::BadMonth(month.to_string()));
        }
        let Some(from) = from else {
            return Ok(month_of(today.year(), today.month()).unwrap_or(Range {
                from: today,
                to: today,
            }));
        };
        let from = parse_date("from", from)?;
        let to = to.map_or(Ok(today), |to| parse_date("to", to))?;
        if from > to {
            return Err(ReportError::Reversed { from, to });
        }
        Ok(Range { from, to })
    }

    /// The months whose files can hold records of the range, in order.
    pub fn months(self) -> impl Iterator<Item = Month> {
        let first = self.from.year() * 12 + self.from.month0() as i32;
        let last = self.to.year() * 12 + self.to.month0() as i32;
        (first..=last).map(|n| Month {
            year: n.div_euclid(12),
            month: n.rem_euclid(12) as u32 + 1,
        })
    }

    /// `Time >= lower AND Time < upper` is "the date Time starts with is in the range", and uses the Time index.
    pub(super) fn bounds(self) -> (String, String) {
        // `~` sorts after whatever follows the date in a Time (`T`, a space, or nothing).
        (
            self.from.format("%Y-%m-%d").to_string(),
            format!("{}~", self.to.format("%Y-%m-%d")),
        )
    }
}

/// Strictly `YYYY-MM-DD` (chrono alone would take `2026-1-5`).
fn parse_date(flag: &'static str, value: &str) -> Result<NaiveDate, ReportError> {
    let date = shaped(value, &[4, 7])
        .then(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .flatten();
    date.ok_or_else(|| ReportError::BadDate {
        flag,
        value: value.to_string(),
    })
}

/// Strictly `YYYY-MM`, as the whole month.
fn parse_month(value: &str) -> Option<Range> {
    if !shaped(value, &[4]) {
        return None;
    }
    let year = value.get(..4)?.parse().ok()?;
    let month = value.get(5..)?.parse().ok()?;
    month_of(year, month)
}

/// ASCII digits with a `-` at exactly the `dashes` positions.
fn shaped(value: &str, dashes: &[usize]) -> bool {
    value.len() == dashes.len() * 3 + 4
        && value.bytes().enumerate().all(|(i, b)| {
            if dashes.contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

fn month_of(year: i32, month: u32) -> Option<Range> {
    let from = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    Some(Range {
        from,
        to: next?.pred_opt()?,
    })
}
