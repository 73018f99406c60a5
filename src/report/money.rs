//! Sums of US dollars in the report: whole nano-dollars, so that a group's sum and the total are exact and the
//! same whatever order the files and rows are read in, and their decimal text without float artefacts.

/// An amount of US dollars, counted in nano-dollars (10^-9 USD): ±9.2 billion dollars at most (sums saturate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usd {
    pub nanos: i64,
}

const NANOS_PER_USD: f64 = 1e9;

impl Usd {
    /// A stored cost, rounded to the nearest nano-dollar; `None` when it is not a finite number.
    pub fn from_f64(usd: f64) -> Option<Usd> {
        // `as` saturates at the i64 bounds, which the finite check leaves as the only other case.
        usd.is_finite().then(|| Usd {
            nanos: (usd * NANOS_PER_USD).round() as i64,
        })
    }

    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }

    /// The amount rounded to `places` decimals (at most 9; half away from zero), as text: `0.000123`, `-1.50`.
    pub fn decimal(self, places: u32) -> String {
        let places = places.min(9);
        let unit = 10_u64.pow(9 - places);
        // No overflow: |i64::MIN| + unit / 2 < u64::MAX.
        let rounded = (self.nanos.unsigned_abs() + unit / 2) / unit;
        let scale = 10_u64.pow(places);
        let (whole, fraction) = (rounded / scale, rounded % scale);
        let sign = if self.nanos < 0 && rounded > 0 {
            "-"
        } else {
            ""
        };
        if places == 0 {
            return format!("{sign}{whole}");
        }
        format!("{sign}{whole}.{fraction:0width$}", width = places as usize)
    }

    /// The amount rounded to `places` decimals, as the nearest f64 (for JSON, which prints it in as few digits
    /// as read back the same: `0.000123`, not `0.00012300000000000001`).
    pub fn rounded(self, places: u32) -> f64 {
        self.decimal(places).parse().unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn usd(nanos: i64) -> Usd {
        Usd { nanos }
    }

    #[test]
    fn stored_costs_become_nano_dollars() {
        assert_eq!(Usd::from_f64(0.000_123_4), Some(usd(123_400)));
        assert_eq!(Usd::from_f64(1.5), Some(usd(1_500_000_000)));
        assert_eq!(Usd::from_f64(0.000_000_000_4), Some(usd(0)));
        assert_eq!(Usd::from_f64(0.000_000_000_6), Some(usd(1)));
        assert_eq!(Usd::from_f64(-0.25), Some(usd(-250_000_000)));
        assert_eq!(Usd::from_f64(1e300), Some(usd(i64::MAX)), "saturates");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Usd::from_f64(bad), None);
        }
        // Ten thousand costs of a tenth of a cent add up exactly, in any order.
        let cost = Usd::from_f64(0.001).unwrap();
        let sum = (0..10_000).fold(Usd::default(), |s, _| s.saturating_add(cost));
        assert_eq!(sum.decimal(6), "10.000000");
        assert_eq!(usd(i64::MAX).saturating_add(usd(1)), usd(i64::MAX));
    }

    #[test]
    fn decimals_round_half_away_from_zero() {
        assert_eq!(usd(0).decimal(6), "0.000000");
        assert_eq!(usd(123_400).decimal(6), "0.000123");
        assert_eq!(usd(123_500).decimal(6), "0.000124");
        assert_eq!(usd(123_499).decimal(6), "0.000123");
        assert_eq!(usd(123_400).decimal(4), "0.0001");
        assert_eq!(usd(50_000).decimal(4), "0.0001");
        assert_eq!(usd(49_999).decimal(4), "0.0000");
        assert_eq!(
            usd(1_999_950_000).decimal(4),
            "2.0000",
            "a carry into the dollars"
        );
        assert_eq!(usd(-1_500_000_000).decimal(2), "-1.50");
        assert_eq!(usd(-400).decimal(6), "0.000000", "no negative zero");
        assert_eq!(usd(-500).decimal(6), "-0.000001");
        assert_eq!(usd(7).decimal(9), "0.000000007");
        assert_eq!(usd(7).decimal(12), "0.000000007", "at most nine places");
        assert_eq!(usd(2_500_000_000).decimal(0), "3");
        assert_eq!(usd(i64::MAX).decimal(6), "9223372036.854776");
        assert_eq!(usd(i64::MIN).decimal(2), "-9223372036.85");
    }

    #[test]
    fn rounded_values_print_as_their_decimals() {
        for (nanos, text) in [
            (123_400, "0.000123"),
            (1_500_000_000, "1.5"),
            (12_345_678_123_456_789, "12345678.123457"),
            (-250_000_000, "-0.25"),
            (0, "0.0"),
        ] {
            let value = serde_json::json!(usd(nanos).rounded(6));
            assert_eq!(value.to_string(), text);
        }
    }
}
