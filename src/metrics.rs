//! Prometheus metrics (`baton serve --metrics-listen`), encoded by the
//! `prometheus-client` crate: Raft and state gauges read when scraped, RPC
//! counts and latencies from a tower layer on the client port, and counters
//! kept where things happen (forwarding, expiry, leadership changes).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use openraft::ServerState;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::service::Context;

/// Labels of one RPC outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// gRPC path, e.g. `/atomix.primitive.leader.LeaderLatchService/Latch`.
    pub method: String,
    /// gRPC status code name, e.g. `Ok`, `Unavailable`.
    pub code: String,
}

/// Labels of one RPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC path.
    pub method: String,
}

/// Labels of one way an Events stream ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamEndLabels {
    /// `latch` or `election`.
    pub kind: String,
    /// gRPC status code name the stream ended with (`Ok`: the client went
    /// away or closed it).
    pub code: String,
}

/// Events streams ended, by kind and status: how many watchers a node told
/// to go elsewhere (`Unavailable`: it could no longer keep their sessions
/// alive, or it is stopping).
pub type StreamEnds = Family<StreamEndLabels, Counter>;

/// Metrics that other parts of the node keep and the registry exports.
pub struct MetricSources {
    /// Writes the replicator forwarded to the leader.
    pub forwarded: Counter,
    /// Sessions expired by entries this node proposed.
    pub expired: Counter,
    /// Commands per entry proposed (group commit).
    pub entry_commands: Histogram,
    /// Durable flush latency of the storage.
    pub flush_seconds: Histogram,
    /// Events streams ended, counted by the service.
    pub stream_ends: StreamEnds,
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    term: Gauge,
    leader_id: Gauge,
    is_leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    flushed_index: Gauge,
    snapshot_index: Gauge,
    log_entries_since_snapshot: Gauge,
    sessions: Gauge,
    primitives: Gauge,
    open_streams: Gauge,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram>,
    raft_leader_changes: Counter,
    primitive_leader_changes: Counter,
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Registers every metric, with those kept by other parts of the node.
    pub fn new(sources: MetricSources) -> Arc<Self> {
        let MetricSources {
            forwarded,
            expired,
            entry_commands,
            flush_seconds,
            stream_ends,
        } = sources;
        let mut registry = Registry::with_prefix("baton");
        let metrics = Metrics {
            term: Gauge::default(),
            leader_id: Gauge::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            flushed_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            log_entries_since_snapshot: Gauge::default(),
            sessions: Gauge::default(),
            primitives: Gauge::default(),
            open_streams: Gauge::default(),
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            raft_leader_changes: Counter::default(),
            primitive_leader_changes: Counter::default(),
            registry: Registry::default(),
        };
        let gauges = [
            ("raft_term", "Current Raft term", &metrics.term),
            (
                "raft_leader_id",
                "Raft leader's node id (0: none known)",
                &metrics.leader_id,
            ),
            (
                "raft_is_leader",
                "1 if this node is the Raft leader",
                &metrics.is_leader,
            ),
            (
                "raft_commit_index",
                "Raft commit index",
                &metrics.commit_index,
            ),
            (
                "raft_applied_index",
                "Last applied log index",
                &metrics.applied_index,
            ),
            (
                "raft_last_log_index",
                "Last entry in this node's Raft log",
                &metrics.last_log_index,
            ),
            (
                "raft_flushed_index",
                "Last log index up to which this node's log is on disk (a leader's newest entries may not be yet)",
                &metrics.flushed_index,
            ),
            (
                "raft_snapshot_index",
                "Last index in the latest snapshot",
                &metrics.snapshot_index,
            ),
            (
                "raft_log_entries_since_snapshot",
                "Log entries after the latest snapshot",
                &metrics.log_entries_since_snapshot,
            ),
            (
                "sessions",
                "Open sessions in the applied state",
                &metrics.sessions,
            ),
            (
                "primitives",
                "Latches and elections in the applied state",
                &metrics.primitives,
            ),
            (
                "open_streams",
                "Events streams open on this node",
                &metrics.open_streams,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "rpc_requests",
            "Client RPCs by method and gRPC status",
            metrics.rpc_requests.clone(),
        );
        registry.register(
            "stream_ends",
            "Events streams ended, by primitive kind and the gRPC status they ended with (Ok: closed by the client)",
            stream_ends,
        );
        registry.register(
            "rpc_duration_seconds",
            "Client RPC latency until the response headers, by method",
            metrics.rpc_seconds.clone(),
        );
        registry.register(
            "forwarded_writes",
            "Writes this node forwarded to the Raft leader",
            forwarded,
        );
        registry.register(
            "sessions_expired",
            "Sessions expired by entries this node proposed as leader",
            expired,
        );
        registry.register(
            "entry_commands",
            "Commands per log entry this node proposed as leader (group commit)",
            entry_commands,
        );
        registry.register(
            "storage_flush_duration_seconds",
            "Durable flushes of the data directory (sled flush + fdatasync): log appends, votes, snapshots",
            flush_seconds,
        );
        registry.register(
            "raft_leader_changes",
            "Changes of Raft leader seen by this node",
            metrics.raft_leader_changes.clone(),
        );
        registry.register(
            "primitive_leader_changes",
            "Leadership changes (epoch increases) of latches and elections applied here",
            metrics.primitive_leader_changes.clone(),
        );
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// Records one finished RPC.
    fn observe_rpc(&self, method: String, code: tonic::Code, seconds: f64) {
        self.rpc_seconds
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(seconds);
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Reads the scrape-time gauges from the node and encodes everything.
    pub async fn render(&self, context: &Context) -> String {
        let replicator = &context.replicator;
        let raft = replicator.raft().metrics().borrow().clone();
        let committed = replicator.committed_index().await;
        let (sessions, primitives) = replicator
            .state()
            .read(|machine, _| (machine.session_count(), machine.primitive_count()));
        let snapshot = raft.snapshot.map(|id| id.index).unwrap_or_default();
        self.term.set(as_gauge(raft.current_term));
        self.leader_id
            .set(as_gauge(raft.current_leader.unwrap_or_default()));
        self.is_leader
            .set(i64::from(raft.state == ServerState::Leader));
        self.commit_index.set(as_gauge(committed));
        self.applied_index.set(as_gauge(
            raft.last_applied.map(|id| id.index).unwrap_or_default(),
        ));
        self.last_log_index
            .set(as_gauge(raft.last_log_index.unwrap_or_default()));
        self.flushed_index
            .set(as_gauge(context.flushed.upto_index()));
        self.snapshot_index.set(as_gauge(snapshot));
        self.log_entries_since_snapshot.set(as_gauge(
            raft.last_log_index
                .unwrap_or_default()
                .saturating_sub(snapshot),
        ));
        self.sessions.set(as_gauge(sessions as u64));
        self.primitives.set(as_gauge(primitives as u64));
        self.open_streams
            .set(as_gauge(context.sessions.open_streams() as u64));
        // Counted where entries are applied; a scrape brings it up to date.
        self.primitive_leader_changes
            .inner()
            .fetch_max(replicator.state().leader_changes(), Ordering::Relaxed);
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }

    /// Counts Raft leader changes and logs them (openraft's own logs are off
    /// by default: they report routine elections as WARN and ERROR).
    pub async fn watch_raft_leader(self: Arc<Self>, context: Context) {
        let mut raft = context.replicator.raft().metrics();
        let mut known = (None, 0);
        loop {
            let now = {
                let m = raft.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            if now.0 != known.0 {
                if now.0.is_some() {
                    self.raft_leader_changes.inc();
                }
                match now.0 {
                    Some(leader) if leader == context.replicator.id() => {
                        tracing::info!(term = now.1, "this node leads");
                    }
                    Some(leader) => tracing::info!(leader, term = now.1, "following"),
                    None => tracing::info!(term = now.1, "no leader known"),
                }
                known = now;
            }
            if raft.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Serves `GET /metrics` on `addr` until `stop` turns true, and `GET
/// /ready`: 200 while `ready` (the node's gRPC health says SERVING), else
/// 503. Plain HTTP whatever the client port speaks: a Kubernetes gRPC probe
/// cannot speak TLS, so a node with TLS on its client port could not be
/// probed there.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    context: Context,
    ready: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let readiness = move || {
        let serving = *ready.borrow();
        async move {
            if serving {
                (http::StatusCode::OK, "SERVING\n")
            } else {
                (http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
            }
        }
    };
    let app = axum::Router::new()
        .route("/ready", axum::routing::get(readiness))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (metrics, context) = (metrics.clone(), context.clone());
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(&context).await,
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}

/// Tower layer counting and timing every RPC on the client port.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the client port.
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// A served method keeps its path as its label; anything else is one
/// label, so a scanner cannot grow the label set without bound. What the
/// port does not serve is known from its answer: UNIMPLEMENTED, which no
/// handler of the client port answers itself (an unknown method of a known
/// service included, which a prefix of the path could not tell).
fn method_label(path: String, code: tonic::Code) -> String {
    let known = ["/atomix.", "/baton.", "/grpc."];
    let served = code != tonic::Code::Unimplemented
        && known.iter().any(|prefix| path.starts_with(prefix))
        && path.len() <= 128;
    if served {
        path
    } else {
        "other".to_owned()
    }
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = answer.await;
            // A failure before any message comes back as a trailers-only
            // response, its status in the headers; otherwise the call
            // started well (a stream's later end is not counted here).
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe_rpc(
                method_label(path, code),
                code,
                started.elapsed().as_secs_f64(),
            );
            answer
        })
    }
}
