//! The agent's gRPC service, `husk.agent.v1.Containerizer`.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_server::Containerizer;
use husk_proto::mesos::v1::{ContainerId, ContainerStatus};
use husk_proto::shim::v1 as shim_pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::container::Container;
use super::Agent;

pub type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct Service(pub Arc<Agent>);

/// The agent's key of a container: its id, or for a nested one `parent.child` (ids hold no `.`).
fn id_of(id: &ContainerId) -> Result<String, Status> {
    husk_oci::validate::container_id(id, "container_id").map_err(super::status_of)?;
    Ok(husk_oci::validate::display_id(id))
}

async fn shim(
    c: &Container,
) -> Result<husk_proto::shim::v1::shim_client::ShimClient<tonic::transport::Channel>, Status> {
    if c.terminated().is_some() {
        return Err(Status::failed_precondition(format!("container_id: `{}` has terminated", c.id)));
    }
    super::shim_client(c).await
}

fn info_of(
    agent: &super::Agent,
    c: &Container,
    pid: Option<u32>,
    stats: Option<husk_proto::mesos::v1::ResourceStatistics>,
) -> pb::ContainerInfo {
    let created = c.checkpoint.lock().unwrap().created_ns;
    pb::ContainerInfo {
        container_id: c.launch.container_id.clone(),
        state: Some(c.state() as i32),
        container_status: Some(ContainerStatus {
            container_id: Some(c.launch.container_id.clone()),
            executor_pid: pid,
            network_infos: agent.network_infos(c),
            ..Default::default()
        }),
        resource_statistics: stats,
        termination: c.terminated(),
        sandbox_directory: Some(c.sandbox().display().to_string()),
        bundle_directory: Some(c.bundle().display().to_string()),
        // The runtime in use: the launch's, else the agent's default.
        runtime: Some(agent.runtime_of(c)),
        resources: c.launch.resources.clone(),
        limits: c.launch.limits.clone(),
        labels: c.launch.labels.clone(),
        created_at_ns: Some(created),
        standalone: Some(true),
    }
}

async fn init_pid(c: &Container) -> Option<u32> {
    if c.terminated().is_some() {
        return None;
    }
    let mut client = super::shim_client(c).await.ok()?;
    super::within_deadline(c, client.state(shim_pb::StateRequest {})).await.ok().map(|st| st.pid)
}

#[tonic::async_trait]
impl Containerizer for Service {
    async fn launch(&self, req: Request<pb::LaunchRequest>) -> Result<Response<pb::LaunchResponse>, Status> {
        let req = req.into_inner();
        if req.session.is_some() {
            return Err(Status::invalid_argument("session: set by LaunchSession only"));
        }
        let c = self.0.launch(req).await?;
        Ok(Response::new(pb::LaunchResponse {
            state: Some(c.state() as i32),
            sandbox_directory: Some(c.sandbox().display().to_string()),
            executor_pid: init_pid(&c).await.map(|p| p as i32),
        }))
    }

    async fn wait(&self, req: Request<pb::WaitRequest>) -> Result<Response<pb::ContainerTermination>, Status> {
        let c = self.0.get(&id_of(&req.into_inner().container_id)?)?;
        let mut rx = c.termination.subscribe();
        let t = rx.wait_for(|t| t.is_some()).await.map_err(|_| Status::unavailable("the agent is stopping"))?.clone();
        Ok(Response::new(t.unwrap()))
    }

    async fn kill(&self, req: Request<pb::KillRequest>) -> Result<Response<pb::KillResponse>, Status> {
        let r = req.into_inner();
        let id = id_of(&r.container_id)?;
        let grace = match r.grace_period {
            Some(g) if g.nanoseconds < 0 => {
                return Err(Status::invalid_argument("grace_period.nanoseconds: must not be negative"));
            }
            Some(g) => Some(Duration::from_nanos(g.nanoseconds as u64)),
            None => None,
        };
        self.0.kill(&id, r.signal, grace).await?;
        Ok(Response::new(pb::KillResponse {}))
    }

