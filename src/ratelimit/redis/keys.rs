//! Where a gateway key's limits live in Redis: `gpt-api:{<name>}:<part>`, the name escaped or hashed.

use std::time::Duration;

use chrono::NaiveDate;
use ring::digest::{digest, SHA256};

use crate::ratelimit::budget::Period;

/// Every key the gateway writes starts with this.
pub const PREFIX: &str = "gpt-api:";
/// An escaped name longer than this is replaced by its hash (`#` and 32 hex digits).
const MAX_TAG_BYTES: usize = 100;
/// How long a day's spend (and its seed marker) outlives its last write: past the end of the day.
pub const DAY_TTL: Duration = Duration::from_secs(2 * 86_400);
/// How long a month's spend outlives its last write: past the end of any month it was first written in.
pub const MONTH_TTL: Duration = Duration::from_secs(32 * 86_400);

/// The Redis keys of one gateway key. The name sits in a hash tag (`{...}`), so all of a key's state is in
/// one Redis Cluster slot, as a script touching several keys needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keys {
    /// `gpt-api:{<tag>}:`
    base: String,
}

impl Keys {
    pub fn new(name: &str) -> Keys {
        Keys {
            base: format!("{PREFIX}{{{}}}:", tag(name)),
        }
    }

    fn part(&self, part: &str) -> String {
        format!("{}{part}", self.base)
    }

    /// Sorted set: the ids of the requests in flight, scored by the end of their lease (ms).
    pub fn slots(&self) -> String {
        self.part("slots")
    }

    /// Sorted set: `<nanos>:<request id>` of each reservation, scored by the end of its lease (ms).
    pub fn reservations(&self) -> String {
        self.part("reservations")
    }

    /// Integer: the nano-dollars reserved in all, the sum of the reservations' amounts.
    pub fn reserved(&self) -> String {
        self.part("reserved")
    }

    /// Hash: unix second -> requests admitted in it.
    pub fn requests(&self) -> String {
        self.part("requests")
    }

    /// Hash: unix second -> tokens counted in it.
    pub fn tokens(&self) -> String {
        self.part("tokens")
    }

    /// Integer: nano-dollars spent on the day of `period` (`...:spent:2026-12-04`).
    pub fn spent_day(&self, period: Period) -> String {
        self.part(&format!("spent:{}", day(period)))
    }

    /// Integer: nano-dollars spent in the month of `period` (`...:spent:2026-12`).
    pub fn spent_month(&self, period: Period) -> String {
        self.part(&format!("spent:{}", month(period)))
    }

    /// Set once by the first node to seed the day's spend from its records.
    pub fn seeded_day(&self, period: Period) -> String {
        self.part(&format!("seeded:{}", day(period)))
    }

    pub fn seeded_month(&self, period: Period) -> String {
        self.part(&format!("seeded:{}", month(period)))
    }
}

/// The name as it sits between the braces: letters, digits, `.`, `_` and `-` as they are, every other byte
/// as `%XX` (so braces, colons and spaces cannot change the layout, and two names never meet); a long
/// name as `#` and the first 16 bytes of its SHA-256 in hex.
fn tag(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.len() <= MAX_TAG_BYTES {
        return out;
    }
    let hash = digest(&SHA256, name.as_bytes());
    let hex: String = hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("#{hex}")
}

/// `2026-12-04` for the period's day number (days since 0001-01-01); the number itself if out of range.
fn day(period: Period) -> String {
    match NaiveDate::from_num_days_from_ce_opt(period.day) {
        Some(date) => date.format("%Y-%m-%d").to_string(),
        None => format!("d{}", period.day),
    }
}

/// `2026-12` for the period's month number (year x 12 + 0-based month).
fn month(period: Period) -> String {
    let (year, month0) = (period.month.div_euclid(12), period.month.rem_euclid(12));
    format!("{year:04}-{:02}", month0 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn plain_names_stay_readable() {
        let keys = Keys::new("team-a.prod_1");
        assert_eq!(keys.slots(), "gpt-api:{team-a.prod_1}:slots");
        assert_eq!(keys.requests(), "gpt-api:{team-a.prod_1}:requests");
    }

    #[test]
    fn other_bytes_are_escaped_so_no_name_changes_the_layout() {
        assert_eq!(tag("a b:{c}"), "a%20b%3A%7Bc%7D");
        assert_eq!(tag("%"), "%25");
        assert_eq!(tag("é"), "%C3%A9");
        assert_eq!(tag("\n"), "%0A");
        // Distinct names, distinct tags (escaping is reversible; a hash starts with a byte escaping never makes).
        assert_ne!(tag("a b"), tag("a%20b"));
        let keys = Keys::new("x}:y{");
        assert_eq!(keys.slots().matches('{').count(), 1);
        assert_eq!(keys.slots().matches('}').count(), 1);
    }

    #[test]
    fn long_names_are_hashed() {
        let long = "k".repeat(500);
        let t = tag(&long);
        assert_eq!(t.len(), 33);
        assert!(t.starts_with('#'));
        assert_ne!(t, tag(&"k".repeat(501)));
        assert_eq!(tag(&"k".repeat(MAX_TAG_BYTES)), "k".repeat(MAX_TAG_BYTES));
    }

    #[test]
    fn spend_keys_name_their_day_and_month() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap();
        let period = Period::of(&now);
        let keys = Keys::new("team");
        assert_eq!(keys.spent_day(period), "gpt-api:{team}:spent:2026-12-04");
        assert_eq!(keys.spent_month(period), "gpt-api:{team}:spent:2026-12");
        assert_eq!(keys.seeded_day(period), "gpt-api:{team}:seeded:2026-12-04");
        assert_eq!(keys.seeded_month(period), "gpt-api:{team}:seeded:2026-12");
        let january = Period::of(&chrono::Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(month(january), "2027-01");
    }
}
