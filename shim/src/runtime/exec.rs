//! `exec`: a new process in a running container. It joins the container's cgroup and every
//! namespace its init is in (its root comes with the mount namespace), then forks once more so
//! that it is inside the pid namespace, applies the OCI `process` (user, capabilities,
//! no_new_privs, seccomp, rlimits, working directory) and execs. Errors before the exec come
//! back as text, as for `create`.
//!
//! The runtime command is a fresh, single-threaded process: the shim, which has threads, never
//! forks into a container itself.
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Process};
use seccompiler::BpfProgram;

use super::console::{self, ConsoleSocket};
use super::container::{cgroup_of, Messages, INIT_DEADLINE};
use super::init::{self, Msg};
use super::state::{State, Status};
use super::{seccomp, Error};
use crate::cgroups::Cgroup;
use crate::sys::{exit_child, fork, Fork};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The process to run (runtime-spec `process`).
    pub process: Process,
    /// Where the terminal's master goes (needed with `process.terminal`).
    pub console: Option<ConsoleSocket>,
    /// Write the process' pid here once it has exec'd.
    pub pid_file: Option<PathBuf>,
}

/// The namespaces an exec joins, in the order it joins them: the mount namespace last, since
/// it changes what the paths of the others resolve to (they are opened before any is joined).
const JOIN_ORDER: [(LinuxNamespaceType, &str); 6] = [
    (LinuxNamespaceType::Cgroup, "cgroup"),
    (LinuxNamespaceType::Ipc, "ipc"),
    (LinuxNamespaceType::Uts, "uts"),
    (LinuxNamespaceType::Network, "net"),
    (LinuxNamespaceType::Pid, "pid"),
    (LinuxNamespaceType::Mount, "mnt"),
];

