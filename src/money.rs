//! Amounts of US dollars as whole nano-dollars: exact sums for budgets, spend and reservations.

/// Nano-dollars (1e-9 USD) in one dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// An amount of US dollars in nano-dollars. Budgets, spend and reservations add and compare exactly in this
/// unit; a request's cost (a float from the price table) is rounded to it once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub u64);

impl Usd {
    pub const ZERO: Usd = Usd(0);

    /// `usd` rounded to the nano-dollar; negative, NaN and infinite amounts are zero, huge ones saturate.
    pub fn from_f64(usd: f64) -> Usd {
        if !usd.is_finite() || usd <= 0.0 {
            return Usd::ZERO;
        }
        // `as` saturates at u64::MAX for values beyond it.
        Usd((usd * NANOS_PER_USD).round() as u64)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD
    }

    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }

    /// Dollars with 6 decimals, as in `x-budget-remaining-usd` ("0.040000").
    pub fn six_decimals(self) -> String {
        self.decimal(6)
    }

    /// The amount rounded to `places` decimals (at most 9; half up), as text: `0.000123`, `1.50`.
    pub fn decimal(self, places: u32) -> String {
        let places = places.min(9);
        let unit = 10_u64.pow(9 - places);
        let rounded = self.0 / unit + u64::from(self.0 % unit >= unit.div_ceil(2));
        let scale = 10_u64.pow(places);
        let (whole, fraction) = (rounded / scale, rounded % scale);
        match places {
            0 => whole.to_string(),
            _ => format!("{whole}.{fraction:0width$}", width = places as usize),
        }
    }

    /// The amount rounded to `places` decimals as the nearest f64 (for JSON, which then prints it in as few
    /// digits as read back the same: `0.000123`, not `0.00012300000000000001`).
    pub fn rounded(self, places: u32) -> f64 {
        self.decimal(places).parse().unwrap_or(f64::NAN)
    }

    /// Dollars for people: "$5.00", "$0.0123" (at least 2 decimals, up to 6 for small amounts).
    pub fn display(self) -> String {
        let usd = self.as_f64();
        if self.0 == 0 || usd >= 0.01 {
            format!("${usd:.2}")
        } else {
            let text = format!("{usd:.6}");
            format!("${}", text.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Usd;

    #[test]
    fn rounds_once_to_the_nano_dollar() {
        assert_eq!(Usd::from_f64(0.01), Usd(10_000_000));
        assert_eq!(Usd::from_f64(1000.0 * 10.0 / 1e6), Usd(10_000_000));
        assert_eq!(Usd::from_f64(2.5e-9), Usd(3));
        assert_eq!(Usd::from_f64(-1.0), Usd::ZERO);
        assert_eq!(Usd::from_f64(f64::NAN), Usd::ZERO);
        assert_eq!(Usd::from_f64(f64::INFINITY), Usd::ZERO);
        assert_eq!(Usd::from_f64(1e30), Usd(u64::MAX));
        assert!((Usd(1_500_000_000).as_f64() - 1.5).abs() < 1e-12);
    }

    #[test]
    fn decimals_round_half_up() {
        assert_eq!(Usd(0).decimal(6), "0.000000");
        assert_eq!(Usd(123_400).decimal(6), "0.000123");
        assert_eq!(Usd(123_500).decimal(6), "0.000124");
        assert_eq!(Usd(123_499).decimal(6), "0.000123");
        assert_eq!(Usd(50_000).decimal(4), "0.0001");
        assert_eq!(Usd(49_999).decimal(4), "0.0000");
        assert_eq!(
            Usd(1_999_950_000).decimal(4),
            "2.0000",
            "a carry into the dollars"
        );
        assert_eq!(Usd(7).decimal(12), "0.000000007", "at most nine places");
        assert_eq!(Usd(2_500_000_000).decimal(0), "3");
        assert_eq!(Usd(u64::MAX).decimal(6), "18446744073.709552");
        for (nanos, text) in [(123_400, "0.000123"), (1_500_000_000, "1.5"), (0, "0.0")] {
            assert_eq!(serde_json::json!(Usd(nanos).rounded(6)).to_string(), text);
        }
    }

    #[test]
    fn formats_for_headers_and_people() {
        assert_eq!(Usd(40_000_000).six_decimals(), "0.040000");
        assert_eq!(Usd(0).six_decimals(), "0.000000");
        assert_eq!(Usd(12_345_678_999).six_decimals(), "12.345679");
        assert_eq!(Usd(499).six_decimals(), "0.000000");
        assert_eq!(Usd(5_000_000_000).display(), "$5.00");
        assert_eq!(Usd(12_300_000).display(), "$0.01");
        assert_eq!(Usd(1_230_000).display(), "$0.00123");
        assert_eq!(Usd(0).display(), "$0.00");
    }
}
