//! Latency percentiles from raw samples.
//!
//! A round has at most a few million samples, so they are simply kept and sorted: exact
//! percentiles, no histogram resolution to choose.

/// Publish-to-receive latencies of one round, sorted, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    /// Ascending.
    sorted_us: Vec<u64>,
}

impl Latencies {
    /// Sorts `samples_us`.
    pub(crate) fn new(mut samples_us: Vec<u64>) -> Self {
        samples_us.sort_unstable();
        Self {
            sorted_us: samples_us,
        }
    }

    /// The `p`-th percentile (0 < p ≤ 100) in milliseconds by the nearest-rank method; `None`
    /// without samples.
    pub(crate) fn percentile_ms(&self, p: f64) -> Option<f64> {
        let n = self.sorted_us.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        Some(self.sorted_us[index] as f64 / 1000.0)
    }

    /// The largest latency in milliseconds.
    pub(crate) fn max_ms(&self) -> Option<f64> {
        self.sorted_us.last().map(|&us| us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let latencies = Latencies::new((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(latencies.percentile_ms(50.0), Some(50.0));
        assert_eq!(latencies.percentile_ms(99.0), Some(99.0));
        assert_eq!(latencies.percentile_ms(100.0), Some(100.0));
        assert_eq!(latencies.max_ms(), Some(100.0));
        assert_eq!(Latencies::new(vec![1500]).percentile_ms(99.0), Some(1.5));
    }

    #[test]
    fn no_samples_no_percentiles() {
        let latencies = Latencies::new(Vec::new());
        assert_eq!(latencies.percentile_ms(50.0), None);
        assert_eq!(latencies.max_ms(), None);
    }
}