/// Starts `opts.process` in container `id` and returns its pid (in the caller's pid namespace)
/// once it has exec'd, with the requests it had to adjust. The process is left running: the
/// caller, as its subreaper, waits for it.
pub fn exec(root: &Path, id: &str, opts: &ExecOptions) -> Result<(i32, Vec<String>), Error> {
    let st = State::load(root, id)?;
    let status = st.status(root);
    if status != Status::Running {
        return Err(Error::Status {
            id: id.into(),
            status: status.to_string(),
            what: "only a running container runs new processes".into(),
        });
    }
    let spec = husk_oci::bundle::read_spec(&st.bundle).map_err(|e| Error::Bundle(e.to_string()))?;
    // The process is confined as the container's is, unless it names its own AppArmor profile
    // or SELinux label (runc's rule): an exec is no way out of the container's confinement.
    let mut process = opts.process.clone();
    if let Some(container) = spec.process() {
        if process.apparmor_profile().as_deref().unwrap_or("").is_empty() {
            process.set_apparmor_profile(container.apparmor_profile().clone());
        }
        if process.selinux_label().as_deref().unwrap_or("").is_empty() {
            process.set_selinux_label(container.selinux_label().clone());
        }
    }
    super::lsm::check(&process, None)?;
    let opts = &ExecOptions { process, ..opts.clone() };
    let terminal = opts.process.terminal().unwrap_or(false);
    if terminal && opts.console.is_none() {
        return Err(Error::Bundle("process.terminal needs a console socket (--console-socket)".into()));
    }
    if opts.process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Bundle("process.args is empty".into()));
    }
    let programs = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => seccomp::compile(profile)?,
        None => Vec::new(),
    };
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    let mut join = Vec::new();
    for (typ, name) in JOIN_ORDER {
        if !namespaces.iter().any(|n| n.typ() == typ) {
            continue; // the container shares the host's
        }
        let path = format!("/proc/{}/ns/{name}", st.pid);
        let fd = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        join.push((fd, init::flag(typ).expect("joinable namespace")));
    }
    // The descriptors are the init's only if it is still the process recorded (a reused pid
    // would put the process in someone else's namespaces).
    if !st.init_alive() {
        return Err(Error::Status { id: id.into(), status: "stopped".into(), what: "its init has exited".into() });
    }
    let cgroup = cgroup_of(&st)?;
    // The process is a grandchild: this makes it our child when its parent exits.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::io("PR_SET_CHILD_SUBREAPER", e))?;
    let (msg_r, msg_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("pipe", e))?;
    let stage1 = match fork().map_err(|e| Error::io("fork", e))? {
        Fork::Child => {
            drop(msg_r);
            stage1(msg_w, &cgroup, join, opts, &programs)
        }
        Fork::Parent(pid) => pid,
    };
    drop(msg_w);
    let mut messages = Messages { fd: msg_r, buf: Vec::new(), deadline: Instant::now() + INIT_DEADLINE };
    let (mut pid, mut warnings, mut failure) = (None, Vec::new(), None);
    // The pipe closes when the first child has exited and the process has exec'd (or died).
    loop {
        match messages.next() {
            Ok(Some(Msg::Pid(p))) => pid = Some(p),
            Ok(Some(Msg::Warning(w))) => warnings.push(w),
            Ok(Some(Msg::Error(e))) => failure = Some(Error::Process(e)),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let _ = nix::sys::wait::waitpid(stage1, None);
    if let Some(e) = failure {
        if let Some(p) = pid {
            let p = nix::unistd::Pid::from_raw(p);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(p, None);
        }
        return Err(e);
    }
    let pid = pid.ok_or_else(|| Error::Process("the exec's first child exited without a word".into()))?;
    if let Some(pid_file) = &opts.pid_file {
        husk_oci::checkpoint::write_atomic(pid_file, pid.to_string().as_bytes(), 0o644)
            .map_err(|e| Error::io(pid_file.display(), e))?;
    }
    Ok((pid, warnings))
}

/// The first child: into the cgroup and the namespaces, then the fork that puts the process
/// inside the pid namespace.
fn stage1(
    to: OwnedFd,
    cgroup: &Cgroup,
    join: Vec<(std::fs::File, CloneFlags)>,
    opts: &ExecOptions,
    programs: &[BpfProgram],
) -> ! {
    let result = (|| -> Result<(), Error> {
        // Until it execs, this process is the runtime's binary inside the container's pid
        // namespace: non-dumpable, its /proc/<pid>/exe and memory are out of the container's
        // reach (runc's CVE-2019-5736). The exec of the command resets it.
        nix::sys::prctl::set_dumpable(false).map_err(|e| init::fail("PR_SET_DUMPABLE", e))?;
        cgroup
            .add(std::process::id() as i32)
            .map_err(|e| Error::Process(format!("joining the container's cgroup: {}", super::describe(e))))?;
        // The console socket's path is only reachable from the host's mount namespace.
        let console = opts.console.as_ref().map(console::connect).transpose()?;
        for (fd, flag) in &join {
            nix::sched::setns(fd, *flag).map_err(|e| init::fail(format!("joining the {flag:?} namespace"), e))?;
        }
        drop(join);
        match fork().map_err(|e| Error::Process(format!("fork: {e}")))? {
            Fork::Parent(pid) => {
                init::send(&to, &Msg::Pid(pid.as_raw()));
                exit_child(0)
            }
            Fork::Child => stage2(&to, console, &opts.process, programs),
        }
    })();
    if let Err(e) = result {
        init::send(&to, &Msg::Error(e.to_string()));
    }
    exit_child(1)
}

/// The process itself: its own session (and terminal), the OCI process applied, exec.
fn stage2(to: &OwnedFd, console: Option<OwnedFd>, process: &Process, programs: &[BpfProgram]) -> ! {
    let err = (|| -> Error {
        if let Err(e) = nix::unistd::setsid() {
            return init::fail("setsid", e);
        }
        if let Some(socket) = console {
            let size = process.console_size().map(|b| (b.height() as u16, b.width() as u16));
            if let Err(e) = console::setup(socket, size, process.user().uid(), process.user().gid()) {
                return e;
            }
        }
        match init::prepare_process(process, programs, &mut |w| init::send(to, &Msg::Warning(w))) {
            Ok(ready) => ready.exec(),
            Err(e) => e,
        }
    })();
    init::send(to, &Msg::Error(err.to_string()));
    exit_child(127)
}
