//! Connecting to the agent's API.
use std::path::PathBuf;

use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use tonic::transport::Channel;

/// The agent's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/husk/husk.sock";

/// Connects to `endpoint` (`unix:///path`).
pub async fn connect(endpoint: &str) -> anyhow::Result<ContainerizerClient<Channel>> {
    let path = PathBuf::from(
        endpoint
            .strip_prefix("unix://")
            .ok_or_else(|| anyhow::anyhow!("endpoint `{endpoint}`: only unix:///path endpoints are supported"))?,
    );
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
