//! A job that runs only while it leads, and hands its fencing token to the
//! resource it writes, so a write from a leader that was paused past its
//! lease is refused even if it slips through.
//!
//! Start a cluster (`cargo run --release -- dev`), then in two terminals:
//!
//!     cargo run -p baton-client --example fenced_job -- job-a
//!     cargo run -p baton-client --example fenced_job -- job-b
//!
//! Stop the leading one (Ctrl-C resigns; `kill -STOP` pauses it) and watch
//! the other take over with a higher epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_client::Client;

/// Stands in for a database or storage service that remembers the highest
/// fencing token it has seen and refuses anything lower (in a real system
/// this check lives in the resource, e.g. a conditional write).
#[derive(Default)]
struct FencedResource {
    highest_token: AtomicU64,
}

impl FencedResource {
    fn write(&self, token: u64, what: &str) -> Result<(), String> {
        let seen = self.highest_token.fetch_max(token, Ordering::SeqCst);
        if token < seen {
            return Err(format!("refused {what:?}: token {token} < {seen}"));
        }
        println!("wrote {what:?} with token {token}");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> baton_client::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "job".into());
    let endpoints = std::env::var("BATON_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into());
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let client = Client::builder(&endpoints)
        .client_id(name.clone())
        .session_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let resource = FencedResource::default();
    let election = client.election("fenced-job");
    loop {
        let leadership = tokio::select! {
            leadership = election.campaign() => leadership?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let token = leadership.epoch();
        println!("{name} leads with epoch {token}");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let why = loop {
            tokio::select! {
                why = leadership.lost() => break Some(why),
                _ = tokio::signal::ctrl_c() => break None,
                _ = tick.tick() => {
                    // Checked right before acting: false from the instant
                    // the client-side lease runs out.
                    if leadership.is_leader() {
                        if let Err(refused) = resource.write(token, &name) {
                            eprintln!("{refused}");
                        }
                    }
                }
            }
        };
        match why {
            Some(why) => println!("{name} stopped leading: {why}"),
            None => {
                leadership.resign().await?;
                break;
            }
        }
    }
    client.close().await
}