    async fn remove(&self, req: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        self.0.remove(&id_of(&req.into_inner().container_id)?).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        let r = req.into_inner();
        let c = self.0.get(&id_of(&r.container_id)?)?;
        let _op = c.op.lock().await;
        husk_oci::resources::validate(&r.resources, "resources").map_err(super::status_of)?;
        let requests = husk_oci::resources::Amounts::of(&r.resources);
        let limits = husk_oci::resources::limits(&r.limits, &requests, "limits").map_err(super::status_of)?;
        let mut u = shim_pb::UpdateRequest::default();
        if let Some(cpus) = requests.cpus {
            u.cpu_shares = ((1024.0 * cpus) as u64).max(2);
        }
        match limits.cpus {
            Some(l) if l.is_infinite() => u.cpu_quota_us = -1,
            Some(l) => {
                u.cpu_quota_us = ((100_000.0 * l) as i64).max(1000);
                u.cpu_period_us = 100_000;
            }
            None => {}
        }
        let mem = limits.mem_mb.or(requests.mem_mb);
        if let Some(mb) = mem {
            let new = if mb.is_infinite() { -1 } else { (mb.max(32.0) * 1024.0 * 1024.0) as i64 };
            let current = c.checkpoint.lock().unwrap().mem_limit_mb;
            let lowering = match (new, current) {
                (-1, _) | (_, None) => false,
                (n, Some(cur)) => (n as f64) < cur * 1024.0 * 1024.0,
            };
            if lowering && !r.allow_memory_limit_decrease() {
                return Err(Status::failed_precondition(
                    "limits: the memory limit is only raised on a live container (set allow_memory_limit_decrease)",
                ));
            }
            u.memory_limit_bytes = new;
        }
        let mut client = shim(&c).await?;
        super::within_deadline(&c, client.update(u)).await.map_err(|e| match e.code() {
            tonic::Code::DeadlineExceeded => e,
            _ => Status::failed_precondition(e.message().to_string()),
        })?;
        if let Some(mb) = mem {
            let mut cp = c.checkpoint.lock().unwrap();
            cp.mem_limit_mb = mb.is_finite().then_some(mb.max(32.0));
            super::container::save(&c.dir, &cp).map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(Response::new(pb::UpdateResponse {}))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let c = self.0.get(&id_of(&req.into_inner().container_id)?)?;
        let mut client = shim(&c).await?;
        let stats = super::within_deadline(&c, client.stats(shim_pb::StatsRequest {})).await?;
        Ok(Response::new(pb::UsageResponse { statistics: stats.statistics }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let c = self.0.get(&id_of(&req.into_inner().container_id)?)?;
        let pid = init_pid(&c).await;
        let info = info_of(&self.0, &c, pid, None);
        Ok(Response::new(pb::StatusResponse { status: info.container_status.clone(), info: Some(info) }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let req = req.into_inner();
        let (with_stats, nested) = (req.include_statistics(), req.show_nested());
        let mut containers = Vec::new();
        for c in self.0.all().into_iter().filter(|c| nested || c.launch.container_id.parent.is_none()) {
            let stats = match with_stats && c.terminated().is_none() {
                true => match shim(&c).await {
                    Ok(mut client) => super::within_deadline(&c, client.stats(shim_pb::StatsRequest {}))
                        .await
                        .ok()
                        .and_then(|s| s.statistics),
                    Err(_) => None,
                },
                false => None,
            };
            containers.push(info_of(&self.0, &c, None, stats));
        }
        Ok(Response::new(pb::ListResponse { containers }))
    }

    type WatchStream = Streamed<pb::ContainerEvent>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let only: Vec<String> = req.into_inner().container_ids.iter().map(husk_oci::validate::display_id).collect();
        let mut events = self.0.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) if only.is_empty() || only.contains(&husk_oci::validate::display_id(&e.container_id)) => {
                        if tx.send(Ok(Arc::unwrap_or_clone(e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!("{n} events were dropped: the watcher was too slow"))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type LogsStream = Streamed<pb::LogChunk>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let c = self.0.get(&id_of(&r.container_id)?)?;
        Ok(Response::new(logs(&c, r.stream(), r.tail, r.follow(), r.since_ns)))
    }

    type ExecStream = Streamed<pb::ExecResponse>;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Ok(Response::new(super::exec::exec(self.0.clone(), req.into_inner()).await?))
    }

    async fn exec_sync(&self, req: Request<pb::ExecSyncRequest>) -> Result<Response<pb::ExecSyncResponse>, Status> {
        Ok(Response::new(super::exec::exec_sync(self.0.clone(), req.into_inner()).await?))
    }

    type AttachStream = Streamed<pb::LogChunk>;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Ok(Response::new(super::exec::attach(self.0.clone(), req.into_inner()).await?))
    }

    type LaunchSessionStream = Streamed<pb::LogChunk>;

    async fn launch_session(
        &self,
        req: Request<tonic::Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::LaunchSessionStream>, Status> {
        Ok(Response::new(super::exec::launch_session(self.0.clone(), req.into_inner()).await?))
    }

    async fn version(&self, _: Request<pb::VersionRequest>) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: Some(env!("CARGO_PKG_VERSION").into()),
            git_commit: None,
            api_version: Some("husk.agent.v1".into()),
            runtime_name: Some(self.0.settings.runtime.clone()),
            runtime_version: Some(env!("CARGO_PKG_VERSION").into()),
        }))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let s = &self.0.settings;
        let mode = husk_shim::cgroups::Layout::detect().map(|l| l.mode().to_string()).unwrap_or_else(|_| "none".into());
        Ok(Response::new(pb::InfoResponse {
            hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|v| v.trim().to_string()),
            cgroup_mode: Some(mode),
            default_runtime: Some(s.runtime.clone()),
            work_dir: Some(s.work_dir.display().to_string()),
            runtime_dir: Some(s.runtime_dir.display().to_string()),
            containers: Some(self.0.all().len() as u32),
            total_resources: to_resources(&s.total),
            allocated_resources: to_resources(&self.0.allocated_now()),
            available_resources: {
                let used = self.0.allocated_now();
                let left = |t: Option<f64>, u: Option<f64>| t.map(|t| (t - u.unwrap_or(0.0)).max(0.0));
                to_resources(&husk_oci::resources::Amounts {
                    cpus: left(s.total.cpus, used.cpus),
                    mem_mb: left(s.total.mem_mb, used.mem_mb),
                    disk_mb: left(s.total.disk_mb, used.disk_mb),
                    ports: s.total.ports.clone(),
                })
            },
            boot_id: Some(self.0.boot_id.clone()),
            isolators: self.0.settings.isolation.clone(),
            image_store: Some(self.0.images.store.root().display().to_string()),
            image_store_bytes: {
                let store = self.0.images.store.clone();
                tokio::task::spawn_blocking(move || store.disk_usage()).await.ok()
            },
            images: self.0.images.store.refs().ok().map(|r| r.len() as u32),
        }))
    }

