//! Reading members' Prometheus metrics over plain HTTP, and the durable
//! flushes they report (Baton's `baton_storage_flush_duration_seconds`,
//! etcd's `etcd_disk_wal_fsync_duration_seconds`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the sample whose name, with its labels if it has any, is
/// exactly `name` (e.g. `x_count` or `x_total{code="Ok"}`), in Prometheus
/// text format.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            // `name value [timestamp]`: the name must end at whitespace.
            let rest = line.strip_prefix(name)?;
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// One HTTP/1.0 `GET /metrics` from `addr`; the body of a 200 answer.
pub async fn scrape(addr: &str) -> Result<String, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: baton-bench\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            return Err(format!("{addr}: /metrics answered {status}"));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| format!("{addr}: /metrics timed out"))?
}

/// Durable flushes a cluster reported, summed over its members.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flushes {
    /// How many.
    pub count: f64,
    /// Their total duration, in seconds.
    pub seconds: f64,
}

impl Flushes {
    /// The flushes made between `earlier` and `self`.
    pub fn since(&self, earlier: &Flushes) -> Flushes {
        Flushes {
            count: self.count - earlier.count,
            seconds: self.seconds - earlier.seconds,
        }
    }

    /// Their mean duration; `None` if there were none (or the counters
    /// went backwards: a member restarted between two readings).
    pub fn mean(&self) -> Option<Duration> {
        if self.count <= 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(self.seconds / self.count).ok()
    }

    /// Adds one member's histogram `name`, read from its Prometheus text;
    /// `None`, and nothing added, if it lacks the histogram.
    pub fn add_histogram(&mut self, text: &str, name: &str) -> Option<()> {
        let count = sample(text, &format!("{name}_count"))?;
        let seconds = sample(text, &format!("{name}_sum"))?;
        self.count += count;
        self.seconds += seconds;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram's text.
    const TEXT: &str = "# HELP x_seconds a histogram\n\
        x_seconds_bucket{le=\"0.001\"} 3\n\
        x_seconds_sum 0.0042\n\
        x_seconds_count 7\n\
        x_seconds_count_total 99\n";

    #[test]
    fn samples_are_read_by_exact_name() {
        assert_eq!(sample(TEXT, "x_seconds_count"), Some(7.0));
        assert_eq!(sample(TEXT, "x_seconds_sum"), Some(0.0042));
        assert_eq!(sample(TEXT, "x_seconds"), None);
        let labelled = "y_total{path=\"a b\"} 4 1690000000\n";
        assert_eq!(sample(labelled, "y_total{path=\"a b\"}"), Some(4.0));
    }

    #[test]
    fn flushes_add_up_and_subtract() {
        let mut before = Flushes::default();
        before.add_histogram(TEXT, "x_seconds").expect("present");
        let mut after = before;
        after.add_histogram(TEXT, "x_seconds").expect("present");
        let delta = after.since(&before);
        assert_eq!(delta.count, 7.0);
        let mean = delta.mean().expect("flushes").as_secs_f64();
        assert!((mean - 0.0006).abs() < 1e-9, "{mean}");
        assert_eq!(Flushes::default().mean(), None);
        assert!(before.add_histogram(TEXT, "missing").is_none());
        let backwards = Flushes::default().since(&after);
        assert_eq!(backwards.mean(), None);
    }
}
