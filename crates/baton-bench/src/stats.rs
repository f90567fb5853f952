//! Counting operations and their latencies.

use std::time::Duration;

/// The `q` quantile (0..=1) of `times` (nearest rank); `None` if empty.
pub fn quantile(times: &[Duration], q: f64) -> Option<Duration> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(rank).copied()
}

/// What a workload achieved.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Completed operations (cycles, hand-overs, writes).
    pub ops: u64,
    /// Failed attempts.
    pub errors: u64,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// One latency per completed operation, where it has one.
    pub latencies: Vec<Duration>,
}

impl Outcome {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }

    /// Merges another client's outcome into this one.
    pub fn merge(&mut self, other: Outcome) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latencies.extend(other.latencies);
    }

    /// "1234/s, p50 1.2 ms, p99 3.4 ms, 0 errors".
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "{:.0}/s, p50 {}, p99 {}, {} errors",
            self.rate(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            self.errors
        )
    }
}
