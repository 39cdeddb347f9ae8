//! The Kubernetes CRI (`runtime.v1`) over husk's own containers, served on its own socket.
//!
//! A pod sandbox is a top-level husk container whose process is husk's holder (`husk-shim
//! hold`): it owns the pod's network, IPC and UTS namespaces (and its pid namespace when the
//! pod shares one). A CRI container is a nested container of its pod (`<pod>.<container>` in
//! `huskctl ps`), so it joins those namespaces, and the agent destroys it before its pod, as
//! for any Mesos nested container.
//!
//! The CRI splits create from start, the husk API does not: CreateContainer checks the request
//! and records the launch it will make; StartContainer makes it. What the CRI needs beyond the
//! husk containers (pod and container configs, labels, annotations, the launch to make) is
//! checkpointed under `<work dir>/cri/` and read back at start.
mod image;
mod runtime;
pub mod streaming;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use husk_proto::agent::v1 as pb;
use husk_proto::cri;
use husk_proto::mesos::v1::ContainerId;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::container::Container;
use super::Agent;

pub use image::ImageService;
pub use runtime::RuntimeService;

/// The CRI version husk implements, and the API version the kubelet checks for.
pub const CRI_VERSION: &str = "0.1.0";
pub const RUNTIME_API_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "husk";

/// Labels husk puts on the containers it makes for the CRI (listed by `huskctl ps`).
pub const LABEL_KIND: &str = "io.husk.cri.kind";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Hex digits of a CRI id: short enough that `<runtime dir>/shims/<pod>.<container>/shim.sock`
/// stays within a unix socket path, long enough (96 random bits) to never collide.
const ID_LENGTH: usize = 24;

/// The checkpoint of one pod sandbox.
#[derive(Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub created_at_ns: i64,
    #[serde(default)]
    pub runtime_handler: String,
    /// The husk sandbox directory of the pod's container (its resolv.conf is there).
    #[serde(default)]
    pub sandbox_dir: String,
}

/// The checkpoint of one CRI container.
#[derive(Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: cri::ContainerConfig,
    pub created_at_ns: i64,
    /// The image as the request named it, and the manifest digest it resolved to.
    pub image: String,
    pub image_ref: String,
    /// Absolute path of the CRI log file (empty: none).
    pub log_path: String,
    /// The launch StartContainer makes.
    pub launch: pb::LaunchRequest,
    /// StartContainer was called (the husk container exists, or existed).
    #[serde(default)]
    pub started: bool,
    /// Why the start failed before a husk container existed.
    #[serde(default)]
    pub start_error: Option<String>,
}

impl ContainerRecord {
    pub fn husk_id(&self) -> ContainerId {
        ContainerId {
            value: self.id.clone(),
            parent: Some(Box::new(ContainerId { value: self.pod_id.clone(), parent: None })),
        }
    }

    pub fn husk_key(&self) -> String {
        format!("{}.{}", self.pod_id, self.id)
    }
}

pub struct Cri {
    agent: Arc<Agent>,
    dir: PathBuf,
    pods: Mutex<HashMap<String, PodRecord>>,
    containers: Mutex<HashMap<String, ContainerRecord>>,
    /// Serializes the calls that create and remove records (ids, names).
    ops: tokio::sync::Mutex<()>,
    events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
    /// Serves the URLs of Exec, Attach and PortForward.
    streaming: Arc<streaming::Streaming>,
}

fn load_dir<T: for<'de> Deserialize<'de>>(dir: &Path) -> anyhow::Result<Vec<T>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice(&b)?)) {
            Ok(r) => out.push(r),
            Err(e) => tracing::error!("CRI record {}: {e:#}; ignored", path.display()),
        }
    }
    Ok(out)
}

impl Cri {
    /// Loads the CRI's records under `<work dir>/cri/` and starts the streaming server.
    pub fn new(agent: Arc<Agent>) -> anyhow::Result<Arc<Cri>> {
        let dir = agent.settings.work_dir.join("cri");
        let pods: Vec<PodRecord> = load_dir(&dir.join("pods"))?;
        let containers: Vec<ContainerRecord> = load_dir(&dir.join("containers"))?;
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let streaming =
            streaming::Streaming::bind(&agent, agent.settings.streaming_listen, agent.settings.streaming_idle_timeout)?;
        let cri = Arc::new(Cri {
            streaming,
            agent,
            dir,
            pods: Mutex::new(pods.into_iter().map(|p| (p.id.clone(), p)).collect()),
            containers: Mutex::new(containers.into_iter().map(|c| (c.id.clone(), c)).collect()),
            ops: tokio::sync::Mutex::new(()),
            events,
        });
        let started: Vec<ContainerRecord> =
            cri.containers.lock().unwrap().values().filter(|r| r.started).cloned().collect();
        for r in &started {
            cri.follow(r);
        }
        Ok(cri)
    }

