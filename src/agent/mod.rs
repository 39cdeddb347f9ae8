//! husk-agent: the node's containerizer. It turns launches into bundles, starts one husk-shim
//! per container, follows each to its termination, checkpoints everything under the work dir
//! and recovers it all after a restart.
pub mod access;
mod authority;
pub mod cni;
pub mod config;
mod container;
pub mod cri;
mod exec;
pub mod fetcher;
mod gc;
pub mod images;
pub mod isolators;
pub mod metrics;
pub mod registry;
mod rootfs;
pub mod service;
pub mod sweep;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_proto::agent::v1::{ContainerEvent, ContainerState, ContainerTermination, LaunchRequest};
use husk_proto::mesos::v1::{task_status::Reason, TaskState};
use husk_proto::shim::v1 as shim_pb;
use husk_shim::exit::ExitRecord;
use husk_shim::shim::{ProcessId, SHIM_FILE};
use tokio::sync::broadcast;
use tonic::Status;

pub use config::{Flags, Settings};
use container::{termination_of, termination_with, Checkpoint, Container, LAUNCH_FILE, STATE_FILE};

/// The cgroup (under the cgroup root) every shim lives in; container ids cannot contain `.`, so
/// no container's cgroup is ever this one.
pub const SHIM_CGROUP: &str = "shims.scope";

/// The marker of a launch a Kill cancelled.
const CANCELLED: &str = "\0cancelled";

/// The runtimes a launch may name: husk's own and the OCI runtimes husk-shim drives by name.
/// How often husk-agent hands the freed pages inside its heaps back to the kernel
/// (`malloc_trim`): an idle agent is back near its live heap within this long.
pub const HEAP_TRIM_EVERY: Duration = Duration::from_secs(10);

pub const RUNTIMES: &[&str] = &["husk", "runc", "crun", "youki"];

/// How long the agent waits for a shim to start or to delete its container.
const SHIM_DEADLINE: Duration = Duration::from_secs(60);

/// How long the agent waits for a shim to answer one call (state, stats, update, kill).
const SHIM_CALL_DEADLINE: Duration = Duration::from_secs(10);

pub struct Agent {
    pub settings: Settings,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// State changes, shared: a watcher that filters by id copies only the events it sends.
    pub events: broadcast::Sender<Arc<ContainerEvent>>,
    pub boot_id: String,
    fetcher: fetcher::Fetcher,
    pub metrics: metrics::Metrics,
    isolators: Vec<Box<dyn isolators::Isolator>>,
    pub images: images::Images,
    /// Launches whose image is still being provisioned (pulled, unpacked, copied), by container
    /// id, with the flag a Kill raises to cancel them: the container does not exist yet, but its
    /// id is taken and the launch can be stopped.
    provisioning: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

/// A container id taken by a launch that is provisioning its image; freed when dropped.
struct Reservation<'a> {
    agent: &'a Agent,
    id: String,
    cancelled: tokio::sync::watch::Receiver<bool>,
    released: bool,
}

impl Reservation<'_> {
    /// Frees the id and says whether a Kill came for it. Kill raises the flag under the same
    /// lock, so no Kill falls between the two: a later one finds the container in the table.
    fn release(mut self) -> bool {
        let mut map = self.agent.provisioning.lock().unwrap();
        map.remove(&self.id);
        self.released = true;
        let killed = *self.cancelled.borrow();
        killed
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.agent.provisioning.lock().unwrap().remove(&self.id);
        }
    }
}

