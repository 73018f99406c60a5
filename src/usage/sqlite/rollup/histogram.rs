//! A day's latencies as one histogram: buckets of two significant digits, stored as one blob per day and kind.

/// Exact buckets for 0-99 ms, then 90 per decade (10-99 times a power of ten) up to 10^9 ms; beyond, the last.
pub const BUCKETS: usize = 100 + 7 * 90;

/// The bucket of a latency in ms (negative counts as 0): within 5% of the value it stands for.
pub fn index(ms: i64) -> usize {
    let ms = ms.max(0);
    if ms < 100 {
        return ms as usize;
    }
    let mut step = 1;
    let mut decade = 0;
    while ms / step >= 100 {
        step *= 10;
        decade += 1;
    }
    (100 + (decade - 1) * 90 + (ms / step - 10) as usize).min(BUCKETS - 1)
}

/// The value bucket `i` stands for: its middle (the value itself below 100 ms).
pub fn value(i: usize) -> i64 {
    if i < 100 {
        return i as i64;
    }
    let (decade, lead) = ((i - 100) / 90 + 1, (i - 100) % 90 + 10);
    let step = 10_i64.pow(decade as u32);
    lead as i64 * step + step / 2
}

/// Counts per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram(pub Box<[u32; BUCKETS]>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(Box::new([0; BUCKETS]))
    }
}

impl Histogram {
    pub fn add(&mut self, ms: i64) {
        let slot = &mut self.0[index(ms)];
        *slot = slot.saturating_add(1);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Little-endian u32 counts, one per bucket.
    pub fn to_blob(&self) -> Vec<u8> {
        self.0.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    /// A blob of [`Histogram::to_blob`]; a shorter or longer one is read as far as it goes.
    pub fn from_blob(blob: &[u8]) -> Histogram {
        let mut h = Histogram::default();
        for (slot, bytes) in h.0.iter_mut().zip(blob.chunks_exact(4)) {
            *slot = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        h
    }

    /// Non-empty buckets, ascending: (bucket, count).
    pub fn counts(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_five_percent_and_ordered() {
        let mut last = 0;
        for ms in (0..2_000_000)
            .step_by(7)
            .chain([999_999_999, 5_000_000_000])
        {
            let i = index(ms);
            assert!(i >= last, "{ms}");
            last = i;
            let v = value(i);
            if ms < 1_000_000_000 {
                assert!(
                    (v - ms).abs() as f64 <= ms as f64 * 0.05 + 0.5,
                    "{ms} -> {v}"
                );
            }
        }
        assert_eq!(
            (index(99), index(100), index(1234), value(index(1234))),
            (99, 100, 192, 1250)
        );
        assert_eq!(index(-3), 0);
        assert_eq!(index(i64::MAX), BUCKETS - 1);
    }

    #[test]
    fn blobs_round_trip() {
        let mut h = Histogram::default();
        for ms in [1, 1, 250, 70_000] {
            h.add(ms);
        }
        let back = Histogram::from_blob(&h.to_blob());
        assert_eq!(back, h);
        assert_eq!(
            back.counts().collect::<Vec<_>>(),
            [(1, 2), (115, 1), (100 + 2 * 90 + 60, 1)]
        );
        assert_eq!(
            Histogram::from_blob(&[1, 0, 0, 0])
                .counts()
                .collect::<Vec<_>>(),
            [(0, 1)]
        );
    }
}
