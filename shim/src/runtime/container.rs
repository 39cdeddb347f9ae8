//! The runtime's operations on a container: create, start, state, kill, delete, list.
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::init::{self, Msg};
use super::state::{process_start_time, OciState, State, Status, EXEC_FIFO};
use super::{hooks, seccomp, Error};
use crate::cgroups::{Cgroup, Layout, Resources};
use crate::sys::{fork, Fork};

/// How long `create` waits for the init to report, and `start` for the exec.
pub(super) const INIT_DEADLINE: Duration = Duration::from_secs(60);
/// How long killing and removing a container's cgroup may take.
const DESTROY_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    /// The runtime's state root (`--root`).
    pub root: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// Standard input, output and error of the container (default: the caller's).
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
    /// Run husk's init as the container's pid 1 (it forwards signals to the command and reaps
    /// orphans), writing the command's wait status to this descriptor when it exits.
    pub init_status: Option<std::os::fd::RawFd>,
    /// Where the master of the container's terminal goes (needed with `process.terminal`).
    pub console: Option<super::console::ConsoleSocket>,
}

/// Container ids, as runc accepts them: letters, digits and `_+-.`, not `.` or `..`.
fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if !ok {
        return Err(Error::Bundle(format!(
            "invalid container id `{}`: use 1-1024 letters, digits, `_`, `+`, `-` or `.`",
            id.escape_debug()
        )));
    }
    Ok(())
}

fn load_spec(bundle: &Path) -> Result<(Spec, PathBuf), Error> {
    let spec = husk_oci::bundle::read_spec(bundle).map_err(|e| Error::Bundle(e.to_string()))?;
    husk_oci::check::check_spec(&spec).map_err(|e| Error::Bundle(format!("config.json: {e}")))?;
    let mount_label = spec.linux().as_ref().and_then(|l| l.mount_label().as_deref());
    super::lsm::check(spec.process().as_ref().unwrap(), mount_label)
        .map_err(|e| Error::Bundle(format!("config.json: {e}")))?;
    let root = spec.root().as_ref().unwrap().path();
    let root = if root.is_absolute() { root.clone() } else { bundle.join(root) };
    let rootfs = root.canonicalize().map_err(|e| Error::Bundle(format!("root.path {}: {e}", root.display())))?;
    if !rootfs.is_dir() {
        return Err(Error::Bundle(format!("root.path {} is not a directory", rootfs.display())));
    }
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    if !namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Mount && n.path().is_none()) {
        return Err(Error::Bundle("linux.namespaces: husk needs a new mount namespace".into()));
    }
    for n in &namespaces {
        if matches!(n.typ(), LinuxNamespaceType::User | LinuxNamespaceType::Time) {
            return Err(Error::Bundle(format!("linux.namespaces: {:?} namespaces are not supported", n.typ())));
        }
        if let Some(p) = n.path() {
            if !p.exists() {
                return Err(Error::Bundle(format!(
                    "linux.namespaces: {:?} namespace {} does not exist",
                    n.typ(),
                    p.display()
                )));
            }
        }
    }
    Ok((spec, rootfs))
}

/// Undoes a partial create on drop unless disarmed: kills what was started, removes the cgroup
/// and the state directory.
struct Cleanup {
    dir: PathBuf,
    cgroup: Option<Cgroup>,
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(*pid), None);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill_all(DESTROY_DEADLINE);
            let _ = cg.remove(DESTROY_DEADLINE);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads the init's messages, one JSON line each, until `deadline`.
pub(super) struct Messages {
    pub fd: OwnedFd,
    pub buf: Vec<u8>,
    pub deadline: Instant,
}