/// A nested container's parent: its key, what the translation needs of it and its root
/// filesystem (a child without a root of its own runs on it).
struct Parent {
    id: String,
    context: husk_oci::ParentContext,
    rootfs: Option<PathBuf>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// A CRI log path: an absolute, plain path (no `.` or `..`, no NUL) in an existing directory.
fn check_log_path(log: &str) -> Result<(), Status> {
    use std::path::Component;
    let bad = |rule: &str| Status::invalid_argument(format!("cri_log_path: `{}` {rule}", log.escape_debug()));
    let path = Path::new(log);
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if log.len() > 4096 || log.contains('\0') {
        return Err(bad("is longer than 4096 bytes or holds a NUL"));
    }
    if path.components().any(|c| matches!(c, Component::CurDir | Component::ParentDir)) || log.ends_with('/') {
        return Err(bad("must name a file without `.` or `..` components"));
    }
    match path.parent().map(std::fs::metadata) {
        Some(Ok(m)) if m.is_dir() => Ok(()),
        _ => Err(Status::failed_precondition(format!(
            "cri_log_path: the directory of `{}` does not exist",
            log.escape_debug()
        ))),
    }
}

/// The gRPC status of a translation error: the field and the rule, unchanged.
pub fn status_of(e: husk_oci::Error) -> Status {
    match e {
        husk_oci::Error::Invalid { .. } | husk_oci::Error::Unsupported { .. } => {
            Status::invalid_argument(e.to_string())
        }
        husk_oci::Error::Missing { .. } => Status::failed_precondition(e.to_string()),
        husk_oci::Error::Io { .. } => Status::internal(e.to_string()),
    }
}

/// The Docker image a launch asks for, and whether a stored copy will do (`Image.cached`).
fn image_of(req: &LaunchRequest) -> Option<(String, bool)> {
    use husk_proto::mesos::v1::image::Type;
    let image = req.container.as_ref()?.mesos.as_ref()?.image.as_ref()?;
    let name = image.docker.as_ref().map(|d| d.name.clone()).filter(|n| !n.is_empty())?;
    (image.r#type() == Type::Docker).then_some((name, image.cached()))
}

/// Variables an image sets (NAME, VALUE), below the user's.
type ImageEnv = Vec<(String, String)>;

/// The launch as it runs from `image`: the image's command, working directory and user merged
/// in (Mesos' docker runtime isolator), and the image's environment (below the user's).
fn with_image<'a>(
    req: &'a LaunchRequest,
    image: &images::Provisioned,
) -> Result<(std::borrow::Cow<'a, LaunchRequest>, ImageEnv), Status> {
    let cmd = req.command.clone().unwrap_or_default();
    let applied =
        husk_oci::image::apply_config(&cmd, &image.config).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut effective = req.clone();
    let mut command = match req.literal_command() {
        true => cmd,
        false => applied.command,
    };
    if command.user.as_deref().is_none_or(str::is_empty) {
        command.user = applied.user;
    }
    effective.command = Some(command);
    if effective.working_dir.as_deref().is_none_or(str::is_empty) {
        effective.working_dir = applied.working_dir;
    }
    Ok((std::borrow::Cow::Owned(effective), applied.env))
}

/// Manifest digests of the images live containers run from, with how many run from each.
pub fn images_in_use(containers: &[Arc<Container>]) -> HashMap<String, u32> {
    let mut used = HashMap::new();
    for c in containers.iter().filter(|c| c.terminated().is_none()) {
        if let Some(d) = c.checkpoint.lock().unwrap().image.clone() {
            *used.entry(d).or_insert(0) += 1;
        }
    }
    used
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

impl Agent {
    /// Prepares the directories, records the boot, and recovers every checkpointed container.
    pub async fn start(mut settings: Settings) -> anyhow::Result<Arc<Agent>> {
        for dir in [settings.work_dir.join("containers"), settings.runtime_dir.join("shims")] {
            std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        // Real paths: mounts are matched against /proc/self/mountinfo, which has no links.
        settings.work_dir = std::fs::canonicalize(&settings.work_dir)?;
        settings.runtime_dir = std::fs::canonicalize(&settings.runtime_dir)?;
        for (isolator, without) in [
            ("linux/capabilities", "root's full capability set, whatever --allowed-capabilities says"),
            ("linux/seccomp", "no seccomp filter"),
            ("linux/nnp", "no no_new_privileges"),
            ("namespaces/pid", "the host's pid namespace, whatever --allow-host-pid-namespace says"),
            ("namespaces/ipc", "the host's IPC namespace, whatever --allow-host-ipc-namespace says"),
            ("environment", "none of their launch's environment variables"),
        ] {
            if !settings.isolation.iter().any(|i| i == isolator) {
                tracing::warn!("--isolation leaves out {isolator}: containers get {without}");
            }
        }
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string();
        let fetcher = fetcher::Fetcher::new(
            settings.fetcher_cache_dir.clone(),
            settings.fetcher_cache_bytes,
            settings.fetcher_stall_timeout,
        );
        let store = husk_oci::image::Store::open(
            &settings.work_dir.join("images"),
            husk_oci::image::layer::Options { keep_setuid: settings.image_keep_setuid },
        )?;
        let registry = registry::Registry::new(
            settings.insecure_registries.clone(),
            settings.registry_auths.clone(),
            settings.fetcher_stall_timeout,
        );
        let agent = Arc::new(Agent {
            images: images::Images::new(store, settings.image_backend, registry),
            isolators: isolators::parse(&settings.isolation)?,
            metrics: metrics::Metrics::default(),
            fetcher,
            settings,
            containers: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            boot_id,
            provisioning: Mutex::new(HashMap::new()),
        });
        agent.clone().recover().await;
        husk_oci::failpoint::hit("agent.recover.done");
        husk_oci::checkpoint::write_atomic(&agent.settings.work_dir.join("boot_id"), agent.boot_id.as_bytes(), 0o644)?;
        let destroyed = agent.sweep_orphans().await;
        agent.metrics.orphans_destroyed.inc_by(destroyed.len() as u64);
        agent.spawn_gc();
        Ok(agent)
    }

    /// The resources that containers not yet terminated asked for.
    pub fn allocated(map: &HashMap<String, Arc<Container>>) -> husk_oci::resources::Amounts {
        let mut a = husk_oci::resources::Amounts::default();
        for c in map.values().filter(|c| c.terminated().is_none() && c.launch.container_id.parent.is_none()) {
            let r = husk_oci::resources::Amounts::of(&c.launch.resources);
            for (slot, v) in [(&mut a.cpus, r.cpus), (&mut a.mem_mb, r.mem_mb), (&mut a.disk_mb, r.disk_mb)] {
                if let Some(v) = v {
                    *slot = Some(slot.unwrap_or(0.0) + v);
                }
            }
        }
        a
    }

    pub fn allocated_now(&self) -> husk_oci::resources::Amounts {
        Agent::allocated(&self.containers.lock().unwrap())
    }

    /// Refuses a launch that does not fit in the node's unallocated resources.
    fn admit(&self, map: &HashMap<String, Arc<Container>>, want: &husk_oci::resources::Amounts) -> Result<(), Status> {
        let used = Agent::allocated(map);
        let total = &self.settings.total;
        for (name, want, used, total) in [
            ("cpus", want.cpus, used.cpus, total.cpus),
            ("mem", want.mem_mb, used.mem_mb, total.mem_mb),
            ("disk", want.disk_mb, used.disk_mb, total.disk_mb),
        ] {
            if let (Some(want), Some(total)) = (want, total) {
                let free = total - used.unwrap_or(0.0);
                if want > free + 1e-9 {
                    return Err(Status::resource_exhausted(format!(
                        "resources: {name} {want} requested, {} of {total} unallocated on this node",
                        free.max(0.0)
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>, Status> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container_id: no container `{id}`")))
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        let mut v: Vec<_> = self.containers.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn event(&self, c: &Container, previous: ContainerState) {
        let _ = self.events.send(Arc::new(ContainerEvent {
            container_id: c.launch.container_id.clone(),
            state: Some(c.state() as i32),
            previous_state: Some(previous as i32),
            timestamp_ns: Some(now_ns()),
            termination: c.terminated(),
        }));
    }

    fn transition(&self, c: &Container, to: ContainerState) -> Result<(), Status> {
        let from = c.state();
        c.set_state(to).map_err(|e| internal("checkpointing the state", e))?;
        tracing::info!(container = %c.id, from = from.as_str_name(), to = to.as_str_name(), "state");
        self.event(c, from);
        Ok(())
    }

    fn finish(&self, c: &Container, t: ContainerTermination) {
        let from = c.state();
        tracing::info!(container = %c.id, state = ?t.state(), message = t.message(), "terminated");
        if let Err(e) = c.terminate(t) {
            tracing::error!(container = %c.id, "checkpointing the termination: {e}");
        }
        self.event(c, from);
    }

    /// Launches a container and returns once it runs. A launch that fails after validation is
    /// destroyed and its termination (REASON_CONTAINER_LAUNCH_FAILED) stays readable by Wait.
    pub async fn launch(self: &Arc<Self>, req: LaunchRequest) -> Result<Arc<Container>, Status> {
        let started = std::time::Instant::now();
        let rejected = |e: Status| {
            self.metrics.launches.get_or_create(&metrics::label("result", "rejected")).inc();
            e
        };
        // An image is provisioned before the container exists (a pull can take long, and the
        // translation needs the image's config and rootfs). Image removal and pruning wait
        // until the container is recorded with its image.
        let wanted = image_of(&req);
        let gc = match wanted {
            Some(_) => Some(self.images.gc.read().await),
            None => None,
        };
        let mut staged = None;
        let mut reservation = None;
        let provisioned = match wanted {
            Some((name, cached)) => {
                husk_oci::validate::container_id(&req.container_id, "container_id")
                    .map_err(status_of)
                    .map_err(rejected)?;
                let r = self.reserve(&husk_oci::validate::display_id(&req.container_id)).map_err(rejected)?;
                let mut cancelled = r.cancelled.clone();
                reservation = Some(r);
                let killed = || {
                    self.metrics.launches.get_or_create(&metrics::label("result", "killed")).inc();
                    Status::aborted("launch cancelled: killed on request while its image was being provisioned")
                };
                // A Kill stops the pull where it is: what it wrote so far is a temporary file
                // the store discards, and a concurrent launch of the same image pulls on.
                let p = tokio::select! {
                    p = self.images.provision(&name, cached) => p.map_err(rejected)?,
                    _ = cancelled.wait_for(|k| *k) => return Err(killed()),
                };
                if self.images.backend == images::Backend::Copy {
                    let dir = self.images.store.scratch_dir("rootfs").map_err(|e| images::status("rootfs", e))?;
                    let (layers, to) = (p.layers.clone(), dir.clone());
                    let copied = tokio::task::spawn_blocking(move || {
                        layers.iter().try_for_each(|l| husk_oci::image::layer::apply_copy(l, &to))
                    })
                    .await
                    .map_err(|e| internal("copying the image", e))
                    .and_then(|r| r.map_err(|e| internal("copying the image's layers", e)));
                    let copied = match *cancelled.borrow() {
                        true => Err(killed()),
                        false => copied.map_err(rejected),
                    };
                    if let Err(e) = copied {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                    staged = Some(dir);
                }
                Some(p)
            }
            None => None,
        };
        let parent = match &req.container_id.parent {
            Some(_) => Some(self.parent_of(&req).await.map_err(rejected)?),
            None => None,
        };
        let accepted = self.accept(req, provisioned.as_ref(), staged.as_deref(), parent);
        // Recorded with its image (or refused): removal and pruning may go on.
        drop(gc);
        if let Some(dir) = staged.filter(|d| d.exists()) {
            let _ = std::fs::remove_dir_all(dir);
        }
        // The container is in the table (or refused): a Kill finds it there from now on. One
        // that came after the last look at the flag cancels the launch as soon as it starts, as
        // a Kill that found the container would.
        let killed = reservation.map(Reservation::release).unwrap_or(false);
        if let (Ok((c, _)), true) = (&accepted, killed) {
            if let Err(e) = c.set_killed() {
                tracing::error!(container = %c.id, "checkpointing the kill: {e}");
            }
            c.cancel.send_replace(true);
        }
        let (c, t) = accepted.map_err(rejected)?;
        // The launch goes on in its own task: a caller that hangs up (a client deadline, a
        // Ctrl-C) must not abandon a container half made.
        let agent = self.clone();
        tokio::spawn(async move { agent.bring_up_or_destroy(c, t, started).await })
            .await
            .map_err(|e| internal("the launch task", e))?
    }

    async fn bring_up_or_destroy(
        self: Arc<Self>,
        c: Arc<Container>,
        t: husk_oci::Translation,
        started: std::time::Instant,
    ) -> Result<Arc<Container>, Status> {
        let _op = c.op.lock().await;
        self.event(&c, ContainerState::Unknown);
        let mut cancel = c.cancel.subscribe();
        let brought_up = tokio::select! {
            r = self.bring_up(&c, t) => r,
            _ = cancel.wait_for(|k| *k) => Err(CANCELLED.to_string()),
        };
        if brought_up.as_ref().is_err_and(|e| e == CANCELLED) {
            let during = c.state();
            self.metrics.launches.get_or_create(&metrics::label("result", "killed")).inc();
            self.transition(&c, ContainerState::Destroying).ok();
            self.cleanup_shim(&c).await;
            let message = format!("Killed on request while {}, before the command started", during.as_str_name());
            self.finish(
                &c,
                ContainerTermination {
                    state: Some(TaskState::TaskKilled as i32),
                    message: Some(message.clone()),
                    ..Default::default()
                },
            );
            return Err(Status::aborted(format!("launch cancelled: {message}")));
        }
        match brought_up {
            Ok(()) => {
                self.metrics.launches.get_or_create(&metrics::label("result", "running")).inc();
                self.metrics.launch_seconds.observe(started.elapsed().as_secs_f64());
                Ok(c.clone())
            }
            Err(message) => {
                self.metrics.launches.get_or_create(&metrics::label("result", "failed")).inc();
                tracing::warn!(container = %c.id, "launch failed: {message}");
                self.cleanup_shim(&c).await;
                self.finish(
                    &c,
                    termination_with(TaskState::TaskFailed, Reason::ContainerLaunchFailed, message.clone()),
                );
                Err(Status::failed_precondition(format!("launch failed: {message}")))
            }
        }
    }

    /// What a nested container needs of its parent, which must be running.
    async fn parent_of(&self, req: &LaunchRequest) -> Result<Parent, Status> {
        husk_oci::validate::container_id(&req.container_id, "container_id").map_err(status_of)?;
        let parent_id = req.container_id.parent.as_deref().map(husk_oci::validate::display_id).unwrap_or_default();
        let p = self
            .containers
            .lock()
            .unwrap()
            .get(&parent_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container_id.parent: no container `{parent_id}`")))?;
        if p.state() != ContainerState::Running || p.terminated().is_some() {
            return Err(Status::failed_precondition(format!(
                "container_id.parent: `{parent_id}` is {}, not RUNNING",
                p.state().as_str_name()
            )));
        }
        let mut client = shim_client(&p).await?;
        let init = within_deadline(&p, client.state(shim_pb::StateRequest {})).await?.pid;
        let spec = husk_oci::bundle::read_spec(&p.bundle())
            .map_err(|e| internal(&format!("container_id.parent: `{parent_id}`'s bundle"), e))?;
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .ok_or_else(|| Status::internal(format!("container_id.parent: `{parent_id}` has no cgroup")))?;
        let proc = PathBuf::from(format!("/proc/{init}"));
        let rootfs = p.dir.join(rootfs::MOUNT_POINT);
        Ok(Parent {
            id: parent_id,
            context: husk_oci::ParentContext {
                sandbox_dir: p.sandbox(),
                net_ns: proc.join("ns/net"),
                uts_ns: proc.join("ns/uts"),
                pid_ns: proc.join("ns/pid"),
                ipc_ns: proc.join("ns/ipc"),
                cgroups_path: cgroups_path.display().to_string(),
                privileged: p.launch.security.as_ref().is_some_and(|s| s.privileged()),
            },
            rootfs: rootfs.is_dir().then_some(rootfs),
        })
    }

    /// The live nested containers directly under `id`.
    fn children_of(&self, id: &str) -> Vec<Arc<Container>> {
        let map = self.containers.lock().unwrap();
        map.values().filter(|c| c.parent().as_deref() == Some(id) && c.terminated().is_none()).cloned().collect()
    }

    /// Kills every nested container under `id` (theirs first) and waits until each has been
    /// destroyed, within a bound: a parent's destroy never hangs on a child.
    fn destroy_children<'a>(
        self: &'a Arc<Self>,
        id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            // Launches may still add children until the parent's state says otherwise: look
            // again until none is left.
            for _ in 0..10 {
                let children = self.children_of(id);
                if children.is_empty() {
                    return;
                }
                for child in children {
                    tracing::info!(container = %child.id, parent = %id, "destroying a nested container with its parent");
                    if let Err(e) = self.kill(&child.id, Some(libc::SIGKILL), None).await {
                        tracing::debug!(container = %child.id, "kill: {}", e.message());
                    }
                    let mut done = child.termination.subscribe();
                    if tokio::time::timeout(SHIM_DEADLINE, done.wait_for(|t| t.is_some())).await.is_err() {
                        tracing::error!(container = %child.id, "the nested container was not destroyed in time");
                    }
                }
            }
        })
    }

    /// Takes `id` for a launch that provisions its image before its container exists.
    fn reserve(&self, id: &str) -> Result<Reservation<'_>, Status> {
        let in_use = || Status::already_exists(format!("container_id: `{id}` is already in use"));
        let mut provisioning = self.provisioning.lock().unwrap();
        if provisioning.contains_key(id) || self.containers.lock().unwrap().contains_key(id) {
            return Err(in_use());
        }
        let (tx, cancelled) = tokio::sync::watch::channel(false);
        provisioning.insert(id.to_string(), tx);
        Ok(Reservation { agent: self, id: id.to_string(), cancelled, released: false })
    }

    /// Validates a launch, admits it against the node's resources and checkpoints it; nothing
    /// is left of a launch refused here.
    fn accept(
        &self,
        req: LaunchRequest,
        image: Option<&images::Provisioned>,
        staged: Option<&Path>,
        parent: Option<Parent>,
    ) -> Result<(Arc<Container>, husk_oci::Translation), Status> {
        husk_oci::validate::container_id(&req.container_id, "container_id").map_err(status_of)?;
        if req.container_id.parent.is_some() && parent.is_none() {
            return Err(Status::internal("container_id.parent: the parent's context is missing"));
        }
        if let Some(runtime) = req.runtime.as_deref().filter(|r| !r.is_empty()) {
            if !RUNTIMES.contains(&runtime) {
                return Err(Status::invalid_argument(format!(
                    "runtime: `{}` is not one of {}",
                    runtime.escape_debug(),
                    RUNTIMES.join(", ")
                )));
            }
        }
        if let Some(log) = req.cri_log_path.as_deref().filter(|p| !p.is_empty()) {
            check_log_path(log)?;
        }
        let lower = match req.rootfs.as_deref() {
            None => None,
            Some(_) if req.container.as_ref().and_then(|c| c.mesos.as_ref()).is_some_and(|m| m.image.is_some()) => {
                return Err(Status::invalid_argument(
                    "rootfs: set either `rootfs` or `container.mesos.image`, not both",
                ))
            }
            Some(_) if req.container_id.value.contains([',', ':', '\\']) => {
                return Err(Status::invalid_argument(format!(
                    "container_id: `{}`: a container with a rootfs cannot have `,`, `:` or `\\` in its id \
                     (its overlay's layer paths hold it)",
                    req.container_id.value.escape_debug()
                )))
            }
            Some(r) => Some(rootfs::check(r, &self.settings.work_dir)?),
        };
        if image.is_some() && req.container_id.value.contains([',', ':', '\\']) {
            return Err(Status::invalid_argument(format!(
                "container_id: `{}`: a container with an image cannot have `,`, `:` or `\\` in its id \
                 (its overlay's layer paths hold it)",
                req.container_id.value.escape_debug()
            )));
        }
        // The layers, top first, as the overlay stacks them.
        let image_lowers = match image.filter(|_| staged.is_none()) {
            Some(p) => Some(
                p.layers
                    .iter()
                    .rev()
                    .map(|l| rootfs::Lower::layer(l))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| internal("opening the image's layers", e))?,
            ),
            None => None,
        };
        // What the translation sees: the launch with the image's config applied.
        let (effective, image_env) = match image {
            Some(p) => with_image(&req, p)?,
            None => (std::borrow::Cow::Borrowed(&req), Vec::new()),
        };
        let id = husk_oci::validate::display_id(&req.container_id);
        let dir = self.settings.work_dir.join("containers").join(&id);
        // A nested container's sandbox is in its own directory, not in its parent's sandbox
        // (Mesos' layout): the parent writes there, so every later use of such a path (chown,
        // the bind mount, the log files, its removal) could be sent through a link of its
        // making to anywhere on the node.
        let sandbox = dir.join("sandbox");
        let shim_dir = self.settings.runtime_dir.join("shims").join(&id);
        // Read before the table's lock: it reads the configuration directory.
        let network = self.attachment_of(&effective, &id)?;
        let accepted = {
            // Another launch of this id may be provisioning its image (this one's own
            // reservation, if it has one, is the image it was given). Held until the container
            // is in the table, so no reservation slips in between (the order `reserve` takes).
            let provisioning = self.provisioning.lock().unwrap();
            if image.is_none() && provisioning.contains_key(&id) {
                return Err(Status::already_exists(format!("container_id: `{id}` is already in use")));
            }
            let mut map = self.containers.lock().unwrap();
            if map.contains_key(&id) || dir.exists() {
                return Err(Status::already_exists(format!("container_id: `{id}` is already in use")));
            }
            // Checked under the table's lock, so two launches cannot both take a port.
            if network.is_some() {
                host_ports_free(&map, &effective)?;
            }
            // And so two launches cannot both claim one cgroup.
            cgroup_free(&map, &effective, &self.settings.translation.cgroup_root)?;
            // Checked under the table's lock: a parent being destroyed has its children
            // collected under it too, so none slips in after that.
            if let Some(p) = &parent {
                let alive = map.get(&p.id).is_some_and(|pc| pc.state() == ContainerState::Running);
                if !alive {
                    return Err(Status::failed_precondition(format!(
                        "container_id.parent: `{}` is no longer running",
                        p.id
                    )));
                }
            }
            // Translate once, against the real sandbox (the spec names it); a rejected request
            // takes the directory away again, so it leaves nothing.
            let placed = std::fs::create_dir_all(&sandbox).map_err(|e| internal("creating the sandbox", e)).and_then(
                |_| match (&lower, &image_lowers, staged) {
                    (Some(lower), _, _) => {
                        rootfs::mount(&dir, std::slice::from_ref(lower)).map(Some).map_err(|e| internal("rootfs", e))
                    }
                    (None, Some(lowers), _) => rootfs::mount(&dir, lowers).map(Some).map_err(|e| internal("rootfs", e)),
                    (None, None, Some(copy)) => {
                        let to = dir.join(rootfs::MOUNT_POINT);
                        std::fs::rename(copy, &to).map(|_| Some(to)).map_err(|e| internal("rootfs", e))
                    }
                    // A nested container without a root of its own runs on its parent's.
                    (None, None, None) => Ok(parent.as_ref().and_then(|p| p.rootfs.clone())),
                },
            );
            let checked = placed.and_then(|root| {
                let place = husk_oci::Placement {
                    sandbox_dir: sandbox.clone(),
                    rootfs: root,
                    agent_environment: image_env,
                    parent: parent.as_ref().map(|p| p.context.clone()),
                    network_ns: parent.is_none().then(|| self.netns_path(&id)),
                };
                let t = husk_oci::translate(&effective, &self.settings.translation, &place).map_err(status_of)?;
                // A working directory the root filesystem lacks is made in the container's
                // own layer, never through a link the image holds.
                let wd = effective.working_dir.as_deref().filter(|w| !w.is_empty());
                if let (Some(root), Some(wd)) = (&place.rootfs, wd) {
                    husk_oci::fs::mkdir_in_root(root, Path::new(wd.trim_start_matches('/')), 0o755).map_err(|e| {
                        Status::failed_precondition(format!("working_dir: `{}`: {e}", wd.escape_debug()))
                    })?;
                }
                Ok(t)
            });
            // A nested container runs on its parent's resources (as in Mesos).
            let admitted = checked.and_then(|t| match self.settings.oversubscribe || parent.is_some() {
                true => Ok(t),
                false => self.admit(&map, &t.requests).map(|_| t),
            });
            let composed = admitted.and_then(|mut t| {
                t.spec = isolators::compose(&self.isolators, &t.spec).map_err(Status::invalid_argument)?;
                Ok(t)
            });
            let t = match composed {
                Ok(t) => t,
                Err(e) => {
                    let _ = sweep::remove_tree(&dir);
                    return Err(e);
                }
            };
            let checkpoint = Checkpoint {
                state: ContainerState::Provisioning as i32,
                killed: false,
                created_ns: now_ns(),
                mem_limit_mb: t.limits.mem_mb.filter(|m| m.is_finite()).or(t.requests.mem_mb).map(|m| m.max(32.0)),
                termination: None,
                terminated_ns: None,
                collected_ns: None,
                image: image.map(|p| p.digest.clone()),
            };
            let json = serde_json::to_vec(&req).map_err(|e| internal("encoding the launch", e))?;
            // The network's record goes first: a launch checkpoint never lacks it.
            let saved = match &network {
                Some(a) => a.save(&dir),
                None => Ok(()),
            };
            let saved = saved
                .and_then(|_| husk_oci::checkpoint::write_atomic(&dir.join(LAUNCH_FILE), &json, 0o600))
                .and_then(|_| {
                    husk_oci::failpoint::hit("agent.launch.half-checkpointed");
                    container::save(&dir, &checkpoint)
                });
            if let Err(e) = saved {
                let _ = sweep::remove_tree(&dir);
                return Err(internal("checkpointing the launch", e));
            }
            let c = Arc::new(Container::new(&id, dir, shim_dir, req, checkpoint));
            map.insert(id.clone(), c.clone());
            (c, t)
        };
        Ok(accepted)
    }

    async fn bring_up(self: &Arc<Self>, c: &Arc<Container>, t: husk_oci::Translation) -> Result<(), String> {
        husk_oci::failpoint::hit("agent.launch.accepted");
        self.transition(c, ContainerState::Preparing).map_err(|e| e.message().to_string())?;
        for w in &t.warnings {
            tracing::warn!(container = %c.id, "{w}");
        }
        // The sandbox belongs to the container's user, as in Mesos.
        let owner = fetcher::Owner {
            uid: t.user.uid,
            gid: t.user.gid,
            name: c.launch.command.as_ref().and_then(|c| c.user.clone()).unwrap_or_else(|| "root".into()),
        };
        // Disk writes (and their fsyncs) off the async workers: a slow disk stalls this launch,
        // not the requests that happen to be queued on the same worker.
        tokio::task::block_in_place(|| {
            t.write_bundle(&c.bundle()).map_err(|e| e.to_string())?;
            husk_oci::failpoint::hit("agent.launch.bundle-written");
            nix::unistd::chown(&c.sandbox(), Some(owner.uid.into()), Some(owner.gid.into()))
                .map_err(|e| format!("giving the sandbox to uid {}: {e}", owner.uid))
        })?;

        self.transition(c, ContainerState::Isolating).map_err(|e| e.message().to_string())?;
        self.network_up(c).await?;
        let runtime = self.runtime_of(c);
        let mut cmd = self.shim_command("start", c);
        cmd.arg("--shim-cgroup")
            .arg(format!("/{}/{SHIM_CGROUP}", self.settings.translation.cgroup_root.trim_matches('/')));
        if self.settings.init && runtime == "husk" {
            cmd.arg("--init");
        }
        if c.launch.stdin() {
            cmd.arg("--stdin");
        }
        if let Some(log) = c.launch.cri_log_path.as_deref().filter(|p| !p.is_empty()) {
            cmd.arg("--cri-log").arg(log);
        }
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(SHIM_DEADLINE, cmd.output())
            .await
            .map_err(|_| "the shim did not start within a minute".to_string())?
            .map_err(|e| format!("running {}: {e}", self.settings.shim_binary.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(err.trim().trim_start_matches("husk-shim: ").to_string());
        }
        husk_oci::failpoint::hit("agent.launch.shim-started");
        self.transition(c, ContainerState::Fetching).map_err(|e| e.message().to_string())?;
        let uris = c.launch.command.as_ref().map(|c| c.uris.as_slice()).unwrap_or_default();
        if !uris.is_empty() {
            self.fetcher.fetch_all(uris, &c.sandbox(), &c.dir.join("fetch-tmp"), &owner).await?;
        }
        let mut client =
            husk_shim::shim::connect(&c.socket()).await.map_err(|e| format!("connecting to the shim: {e}"))?;
        tokio::time::timeout(SHIM_DEADLINE, client.start(shim_pb::StartRequest {}))
            .await
            .map_err(|_| "the container did not start within a minute".to_string())?
            .map_err(|e| match e.code() {
                tonic::Code::FailedPrecondition | tonic::Code::DeadlineExceeded => e.message().to_string(),
                _ => format!(
                    "the shim did not answer Start ({}); see {}",
                    e.message(),
                    c.shim_dir.join(husk_shim::shim::LOG_FILE).display()
                ),
            })?;
        self.transition(c, ContainerState::Running).map_err(|e| e.message().to_string())?;
        husk_oci::failpoint::hit("agent.launch.running");
        tokio::spawn(self.clone().follow(c.clone()));
        Ok(())
    }

    /// Follows a running container to its end: the shim's Wait, then its Delete and Shutdown.
    async fn follow(self: Arc<Self>, c: Arc<Container>) {
        let exit = match husk_shim::shim::connect(&c.socket()).await {
            Ok(mut client) => match client.wait(shim_pb::WaitRequest {}).await {
                Ok(exit) => {
                    let exit = exit.into_inner();
                    husk_oci::failpoint::hit("agent.destroy.exit-reported");
                    let _ = tokio::time::timeout(SHIM_DEADLINE, client.delete(shim_pb::DeleteRequest {})).await;
                    let _ = tokio::time::timeout(SHIM_DEADLINE, client.shutdown(shim_pb::ShutdownRequest {})).await;
                    Some(ExitRecord {
                        wait_status: exit.wait_status,
                        exit_code: exit.exit_code,
                        signal: exit.signal,
                        oom_killed: exit.oom_killed,
                        started_at_ns: exit.started_at_ns,
                        finished_at_ns: exit.finished_at_ns,
                    })
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        let _op = c.op.lock().await;
        if c.terminated().is_some() {
            return;
        }
        self.transition(&c, ContainerState::Destroying).ok();
        self.destroy_children(&c.id).await;
        // The shim went away without answering: what it recorded on disk, if anything.
        let exit = exit.or_else(|| ExitRecord::load(&c.shim_dir).ok().flatten());
        self.cleanup_shim(&c).await;
        husk_oci::failpoint::hit("agent.destroy.cleaned-up");
        let (killed, mem) = {
            let cp = c.checkpoint.lock().unwrap();
            (cp.killed, cp.mem_limit_mb)
        };
        if exit.as_ref().is_some_and(|e| e.oom_killed) {
            self.metrics.oom_kills.inc();
        }
        let t = match exit {
            Some(exit) => termination_of(&exit, killed, mem),
            None => termination_with(
                TaskState::TaskFailed,
                Reason::ExecutorTerminated,
                "the container's shim exited without recording an exit status; the container was destroyed".into(),
            ),
        };
        self.finish(&c, t);
        husk_oci::failpoint::hit("agent.destroy.terminated");
    }

    /// The CNI network a container is on (a nested container: its top-level ancestor's), with
    /// the addresses ADD gave it. Empty on the host network and before ADD succeeded.
    pub fn network_infos(&self, c: &Container) -> Vec<husk_proto::mesos::v1::NetworkInfo> {
        use husk_proto::mesos::v1::{network_info, NetworkInfo};
        let root = c.id.split('.').next().unwrap_or(&c.id);
        let dir = self.settings.work_dir.join("containers").join(root);
        let Ok(Some(a)) = cni::Attachment::load(&dir) else { return Vec::new() };
        if a.result.is_none() {
            return Vec::new();
        }
        let ip_addresses = a
            .ips()
            .into_iter()
            .map(|ip| network_info::IpAddress {
                protocol: Some(match ip.contains(':') {
                    true => network_info::Protocol::IPv6 as i32,
                    false => network_info::Protocol::IPv4 as i32,
                }),
                ip_address: Some(ip),
            })
            .collect();
        let port_mappings = a
            .port_mappings
            .iter()
            .map(|p| network_info::PortMapping {
                host_port: p.host_port.into(),
                container_port: p.container_port.into(),
                protocol: Some(p.protocol.clone()),
            })
            .collect();
        vec![NetworkInfo { name: Some(a.network.name), ip_addresses, port_mappings, ..Default::default() }]
    }

    /// Where a top-level container's network namespace is pinned when it is on a CNI network.
    fn netns_path(&self, id: &str) -> PathBuf {
        self.settings.runtime_dir.join("netns").join(id)
    }

    /// The CNI network a top-level launch names (one at most), as the attachment to make.
    fn attachment_of(&self, req: &LaunchRequest, id: &str) -> Result<Option<cni::Attachment>, Status> {
        if req.container_id.parent.is_some() {
            return Ok(None);
        }
        let infos = req.container.as_ref().map(|c| c.network_infos.as_slice()).unwrap_or_default();
        let mut named = infos.iter().enumerate().filter(|(_, n)| n.name.is_some());
        let Some((i, info)) = named.next() else { return Ok(None) };
        if let Some((j, _)) = named.next() {
            return Err(Status::unimplemented(format!(
                "container.network_infos[{j}]: a container joins one CNI network (network_infos[{i}] names one already)"
            )));
        }
        let at = format!("container.network_infos[{i}]");
        let network = self.settings.cni.network(info.name.as_deref().unwrap_or_default(), &format!("{at}.name"))?;
        let mut port_mappings = Vec::new();
        for (k, p) in info.port_mappings.iter().enumerate() {
            let field = format!("{at}.port_mappings[{k}]");
            let port = |v: u32, what: &str| {
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Status::invalid_argument(format!("{field}.{what}: {v} is not a port (1-65535)")))
            };
            let protocol = p.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            if !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "{field}.protocol: `{}` is not tcp, udp or sctp",
                    protocol.escape_debug()
                )));
            }
            let host_port = port(p.host_port, "host_port")?;
            if let Some(j) =
                port_mappings.iter().position(|m: &cni::PortMapping| m.host_port == host_port && m.protocol == protocol)
            {
                return Err(Status::invalid_argument(format!(
                    "{field}.host_port: {host_port}/{protocol} is published by port_mappings[{j}] already"
                )));
            }
            port_mappings.push(cni::PortMapping {
                host_port,
                container_port: port(p.container_port, "container_port")?,
                protocol,
                host_ip: String::new(),
            });
        }
        // The network's labels are the plugins' CNI_ARGS (`K8S_POD_NAME`, ...).
        let mut args = vec!["IgnoreUnknown=1".to_string()];
        for l in info.labels.iter().flat_map(|l| &l.labels) {
            let value = l.value.as_deref().unwrap_or_default();
            let bad = |t: &str| t.is_empty() || t.contains([';', '=', '\0']);
            if bad(&l.key) || value.contains([';', '=', '\0']) || l.key.eq_ignore_ascii_case("IgnoreUnknown") {
                return Err(Status::invalid_argument(format!(
                    "{at}.labels: `{}`: CNI arguments need a key (not IgnoreUnknown) and a value without `;` or `=`",
                    l.key.escape_debug()
                )));
            }
            args.push(format!("{}={value}", l.key));
        }
        Ok(Some(cni::Attachment {
            network,
            container_id: id.to_string(),
            netns: self.netns_path(id),
            port_mappings,
            args: args.join(";"),
            result: None,
        }))
    }

    /// Pins the container's network namespace and runs the network's CNI ADD; the result is
    /// checkpointed. On failure the destroy path undoes whatever part was done.
    async fn network_up(&self, c: &Container) -> Result<(), String> {
        let Some(mut a) = cni::Attachment::load(&c.dir).map_err(|e| format!("reading the network record: {e}"))? else {
            return Ok(());
        };
        let pin = a.netns.clone();
        tokio::task::block_in_place(|| cni::pin_new_netns(&pin))
            .map_err(|e| format!("making the network namespace {}: {e}", pin.display()))?;
        let result = self.settings.cni.add(&a).await.map_err(|e| format!("network `{}`: {e}", a.network.name))?;
        a.result = Some(result);
        tokio::task::block_in_place(|| a.save(&c.dir)).map_err(|e| format!("checkpointing the network: {e}"))?;
        tracing::info!(container = %c.id, network = %a.network.name, ips = ?a.ips(), "network attached");
        Ok(())
    }

    /// CNI DEL (also for an ADD cut short, and after a reboot with the namespace gone), then the
    /// namespace's pin. The record stays when DEL fails, so Remove tries again.
    async fn network_down(&self, c: &Container) -> Result<(), String> {
        let down = async {
            let Some(a) = cni::Attachment::load(&c.dir).map_err(|e| format!("reading the network record: {e}"))? else {
                return Ok(());
            };
            self.settings.cni.del(&a).await.map_err(|e| format!("network `{}`: {e}", a.network.name))?;
            tokio::task::block_in_place(|| {
                cni::unpin_netns(&a.netns).map_err(|e| format!("unpinning {}: {e}", a.netns.display()))?;
                std::fs::remove_file(c.dir.join(cni::STATE_FILE))
                    .map_err(|e| format!("removing the network record: {e}"))
            })
        };
        let r: Result<(), String> = down.await;
        if let Err(e) = &r {
            self.metrics.destroy_errors.inc();
            tracing::error!(container = %c.id, "network teardown: {e}");
        }
        r
    }

    /// The runtime a container is run with: its launch's, else the agent's default.
    fn runtime_of(&self, c: &Container) -> String {
        c.launch.runtime.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| self.settings.runtime.clone())
    }

    /// `husk-shim <verb>` for container `c`.
    fn shim_command(&self, verb: &str, c: &Container) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.settings.shim_binary);
        cmd.arg(verb)
            .args(["--id", &c.id, "--runtime", &self.runtime_of(c), "--bundle"])
            .arg(c.bundle())
            .arg("--sandbox")
            .arg(c.sandbox())
            .arg("--state-dir")
            .arg(&c.shim_dir)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// The destroy path, whatever state the shim is in: the shim's cleanup, then every
    /// isolator's cleanup in reverse order.
    async fn cleanup_shim(&self, c: &Container) {
        let stopped = self.stop_shim(c).await;
        // A failure is logged and counted; Remove tries again and reports it.
        let _ = self.network_down(c).await;
        let cgroups_path = husk_oci::bundle::read_spec(&c.bundle())
            .ok()
            .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()));
        let placed = isolators::Placed { id: &c.id, dir: &c.dir, cgroups_path };
        if let Err(e) = tokio::task::block_in_place(|| isolators::cleanup(&self.isolators, &placed)) {
            self.metrics.destroy_errors.inc();
            tracing::error!(container = %c.id, "isolator cleanup: {e}");
        }
        // The root filesystem goes with the container's processes (the sandbox stays); while
        // they may still be alive it stays too, and goes with the container's directory.
        if !stopped {
            tracing::warn!(container = %c.id, "the shim's cleanup failed: its root filesystem is kept until Remove");
        } else if let Err(e) = tokio::task::block_in_place(|| rootfs::remove(&c.dir)) {
            self.metrics.destroy_errors.inc();
            tracing::error!(container = %c.id, "removing the root filesystem: {e}");
        }
    }

    /// What `husk-shim cleanup` does, run here (an exec of the shim binary less on every
    /// destroy): kills what is left of the container and its shim, deletes it from its
    /// runtime, removes its cgroup. Whether the container's processes are known to be gone.
    async fn stop_shim(&self, c: &Container) -> bool {
        if !c.shim_dir.exists() {
            return true;
        }
        let opts = husk_shim::shim::Options {
            id: c.id.clone(),
            bundle: c.bundle(),
            sandbox: c.sandbox(),
            state_dir: c.shim_dir.clone(),
            backend: husk_shim::shim::Backend::named(&self.runtime_of(c), c.shim_dir.join("runtime"), &c.shim_dir),
            init: false,
            stdin: false,
            shim_cgroup: None,
            cri_log: None,
        };
        let task = tokio::task::spawn_blocking(move || husk_shim::shim::cleanup(&opts));
        match tokio::time::timeout(SHIM_DEADLINE, task).await {
            Ok(Ok(Ok(()))) => return true,
            Ok(Ok(Err(e))) => tracing::error!(container = %c.id, "shim cleanup: {e}"),
            Ok(Err(e)) => tracing::error!(container = %c.id, "shim cleanup: {e}"),
            Err(_) => tracing::error!(container = %c.id, "shim cleanup did not finish within a minute"),
        }
        self.metrics.destroy_errors.inc();
        false
    }

    /// Signals the container (default SIGKILL); with a grace period, SIGTERM first (or the given
    /// signal), then SIGKILL to every process once it has passed.
    pub async fn kill(self: &Arc<Self>, id: &str, signal: Option<i32>, grace: Option<Duration>) -> Result<(), Status> {
        // A launch still provisioning its image is first (it leaves that table only once its
        // container is in the other).
        if let Some(cancel) = self.provisioning.lock().unwrap().get(id) {
            cancel.send_replace(true);
            return Ok(());
        }
        let c = self.get(id)?;
        let launching = matches!(
            c.state(),
            ContainerState::Provisioning
                | ContainerState::Preparing
                | ContainerState::Isolating
                | ContainerState::Fetching
        );
        let cancelling = launching && c.terminated().is_none();
        if cancelling {
            // The launch holds the container's lock until it is done: cancel it; it destroys
            // what it made and records TASK_KILLED. Should it have finished first, the
            // container runs by the time the lock is ours, and is killed below.
            if let Err(e) = c.set_killed() {
                tracing::error!(container = %c.id, "checkpointing the kill (cancelling the launch anyway): {e}");
            }
            c.cancel.send_replace(true);
        }
        let _op = c.op.lock().await;
        if c.terminated().is_some() {
            if cancelling {
                return Ok(());
            }
            return Err(Status::failed_precondition(format!("container_id: `{id}` has already terminated")));
        }
        if c.state() != ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container_id: `{id}` is {}, not running",
                c.state().as_str_name()
            )));
        }
        let first = signal.unwrap_or(if grace.is_some() { libc::SIGTERM } else { libc::SIGKILL });
        if nix::sys::signal::Signal::try_from(first).is_err() {
            return Err(Status::invalid_argument(format!("signal: {first} is not a signal")));
        }
        // A kill is never refused for want of disk space (it is what frees it): without its
        // checkpoint, a restart reports the container's end as a signal, not as a kill.
        if let Err(e) = c.set_killed() {
            self.metrics.destroy_errors.inc();
            tracing::error!(container = %c.id, "checkpointing the kill (killing it anyway): {e}");
        }
        husk_oci::failpoint::hit("agent.kill.checkpointed");
        // Nested containers go first, as Mesos destroys them.
        let _op = if self.children_of(id).is_empty() {
            _op
        } else {
            drop(_op);
            self.destroy_children(id).await;
            let op = c.op.lock().await;
            if c.terminated().is_some() {
                return Ok(());
            }
            op
        };
        let mut client = shim_client(&c).await?;
        within_deadline(&c, client.kill(shim_pb::KillRequest { signal: first as u32, all: false })).await.map_err(
            |e| match e.code() {
                tonic::Code::DeadlineExceeded => e,
                _ => Status::failed_precondition(e.message().to_string()),
            },
        )?;
        if let Some(grace) = grace {
            let mut rx = c.termination.subscribe();
            tokio::spawn(async move {
                if tokio::time::timeout(grace, rx.wait_for(|t| t.is_some())).await.is_err() {
                    let _ = client.kill(shim_pb::KillRequest { signal: libc::SIGKILL as u32, all: true }).await;
                }
            });
        }
        Ok(())
    }

    /// Asks a running container's shim to reopen its CRI log file (after a rotation).
    pub async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let c = self.get(id)?;
        if c.terminated().is_some() {
            return Err(Status::failed_precondition(format!("container_id: `{id}` has terminated")));
        }
        let mut client = shim_client(&c).await?;
        within_deadline(&c, client.reopen_log(shim_pb::ReopenLogRequest {})).await?;
        Ok(())
    }

    /// Tries once more the network teardown (CNI DEL, the namespace's pin) of a terminated
    /// container whose teardown failed when it terminated; nothing to do when it succeeded.
    /// UNAVAILABLE while it fails: the caller retries (the kubelet retries StopPodSandbox).
    pub async fn release_network(&self, id: &str) -> Result<(), Status> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        if c.terminated().is_none() {
            return Err(Status::failed_precondition(format!(
                "container_id: `{id}` is {}; its network goes when it terminates",
                c.state().as_str_name()
            )));
        }
        self.network_down(&c).await.map_err(|e| {
            Status::unavailable(format!("container_id: `{id}`: its network could not be torn down ({e}); try again"))
        })
    }

    /// Removes a terminated container: its sandbox, bundle and checkpoints.
    pub async fn remove(&self, id: &str) -> Result<(), Status> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        // Another Remove (or the GC) may have removed it, and a new launch taken its id, while
        // this one waited for the lock.
        if !self.containers.lock().unwrap().get(id).is_some_and(|now| Arc::ptr_eq(now, &c)) {
            return Err(Status::not_found(format!("container_id: no container `{id}`")));
        }
        if c.terminated().is_none() {
            return Err(Status::failed_precondition(format!(
                "container_id: `{id}` is {}; only a terminated container can be removed",
                c.state().as_str_name()
            )));
        }
        // Its nested containers go with it (they terminated before it did).
        let descendants: Vec<Arc<Container>> = {
            let map = self.containers.lock().unwrap();
            let prefix = format!("{id}.");
            map.values().filter(|d| d.id.starts_with(&prefix)).cloned().collect()
        };
        if let Some(live) = descendants.iter().find(|d| d.terminated().is_none()) {
            return Err(Status::failed_precondition(format!(
                "container_id: `{id}` has a nested container `{}` that is {}",
                live.id,
                live.state().as_str_name()
            )));
        }
        // A DEL that failed when the container terminated is tried once more; while it fails
        // the container stays, with the record that lets a later Remove try again.
        if let Err(e) = self.network_down(&c).await {
            return Err(Status::unavailable(format!(
                "container_id: `{id}`: its network could not be torn down ({e}); the container is kept, remove it again"
            )));
        }
        // The shims' directories first, then the containers' (with their checkpoints).
        let family: Vec<&Arc<Container>> = descendants.iter().chain(std::iter::once(&c)).collect();
        let shim_dirs = family.iter().map(|d| d.shim_dir.clone()).collect::<Vec<_>>();
        let dirs = shim_dirs.iter().cloned().chain(family.iter().map(|d| d.dir.clone())).collect::<Vec<_>>();
        for d in &descendants {
            self.containers.lock().unwrap().remove(&d.id);
        }
        for dir in dirs.into_iter().filter(|d| d.exists()) {
            if !shim_dirs.contains(&dir) {
                husk_oci::failpoint::hit("agent.remove.partial");
            }
            let removed = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || sweep::remove_tree(&dir)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = removed {
                self.metrics.destroy_errors.inc();
                return Err(internal(&format!("removing {}", dir.display()), e));
            }
        }
        self.containers.lock().unwrap().remove(id);
        Ok(())
    }

    /// Finds every checkpointed container again: a live shim is followed anew, a dead one's
    /// recorded exit is reported, a container whose shim left nothing is destroyed and
    /// reported as such, and after a reboot everything is reported as lost to it. One bad
    /// checkpoint never stops the others.
    async fn recover(self: Arc<Self>) {
        self.recover_containers().await;
        // A namespace pinned for a container that has no record any more (a launch cut short
        // between the pin and its checkpoint cannot happen: the record is written first).
        let netns = self.settings.runtime_dir.join("netns");
        for e in std::fs::read_dir(&netns).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            // A container whose checkpoint could not be read keeps its pin (it may be running).
            let claimed = self.settings.work_dir.join("containers").join(&id).join(LAUNCH_FILE).exists();
            if !claimed && !self.containers.lock().unwrap().contains_key(&id) {
                tracing::warn!(container = %id, "unpinning the network namespace of a container without a record");
                if let Err(err) = cni::unpin_netns(&e.path()) {
                    tracing::error!(container = %id, "unpinning {}: {err}", e.path().display());
                }
            }
        }
    }

    async fn recover_containers(self: &Arc<Self>) {
        let previous_boot = std::fs::read_to_string(self.settings.work_dir.join("boot_id")).ok();
        let rebooted = previous_boot.is_some_and(|b| b.trim() != self.boot_id);
        let root = self.settings.work_dir.join("containers");
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            let dir = entry.path();
            match load(&dir) {
                // A checkpoint file is missing: the agent died between the two checkpoint
                // writes of a launch (or in the middle of a Remove). No client was told the
                // container exists (or it asked for it to go). Without its launch checkpoint,
                // the sweep below destroys what is left of it.
                Err(e)
                    if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
                {
                    self.recovered("incomplete");
                    tracing::warn!(container = %id, "a launch or removal was cut short: destroying what is left of it");
                    let launch_file = dir.join(LAUNCH_FILE);
                    if let Err(e) = std::fs::remove_file(&launch_file).or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    }) {
                        tracing::error!(container = %id, "removing {}: {e}", launch_file.display());
                    }
                }
                Err(e) => {
                    self.recovered("unreadable");
                    tracing::error!(container = %id, "skipping a checkpoint I cannot read: {e}")
                }
                Ok((launch, checkpoint)) => {
                    husk_oci::failpoint::hit("agent.recover.loaded");
                    let shim_dir = self.settings.runtime_dir.join("shims").join(&id);
                    let c = Arc::new(Container::new(&id, dir, shim_dir, launch, checkpoint));
                    self.containers.lock().unwrap().insert(id.clone(), c.clone());
                    if c.terminated().is_some() {
                        continue;
                    }
                    if rebooted {
                        self.recovered("rebooted");
                        self.cleanup_shim(&c).await;
                        self.finish(
                            &c,
                            termination_with(
                                TaskState::TaskGone,
                                Reason::AgentRestarted,
                                "the node rebooted; the container was lost".into(),
                            ),
                        );
                        continue;
                    }
                    let shim_alive = ProcessId::load(&c.shim_dir.join(SHIM_FILE)).is_some_and(|p| p.alive());
                    let connected = shim_alive && husk_shim::shim::connect(&c.socket()).await.is_ok();
                    if connected && c.state() == ContainerState::Running {
                        tracing::info!(container = %id, "re-attached to its shim");
                        self.recovered("reattached");
                        let session = c.launch.session();
                        let killed = c.checkpoint.lock().unwrap().killed;
                        tokio::spawn(self.clone().follow(c));
                        if session || killed {
                            // A session's client stream did not survive the restart: nor does
                            // it. A kill that was checkpointed may not have been sent: it is now.
                            tracing::info!(container = %id, session, killed, "killing a container the last agent was to kill");
                            let agent = self.clone();
                            tokio::spawn(async move { agent.kill(&id, Some(libc::SIGKILL), None).await });
                        }
                    } else if ExitRecord::load(&c.shim_dir).ok().flatten().is_some() {
                        // Exited while we were away: follow() reads exit.json and cleans up.
                        self.recovered("exited");
                        tokio::spawn(self.clone().follow(c));
                    } else {
                        self.recovered("destroyed");
                        self.cleanup_shim(&c).await;
                        let message = if c.state() == ContainerState::Running {
                            "the container's shim exited without recording an exit status; the container was destroyed"
                        } else {
                            "the agent stopped during the launch; the container was destroyed"
                        };
                        let reason = if c.state() == ContainerState::Running {
                            Reason::ExecutorTerminated
                        } else {
                            Reason::ContainerLaunchFailed
                        };
                        self.finish(&c, termination_with(TaskState::TaskFailed, reason, message.into()));
                    }
                }
            }
        }
    }
}

