//! Connecting to the agent's API: its unix socket, or TCP with mutual TLS.
use std::path::PathBuf;

use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The agent's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/husk/husk.sock";

/// A client's TLS material for an `https://` endpoint (all PEM files).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// The CA that signed the agent's certificate.
    pub ca: Option<PathBuf>,
    /// This client's certificate and key, signed by a CA the agent trusts.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Connects to `endpoint` (`unix:///path`).
pub async fn connect(endpoint: &str) -> anyhow::Result<ContainerizerClient<Channel>> {
    connect_with(endpoint, &Tls::default()).await
}

/// Connects to `endpoint`: `unix:///path`, or `https://host:port` with `tls`.
pub async fn connect_with(endpoint: &str, tls: &Tls) -> anyhow::Result<ContainerizerClient<Channel>> {
    if endpoint.starts_with("https://") {
        return connect_tls(endpoint, tls).await;
    }
    let path =
        PathBuf::from(endpoint.strip_prefix("unix://").ok_or_else(|| {
            anyhow::anyhow!("endpoint `{endpoint}`: want unix:///path/to/socket or https://host:port")
        })?);
    let shown = path.display().to_string();
    let channel = tonic::transport::Endpoint::from_static("http://husk")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the agent at {shown}: {e}"))?;
    Ok(ContainerizerClient::new(channel))
}

async fn connect_tls(endpoint: &str, tls: &Tls) -> anyhow::Result<ContainerizerClient<Channel>> {
    let read = |what: &str, path: &Option<PathBuf>| -> anyhow::Result<Vec<u8>> {
        let path = path
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("endpoint `{endpoint}` needs --{what} (the agent wants mutual TLS)"))?;
        std::fs::read(path).map_err(|e| anyhow::anyhow!("--{what} {}: {e}", path.display()))
    };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("tls-ca", &tls.ca)?))
        .identity(Identity::from_pem(read("tls-cert", &tls.cert)?, read("tls-key", &tls.key)?));
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| anyhow::anyhow!("endpoint `{endpoint}`: {e}"))?
        .tls_config(config)
        .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the agent at {endpoint}: {}", chain(&e)))?;
    Ok(ContainerizerClient::new(channel))
}

/// An error with its sources, `: `-separated (tonic and hyper keep the real reason, a TLS or
/// connection error, in them).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