impl Messages {
    pub fn next(&mut self) -> Result<Option<Msg>, Error> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| Error::Process(format!("garbled message from the container's init: {e}")));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Process(format!("the container's init did not report within {INIT_DEADLINE:?}")));
            }
            let mut fds = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(Error::io("poll", e)),
            }
            let mut chunk = [0u8; 4096];
            match nix::unistd::read(&self.fd, &mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::io("reading from the init", e)),
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Creates the container: everything up to the exec of its command, which waits for `start`.
/// Returns its state and the warnings of the init (requests it adjusted).
pub fn create(opts: &CreateOptions) -> Result<(State, Vec<String>), Error> {
    check_id(&opts.id)?;
    let bundle =
        opts.bundle.canonicalize().map_err(|e| Error::Bundle(format!("bundle {}: {e}", opts.bundle.display())))?;
    let (spec, rootfs) = load_spec(&bundle)?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    if terminal && opts.console.is_none() {
        return Err(Error::Bundle("process.terminal needs a console socket (--console-socket)".into()));
    }
    let programs = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => seccomp::compile(profile)?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(&opts.root).map_err(|e| Error::io(opts.root.display(), e))?;
    let dir = State::dir(&opts.root, &opts.id);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::Exists(opts.id.clone())),
        Err(e) => return Err(Error::io(dir.display(), e)),
    }
    let mut cleanup = Cleanup { dir: dir.clone(), cgroup: None, pids: Vec::new(), armed: true };

    let cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_else(|| PathBuf::from(format!("/husk-runtime/{}", opts.id)));
    let layout = Layout::detect().map_err(|e| Error::io("finding the cgroup hierarchies", e))?;
    let cgroup = Cgroup::new(layout, &cgroups_path).map_err(|e| Error::Bundle(format!("linux.cgroupsPath: {e}")))?;
    if cgroups_path.parent().is_none() {
        return Err(Error::Bundle("linux.cgroupsPath: `/` is the root cgroup, not a container's".into()));
    }
    // Never adopt a cgroup that already holds processes: destroying this container would kill
    // them.
    if cgroup.procs().is_ok_and(|p| !p.is_empty()) {
        return Err(Error::Bundle(format!("linux.cgroupsPath: {} already has processes", cgroups_path.display())));
    }
    cleanup.cgroup = Some(cgroup.clone());
    cgroup.create().map_err(|e| Error::io(format!("creating cgroup {}", cgroups_path.display()), e))?;
    let mut resources =
        spec.linux().as_ref().and_then(|l| l.resources().as_ref()).map(Resources::from_oci).unwrap_or_default();
    // As runc: the spec's rules (deny everything when it has none), then the default devices
    // and mknod, whatever the spec says.
    if resources.devices.is_empty() {
        resources.devices = crate::cgroups::default_device_rules().into_iter().filter(|r| !r.allow).collect();
    }
    cgroup
        .apply(&resources)
        .map_err(|e| Error::io(format!("applying linux.resources to {}", cgroups_path.display()), e))?;
    // Those the spec already grants after its last deny (husk's own bundles grant the default
    // devices) would be writes that change nothing: the launch path skips them.
    let granted = &resources.devices[resources.devices.iter().rposition(|r| !r.allow).map_or(0, |i| i + 1)..];
    let implicit: Vec<_> =
        crate::cgroups::implicit_device_rules().into_iter().filter(|r| !granted.contains(r)).collect();
    cgroup
        .allow_devices_if_parent_does(&implicit)
        .map_err(|e| Error::io(format!("allowing the default devices in {}", cgroups_path.display()), e))?;

    let fifo = dir.join(EXEC_FIFO);
    // The init opens the fifo through an O_PATH descriptor (no path walk through the 0700 state
    // directory), but reopening it for writing checks its mode: an init that runs as another
    // user needs the write bits.
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::empty()).map_err(|e| Error::io(fifo.display(), e))?;
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(|e| Error::io(fifo.display(), e))?;
    let (msg_r, msg_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("pipe", e))?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("pipe", e))?;
    // The init is a grandchild: with this, it becomes our child when the first child exits, so
    // `run` can wait for it (and the shim, a subreaper anyway, reaps it).
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::io("PR_SET_CHILD_SUBREAPER", e))?;

    let stage1 = match fork().map_err(|e| Error::io("fork", e))? {
        Fork::Child => {
            drop(msg_r);
            drop(go_w);
            init::stage1(init::Child {
                spec: spec.clone(),
                rootfs: rootfs.clone(),
                cgroup: Some(cgroup.clone()),
                seccomp: programs,
                exec_fifo: fifo.clone(),
                to_parent: msg_w,
                from_parent: go_r,
                stdio: opts.stdio,
                init_status: opts.init_status,
                console: if terminal { opts.console.clone() } else { None },
            })
        }
        Fork::Parent(pid) => pid,
    };
    drop(msg_w);
    drop(go_r);
    cleanup.pids.push(stage1.as_raw());
    let mut messages = Messages { fd: msg_r, buf: Vec::new(), deadline: Instant::now() + INIT_DEADLINE };
    let mut warnings = Vec::new();
    let pid = loop {
        match messages.next()? {
            Some(Msg::Pid(pid)) => break pid,
            Some(Msg::Error(e)) => return Err(Error::Process(e)),
            Some(Msg::Warning(w)) => warnings.push(w),
            Some(Msg::Created) | Some(Msg::Mounted) | None => {
                return Err(Error::Process("the container's init exited before it started".into()))
            }
        }
    };
    let _ = nix::sys::wait::waitpid(stage1, None);
    cleanup.pids = vec![pid];
    cgroup.add(pid).map_err(|e| Error::io(format!("adding the init to {}", cgroups_path.display()), e))?;
    let start_time = process_start_time(pid).map(|(t, _)| t).unwrap_or(0);
    let state = State {
        id: opts.id.clone(),
        bundle: bundle.clone(),
        rootfs,
        pid,
        pid_start_time: start_time,
        cgroups_path,
        annotations: spec.annotations().clone().unwrap_or_default(),
        created_ns: now_ns(),
    };
    let mut oci = state.oci(&opts.root);
    oci.status = Status::Creating;
    let state_json = serde_json::to_vec(&oci).map_err(|e| Error::io("state", e))?;
    use std::io::Write;
    let mut go = std::fs::File::from(go_w);
    go.write_all(&state_json).and_then(|_| go.write_all(b"\n")).map_err(|e| Error::io("releasing the init", e))?;
    state.save(&opts.root)?;
    let spec_hooks = spec.hooks().as_ref();
    loop {
        match messages.next()? {
            Some(Msg::Mounted) => {
                hooks::run("prestart", spec_hooks.and_then(|h| h.prestart().as_ref()), &state_json)?;
                hooks::run("createRuntime", spec_hooks.and_then(|h| h.create_runtime().as_ref()), &state_json)?;
                go.write_all(b"go\n").map_err(|e| Error::io("releasing the init", e))?;
            }
            Some(Msg::Created) => break,
            Some(Msg::Warning(w)) => warnings.push(w),
            Some(Msg::Error(e)) => return Err(Error::Process(e)),
            Some(Msg::Pid(_)) | None => return Err(Error::Process("the container's init exited during create".into())),
        }
    }
    drop(go);
    if let Some(pid_file) = &opts.pid_file {
        husk_oci::checkpoint::write_atomic(pid_file, pid.to_string().as_bytes(), 0o644)
            .map_err(|e| Error::io(pid_file.display(), e))?;
    }
    cleanup.armed = false;
    Ok((state, warnings))
}