    type PullImageStream = Streamed<pb::PullProgress>;

    async fn pull_image(&self, req: Request<pb::PullImageRequest>) -> Result<Response<Self::PullImageStream>, Status> {
        let name = req.into_inner().name;
        let reference = husk_oci::image::Reference::parse(&name).map_err(|e| super::images::status("name", e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let agent = self.0.clone();
        // The pull runs to its end even when the client goes away: what it stored is reused.
        tokio::spawn(async move {
            let (progress, mut updates) = tokio::sync::mpsc::channel::<pb::PullProgress>(64);
            let forward = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(p) = updates.recv().await {
                        let _ = tx.send(Ok(p)).await;
                    }
                })
            };
            let pulled = {
                let _gc = agent.images.gc.read().await;
                agent.images.pull(&reference, Some(&progress)).await
            };
            drop(progress);
            let _ = forward.await;
            let last = pulled.and_then(|digest| {
                let used = super::images_in_use(&agent.all());
                let mut images = agent.images.list(&used, Some(&digest))?;
                Ok(pb::PullProgress { image: images.pop(), ..Default::default() })
            });
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn import_image(
        &self,
        req: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        let r = req.into_inner();
        if !r.path.starts_with('/') || husk_oci::fs::has_parent_component(&r.path) || r.path.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "path: `{}` must be an absolute path on the node, without `..`",
                r.path.escape_debug()
            )));
        }
        let imported = {
            let _gc = self.0.images.gc.read().await;
            self.0.images.import(r.path.into(), r.name.filter(|n| !n.is_empty())).await?
        };
        let used = super::images_in_use(&self.0.all());
        let mut images = Vec::new();
        for i in imported {
            if !images.iter().any(|m: &pb::Image| m.digest.as_deref() == Some(&i.digest)) {
                images.extend(self.0.images.list(&used, Some(&i.digest))?);
            }
        }
        Ok(Response::new(pb::ImportImageResponse { images }))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let only = req.into_inner().name.filter(|n| !n.is_empty());
        let used = super::images_in_use(&self.0.all());
        Ok(Response::new(pb::ListImagesResponse { images: self.0.images.list(&used, only.as_deref())? }))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let r = req.into_inner();
        let keep = super::images_in_use(&self.0.all()).into_keys().collect();
        let (untagged, bytes) = self.0.images.remove(&r.name, keep, r.force()).await?;
        Ok(Response::new(pb::RemoveImageResponse { untagged, bytes_freed: Some(bytes) }))
    }

    async fn prune_images(
        &self,
        req: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::PruneImagesResponse>, Status> {
        let keep = super::images_in_use(&self.0.all()).into_keys().collect();
        let (removed, bytes) = self.0.images.prune(keep, req.into_inner().excluded).await?;
        Ok(Response::new(pb::PruneImagesResponse { removed, bytes_freed: Some(bytes) }))
    }
}