impl Agent {
    fn recovered(&self, outcome: &str) {
        self.metrics.recoveries.get_or_create(&metrics::label("outcome", outcome)).inc();
    }
}

/// Connects to a container's shim, within the shim deadline.
async fn shim_client(c: &Container) -> Result<shim_pb::shim_client::ShimClient<tonic::transport::Channel>, Status> {
    match tokio::time::timeout(SHIM_CALL_DEADLINE, husk_shim::shim::connect(&c.socket())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Status::unavailable(format!("container_id: `{}`: its shim: {e}", c.id))),
        Err(_) => Err(unanswered(c)),
    }
}

/// One call to a container's shim: a shim that does not answer within the deadline is reported
/// (DeadlineExceeded), never waited on.
async fn within_deadline<T>(
    c: &Container,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(SHIM_CALL_DEADLINE, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(unanswered(c)),
    }
}

fn unanswered(c: &Container) -> Status {
    tracing::error!(container = %c.id, "the shim did not answer within {SHIM_CALL_DEADLINE:?}");
    Status::deadline_exceeded(format!(
        "container_id: `{}`: its shim did not answer within {SHIM_CALL_DEADLINE:?} (see `husk-shim` in the agent's log)",
        c.id
    ))
}

fn load(dir: &Path) -> anyhow::Result<(LaunchRequest, Checkpoint)> {
    let launch: LaunchRequest = serde_json::from_slice(&std::fs::read(dir.join(LAUNCH_FILE))?)?;
    let checkpoint: Checkpoint = serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE))?)?;
    Ok((launch, checkpoint))
}