/// Lets the created container exec its command. Errors of the exec come back as text.
pub fn start(root: &Path, id: &str) -> Result<(), Error> {
    let st = State::load(root, id)?;
    let status = st.status(root);
    if status != Status::Created {
        return Err(Error::Status {
            id: id.into(),
            status: status.to_string(),
            what: "only a created container starts".into(),
        });
    }
    let fifo_path = State::dir(root, id).join(EXEC_FIFO);
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io(fifo_path.display(), e))?;
    let deadline = Instant::now() + INIT_DEADLINE;
    let mut text = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Process(format!("the container's init did not exec within {INIT_DEADLINE:?}")));
        }
        let mut fds = [nix::poll::PollFd::new(fifo.as_fd(), nix::poll::PollFlags::POLLIN)];
        // Short slices: an init that died never opens the fifo, which only its liveness shows.
        let ms = u16::try_from(left.as_millis().min(100)).unwrap_or(100);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                if !st.init_alive() {
                    return Err(Error::Process("the container's init died before it could exec".into()));
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io("poll", e)),
        }
        let mut chunk = [0u8; 4096];
        match nix::unistd::read(&fifo, &mut chunk) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::io("reading the exec fifo", e)),
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    if !text.is_empty() {
        return Err(Error::Process(String::from_utf8_lossy(&text).into_owned()));
    }
    if let Ok(spec) = husk_oci::bundle::read_spec(&st.bundle) {
        let json = serde_json::to_vec(&st.oci(root)).unwrap_or_default();
        if let Err(e) = hooks::run("poststart", spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()), &json) {
            eprintln!("husk-runtime: warning: {e}");
        }
    }
    Ok(())
}