/// The container's output: from `since` (or the last `tail` lines), then, with `follow`, as it
/// is written until the container terminates.
pub fn logs(
    c: &Container,
    stream: pb::logs_request::Stream,
    tail: Option<u64>,
    follow: bool,
    since: Option<i64>,
) -> Streamed<pb::LogChunk> {
    {
        let streams: Vec<(pb::logs_request::Stream, std::path::PathBuf)> = match stream {
            pb::logs_request::Stream::Stdout => vec![(pb::logs_request::Stream::Stdout, c.sandbox().join("stdout"))],
            pb::logs_request::Stream::Stderr => vec![(pb::logs_request::Stream::Stderr, c.sandbox().join("stderr"))],
            pb::logs_request::Stream::Both => vec![
                (pb::logs_request::Stream::Stdout, c.sandbox().join("stdout")),
                (pb::logs_request::Stream::Stderr, c.sandbox().join("stderr")),
            ],
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut done = c.termination.subscribe();
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for (stream, path) in &streams {
                let data = std::fs::read(path).unwrap_or_default();
                let from = match since {
                    Some(ns) => {
                        let times = std::fs::read(husk_shim::logs::times_path(path)).unwrap_or_default();
                        husk_shim::logs::offset_since(&times, data.len() as u64, ns) as usize
                    }
                    None => 0,
                };
                let start = from
                    + match tail {
                        Some(n) => tail_start(&data[from..], n as usize),
                        None => 0,
                    };
                if start < data.len()
                    && tx
                        .send(Ok(pb::LogChunk { stream: Some(*stream as i32), data: Some(data[start..].to_vec()) }))
                        .await
                        .is_err()
                {
                    return;
                }
                offsets.push(data.len());
            }
            if !follow {
                return;
            }
            loop {
                let finished = done.borrow().is_some();
                for (i, (stream, path)) in streams.iter().enumerate() {
                    let data = std::fs::read(path).unwrap_or_default();
                    // A rotation starts the file anew.
                    let from = if data.len() < offsets[i] { 0 } else { offsets[i] };
                    if from < data.len() {
                        let chunk = pb::LogChunk { stream: Some(*stream as i32), data: Some(data[from..].to_vec()) };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    offsets[i] = data.len();
                }
                if finished {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), done.changed()).await;
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

fn to_resources(a: &husk_oci::resources::Amounts) -> Vec<husk_proto::mesos::v1::Resource> {
    use husk_oci::resources::scalar;
    let mut out = Vec::new();
    for (name, v) in [("cpus", a.cpus), ("mem", a.mem_mb), ("disk", a.disk_mb)] {
        if let Some(v) = v {
            out.push(scalar(name, (v * 1000.0).round() / 1000.0));
        }
    }
    if !a.ports.is_empty() {
        use husk_proto::mesos::v1::value;
        out.push(husk_proto::mesos::v1::Resource {
            name: "ports".into(),
            r#type: value::Type::Ranges as i32,
            ranges: Some(value::Ranges {
                range: a.ports.iter().map(|(b, e)| value::Range { begin: *b, end: *e }).collect(),
            }),
            ..Default::default()
        });
    }
    out
}

/// Where the last `n` lines of `data` start.
fn tail_start(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[super::tail_start(d, 2)..], b"b\nc\n");
        assert_eq!(&d[super::tail_start(d, 5)..], b"a\nb\nc\n");
        assert_eq!(&d[super::tail_start(d, 0)..], b"");
        assert_eq!(&b"x"[super::tail_start(b"x", 1)..], b"x");
    }
}
