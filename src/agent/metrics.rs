//! The agent's Prometheus metrics, served as text at `--metrics-address` (`GET /metrics`).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body_util::Full;
use husk_proto::agent::v1::ContainerState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Agent;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    /// Containers known to the agent, by state (set at each scrape).
    containers: Family<Labels, Gauge>,
    /// Launches by result (`running`, `failed`, `rejected`).
    pub launches: Family<Labels, Counter>,
    /// Seconds from a Launch call to RUNNING.
    pub launch_seconds: Histogram,
    /// Destroys that left something behind (a shim cleanup or a removal that failed).
    pub destroy_errors: Counter,
    /// Containers terminated by the kernel's OOM killer.
    pub oom_kills: Counter,
    /// Containers found again at start, by outcome (`reattached`, `exited`, `destroyed`,
    /// `rebooted`, `unreadable`).
    pub recoveries: Family<Labels, Counter>,
    /// Shims, cgroups, mounts and directories no checkpoint claimed.
    pub orphans_destroyed: Counter,
    /// Terminated containers whose sandbox the garbage collector removed.
    pub gc_removals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("husk_agent");
        let m = Metrics {
            containers: Family::default(),
            launches: Family::default(),
            launch_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            destroy_errors: Counter::default(),
            oom_kills: Counter::default(),
            recoveries: Family::default(),
            orphans_destroyed: Counter::default(),
            gc_removals: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("containers", "Containers known to the agent, by state", m.containers.clone());
        registry.register("launches", "Launch calls, by result", m.launches.clone());
        registry.register("launch_duration_seconds", "Time from a Launch call to RUNNING", m.launch_seconds.clone());
        registry.register("destroy_errors", "Destroys that failed to clean something up", m.destroy_errors.clone());
        registry.register("oom_kills", "Containers killed by the OOM killer", m.oom_kills.clone());
        registry.register("recoveries", "Containers recovered at start, by outcome", m.recoveries.clone());
        registry.register(
            "orphans_destroyed",
            "Shims, cgroups, mounts and directories no checkpoint claimed",
            m.orphans_destroyed.clone(),
        );
        registry.register("gc_removals", "Terminated sandboxes garbage collected", m.gc_removals.clone());
        Metrics { registry, ..m }
    }
}

pub fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

impl Metrics {
    /// The exposition text, with the per-state gauge taken from `agent` now.
    pub fn render(&self, agent: &Agent) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for c in agent.all() {
            *counts.entry(c.state().as_str_name().to_ascii_lowercase()).or_insert(0i64) += 1;
        }
        for state in [
            ContainerState::Provisioning,
            ContainerState::Preparing,
            ContainerState::Isolating,
            ContainerState::Fetching,
            ContainerState::Running,
            ContainerState::Destroying,
            ContainerState::Terminated,
        ] {
            let name = state.as_str_name().to_ascii_lowercase();
            self.containers.get_or_create(&label("state", &name)).set(counts.get(&name).copied().unwrap_or(0));
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` until the agent is dropped.
pub async fn serve(addr: SocketAddr, agent: Weak<Agent>) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics-address {addr}: {e}"))?;
    tracing::info!(%addr, "serving metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("metrics: accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let agent = agent.clone();
                    async move { Ok::<_, Infallible>(respond(&req, agent.upgrade())) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(())
}

fn respond(req: &hyper::Request<hyper::body::Incoming>, agent: Option<Arc<Agent>>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, kind: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed response")
    };
    match (req.method(), req.uri().path(), agent) {
        (&hyper::Method::GET, "/metrics", Some(agent)) => {
            reply(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", agent.metrics.render(&agent))
        }
        (&hyper::Method::GET, "/metrics", None) => reply(503, "text/plain", "the agent is stopping\n".into()),
        (_, "/metrics", _) => reply(405, "text/plain", "only GET\n".into()),
        _ => reply(404, "text/plain", "not found; metrics are at /metrics\n".into()),
    }
}