/// The hooks that run after a step another process may drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    Poststart,
    Poststop,
}

/// Whether the container's bundle lists hooks for `phase`; true when that cannot be read
/// (whoever then runs the step meets the same error).
pub fn has_hooks(root: &Path, id: &str, phase: HookPhase) -> bool {
    let Ok(st) = State::load(root, id) else { return true };
    let Ok(spec) = husk_oci::bundle::read_spec(&st.bundle) else { return true };
    let Some(hooks) = spec.hooks() else { return false };
    let list = match phase {
        HookPhase::Poststart => hooks.poststart(),
        HookPhase::Poststop => hooks.poststop(),
    };
    list.as_ref().is_some_and(|l| !l.is_empty())
}

/// The OCI state of a container.
pub fn state(root: &Path, id: &str) -> Result<OciState, Error> {
    Ok(State::load(root, id)?.oci(root))
}

/// Every container under `root`.
pub fn list(root: &Path) -> Result<Vec<OciState>, Error> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(root.display(), e)),
    };
    for e in entries.flatten() {
        if let Some(id) = e.file_name().to_str() {
            if let Ok(st) = State::load(root, id) {
                out.push(st.oci(root));
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub(super) fn cgroup_of(st: &State) -> Result<Cgroup, Error> {
    let layout = Layout::detect().map_err(|e| Error::io("finding the cgroup hierarchies", e))?;
    Cgroup::new(layout, &st.cgroups_path).map_err(|e| Error::io(st.cgroups_path.display(), e))
}

/// Sends `signal` to the init, or with `all` to every process of the container.
pub fn kill(root: &Path, id: &str, signal: Signal, all: bool) -> Result<(), Error> {
    let st = State::load(root, id)?;
    if all {
        for pid in cgroup_of(&st)?.procs().unwrap_or_default() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
        return Ok(());
    }
    if !st.init_alive() {
        return Err(Error::Status {
            id: id.into(),
            status: "stopped".into(),
            what: "there is no process to signal".into(),
        });
    }
    nix::sys::signal::kill(Pid::from_raw(st.pid), signal).map_err(|e| Error::io(format!("kill {}", st.pid), e))
}

/// Removes a stopped container (any container with `force`): kills what is left, removes its
/// cgroup and its state, then runs the poststop hooks.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), Error> {
    let st = State::load(root, id)?;
    let status = st.status(root);
    // As runc: a created (never started) container may go; a running one only with --force.
    if status == Status::Running && !force {
        return Err(Error::Status {
            id: id.into(),
            status: status.to_string(),
            what: "stop it first or use --force".into(),
        });
    }
    let cg = cgroup_of(&st)?;
    cg.kill_all(DESTROY_DEADLINE).map_err(|e| Error::io("killing the container's processes", e))?;
    cg.remove(DESTROY_DEADLINE).map_err(|e| Error::io("removing the container's cgroup", e))?;
    let json = serde_json::to_vec(&st.oci(root)).unwrap_or_default();
    let dir = State::dir(root, id);
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    if let Ok(spec) = husk_oci::bundle::read_spec(&st.bundle) {
        if let Err(e) = hooks::run("poststop", spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()), &json) {
            eprintln!("husk-runtime: warning: {e}");
        }
    }
    Ok(())
}