    fn record_path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{id}.json"))
    }

    /// Checkpoints a record (`kind` is `pods` or `containers`), then keeps it in `table`.
    fn save<T: Serialize + Clone>(
        &self,
        kind: &str,
        id: &str,
        record: &T,
        table: &Mutex<HashMap<String, T>>,
    ) -> Result<(), Status> {
        let bytes = serde_json::to_vec(record).map_err(|e| Status::internal(format!("encoding {kind}/{id}: {e}")))?;
        husk_oci::checkpoint::write_atomic(&self.record_path(kind, id), &bytes, 0o600)
            .map_err(|e| Status::internal(format!("checkpointing {kind}/{id}: {e}")))?;
        table.lock().unwrap().insert(id.to_string(), record.clone());
        Ok(())
    }

    /// Removes a record's checkpoint (a missing one is fine), then the record.
    fn forget<T>(&self, kind: &str, id: &str, table: &Mutex<HashMap<String, T>>) -> Result<(), Status> {
        match std::fs::remove_file(self.record_path(kind, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Status::internal(format!("removing the record {kind}/{id}: {e}"))),
        }
        table.lock().unwrap().remove(id);
        Ok(())
    }

    fn save_pod(&self, p: &PodRecord) -> Result<(), Status> {
        self.save("pods", &p.id, p, &self.pods)
    }

    fn save_container(&self, c: &ContainerRecord) -> Result<(), Status> {
        self.save("containers", &c.id, c, &self.containers)
    }

    fn forget_pod(&self, id: &str) -> Result<(), Status> {
        self.forget("pods", id, &self.pods)
    }

    fn forget_container(&self, id: &str) -> Result<(), Status> {
        self.forget("containers", id, &self.containers)
    }

    /// A fresh id: 96 random bits in hex (a collision is not a practical concern).
    fn new_id(&self) -> Result<String, Status> {
        random_hex(ID_LENGTH / 2)
    }

    /// The pod an id or a unique prefix of one names (crictl prints 13 characters).
    fn pod(&self, id: &str, field: &str) -> Result<PodRecord, Status> {
        let pods = self.pods.lock().unwrap();
        resolve(&pods, id, field, "pod sandbox").cloned()
    }

    fn container(&self, id: &str, field: &str) -> Result<ContainerRecord, Status> {
        let containers = self.containers.lock().unwrap();
        resolve(&containers, id, field, "container").cloned()
    }

    /// The husk container of a pod (None: never launched, or removed).
    fn husk_pod(&self, id: &str) -> Option<Arc<Container>> {
        self.agent.get(id).ok()
    }

    fn pod_state(&self, p: &PodRecord) -> cri::PodSandboxState {
        match self.husk_pod(&p.id) {
            Some(c) if c.terminated().is_none() && c.state() == pb::ContainerState::Running => {
                cri::PodSandboxState::SandboxReady
            }
            _ => cri::PodSandboxState::SandboxNotready,
        }
    }

    fn containers_of(&self, pod: &str) -> Vec<ContainerRecord> {
        self.containers.lock().unwrap().values().filter(|c| c.pod_id == pod).cloned().collect()
    }

    /// Sends a container event to GetContainerEvents subscribers.
    fn event(&self, r: &ContainerRecord, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let status = runtime::status_of(self, r);
        let pod = self.pods.lock().unwrap().get(&r.pod_id).cloned();
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: r.id.clone(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: pod.map(|p| runtime::pod_status_of(self, &p)),
            containers_statuses: vec![status],
        });
    }

    /// Sends CONTAINER_STOPPED once the husk container of a started record terminates. One
    /// task per running CRI container, waiting on that container alone: a follower of the
    /// agent's whole event stream would wake for every husk container on the node.
    pub(crate) fn follow(self: &Arc<Self>, r: &ContainerRecord) {
        let Ok(c) = self.agent.get(&r.husk_key()) else { return };
        let mut termination = c.termination.subscribe();
        drop(c);
        let (cri, id) = (Arc::downgrade(self), r.id.clone());
        tokio::spawn(async move {
            // An error means the container went away (removed) without terminating.
            if termination.wait_for(Option::is_some).await.is_err() {
                return;
            }
            let Some(cri) = cri.upgrade() else { return };
            let record = cri.containers.lock().unwrap().get(&id).cloned();
            if let Some(r) = record {
                cri.event(&r, cri::ContainerEventType::ContainerStoppedEvent);
            }
        });
    }
}

/// An exact id, or the one id a prefix starts.
fn resolve<'a, T>(map: &'a HashMap<String, T>, id: &str, field: &str, what: &str) -> Result<&'a T, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    if let Some(v) = map.get(id) {
        return Ok(v);
    }
    let mut matching = map.iter().filter(|(k, _)| k.starts_with(id));
    match (matching.next(), matching.next()) {
        (Some((_, v)), None) => Ok(v),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "{field}: `{}` is the prefix of more than one {what}",
            id.escape_debug()
        ))),
        (None, _) => Err(Status::not_found(format!("{field}: no {what} `{}`", id.escape_debug()))),
    }
}

fn now_ns() -> i64 {
    super::now_ns()
}

/// `bytes` random bytes from /dev/urandom, in hex.
fn random_hex(bytes: usize) -> Result<String, Status> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Status::internal(format!("/dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether every `selector` label is in `labels` with the same value.
fn matches(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let map: HashMap<String, u32> = [("abc123".to_string(), 1), ("abd456".to_string(), 2)].into();
        assert_eq!(*resolve(&map, "abc123", "f", "pod").unwrap(), 1);
        assert_eq!(*resolve(&map, "abd", "f", "pod").unwrap(), 2);
        let e = resolve(&map, "ab", "pod_sandbox_id", "pod").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("pod_sandbox_id: `ab` is the prefix of more than one pod"), "{}", e.message());
        assert_eq!(resolve(&map, "x", "f", "pod").unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(resolve(&map, "", "f", "pod").unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn selectors() {
        let labels: HashMap<String, String> = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        assert!(matches(&labels, &HashMap::new()));
        assert!(matches(&labels, &[("a".into(), "1".into())].into()));
        assert!(!matches(&labels, &[("a".into(), "2".into())].into()));
        assert!(!matches(&labels, &[("c".into(), "1".into())].into()));
    }
}
