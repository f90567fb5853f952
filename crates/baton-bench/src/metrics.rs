//! Reading members' Prometheus metrics over plain HTTP.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the sample whose name, with its labels if it has any, is
/// exactly `name` (e.g. `x_count` or `x_total{code="Ok"}`), in Prometheus
/// text format.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok())?
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A histogram's text, also read by `disk`'s tests.
    pub(crate) const TEXT: &str = "# HELP x_seconds a histogram\n\
        x_seconds_bucket{le=\"0.001\"} 3\n\
        x_seconds_sum 0.0042\n\
        x_seconds_count 7\n\
        x_seconds_count_total 99\n";

    #[test]
    fn samples_are_read_by_exact_name() {
        assert_eq!(sample(TEXT, "x_seconds_count"), Some(7.0));
        assert_eq!(sample(TEXT, "x_seconds_sum"), Some(0.0042));
        assert_eq!(sample(TEXT, "x_seconds"), None);
    }
}