/// The host ports a container publishes: (field, port, protocol), as its launch asks for them.
fn host_ports(launch: &LaunchRequest) -> Vec<(String, u32, String)> {
    let infos = launch.container.as_ref().map(|c| c.network_infos.as_slice()).unwrap_or_default();
    let named = infos.iter().enumerate().filter(|(_, n)| n.name.is_some());
    named
        .flat_map(|(i, n)| n.port_mappings.iter().enumerate().map(move |(k, p)| (i, k, p)))
        .map(|(i, k, p)| {
            let protocol = p.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            (format!("container.network_infos[{i}].port_mappings[{k}]"), p.host_port, protocol)
        })
        .collect()
}

/// The cgroup a launch with a `cgroup_parent` would get, `<parent>/<id>`, must be new and its
/// own: not a cgroup that exists (the kubelet's, the system's; destroying the container would
/// kill what is in it and remove it), and not holding or held by another container's placed
/// cgroup (destroying one would kill the other). Containers under the agent's root cannot
/// meet: a `cgroup_parent` is never inside it.
fn cgroup_free(map: &HashMap<String, Arc<Container>>, launch: &LaunchRequest, root: &str) -> Result<(), Status> {
    let root = format!("/{}", root.trim_matches('/'));
    let placed = |l: &LaunchRequest| -> Option<husk_oci::Result<String>> {
        let parent = l.cgroup_parent.as_deref().filter(|p| !p.is_empty() && l.container_id.parent.is_none())?;
        Some(husk_oci::translate::placed_cgroup(parent, &l.container_id.value, &root))
    };
    let Some(wanted) = placed(launch) else { return Ok(()) };
    let wanted = wanted.map_err(status_of)?;
    let within = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    for c in map.values() {
        if let Some(Ok(held)) = placed(&c.launch) {
            if within(&wanted, &held) || within(&held, &wanted) {
                return Err(Status::failed_precondition(format!(
                    "cgroup_parent: the container's cgroup `{wanted}` would overlap container `{}`'s, `{held}`",
                    c.id
                )));
            }
        }
    }
    if let Ok(cg) =
        husk_shim::cgroups::Layout::detect().and_then(|l| husk_shim::cgroups::Cgroup::new(l, Path::new(&wanted)))
    {
        if let Some(dir) = cg.dirs().into_iter().find(|d| d.exists()) {
            return Err(Status::failed_precondition(format!(
                "cgroup_parent: the container's cgroup `{wanted}` exists already ({}); a container's cgroup must be \
                 its own",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Refuses a host port another container publishes: portmap would install both, and the first
/// rule would win, silently. A container holds its ports until its network is torn down (a
/// failed DEL keeps them, with their rules).
fn host_ports_free(map: &HashMap<String, Arc<Container>>, launch: &LaunchRequest) -> Result<(), Status> {
    let wanted = host_ports(launch);
    if wanted.is_empty() {
        return Ok(());
    }
    for c in map.values().filter(|c| c.launch.container_id.parent.is_none()) {
        let held = host_ports(&c.launch);
        // The network's record is saved before a container enters the table and removed once
        // its network is torn down: exactly while its ports are taken.
        if held.is_empty() || !c.dir.join(cni::STATE_FILE).exists() {
            continue;
        }
        for (field, port, protocol) in &wanted {
            if held.iter().any(|(_, p, proto)| p == port && proto == protocol) {
                return Err(Status::failed_precondition(format!(
                    "{field}.host_port: {port}/{protocol} is published by container `{}` already",
                    c.id
                )));
            }
        }
    }
    Ok(())
}
