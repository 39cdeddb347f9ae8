//! The container's side of `create`: runs in the forked children, never returns.
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Spec};
use seccompiler::BpfProgram;
use serde::{Deserialize, Serialize};

use super::{mounts, Error};
use crate::cgroups::Cgroup;
use crate::sys::{exit_child, fork, Fork};

/// What the init tells `create`, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Msg {
    /// The init's pid (sent by the first child, which then exits).
    Pid(i32),
    /// A request husk adjusted (e.g. a clamped rlimit).
    Warning(String),
    /// The mounts are in place: `create` runs its hooks and answers `go`.
    Mounted,
    /// The container is created and waits for `start`.
    Created,
    Error(String),
}

pub(super) struct Child {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub cgroup: Option<Cgroup>,
    pub seccomp: Vec<BpfProgram>,
    pub exec_fifo: PathBuf,
    /// Write end of the message pipe.
    pub to_parent: OwnedFd,
    /// Read end of the pipe on which `create` sends the state once the init is in its cgroup.
    pub from_parent: OwnedFd,
    /// Descriptors to become the container's stdin, stdout and stderr.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
    /// With an init: where it writes the command's raw wait status (4 bytes, native endian).
    pub init_status: Option<std::os::fd::RawFd>,
    /// With `process.terminal`: where the terminal's master goes.
    pub console: Option<super::console::ConsoleSocket>,
}

impl Child {
    fn send(&self, msg: &Msg) {
        send(&self.to_parent, msg)
    }
}

/// Sends one message to the runtime on the other end of `to`.
pub(super) fn send(to: &OwnedFd, msg: &Msg) {
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    let mut f = std::fs::File::from(to.try_clone().expect("dup of the message pipe"));
    let _ = f.write_all(&line);
}

fn errno_text(e: nix::errno::Errno) -> String {
    e.desc().to_lowercase()
}

pub(super) fn fail(what: impl std::fmt::Display, e: nix::errno::Errno) -> Error {
    Error::Process(format!("{what}: {}", errno_text(e)))
}

pub(super) fn flag(t: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => return None,
    })
}

/// The first child: joins the namespaces the spec names by path, creates the new ones (the
/// cgroup namespace waits until the init is in its cgroup), and forks the init, which is the
/// first process of a new pid namespace.
pub(super) fn stage1(child: Child) -> ! {
    // A joined pid namespace (a nested container's parent's) holds processes that can see the
    // init: until the command's exec, it is the runtime's (or the shim's) binary, which they
    // must not reach through /proc/<pid>/exe (runc's CVE-2019-5736). In a new pid namespace
    // nothing else exists yet.
    let joins_pid = child
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_some()));
    if joins_pid {
        if let Err(e) = nix::sys::prctl::set_dumpable(false) {
            child.send(&Msg::Error(format!("PR_SET_DUMPABLE: {}", errno_text(e))));
            exit_child(1)
        }
    }
    match enter_namespaces(&child.spec) {
        Err(e) => child.send(&Msg::Error(e.to_string())),
        Ok(()) => match fork() {
            Ok(Fork::Parent(pid)) => {
                child.send(&Msg::Pid(pid.as_raw()));
                exit_child(0)
            }
            Ok(Fork::Child) => stage2(child),
            Err(e) => child.send(&Msg::Error(format!("fork: {e}"))),
        },
    }
    exit_child(1)
}

fn enter_namespaces(spec: &Spec) -> Result<(), Error> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    for ns in namespaces.iter().filter(|n| n.path().is_some()) {
        let path = ns.path().as_ref().unwrap();
        let fd = std::fs::File::open(path).map_err(|e| Error::Process(format!("opening {}: {e}", path.display())))?;
        let f = flag(ns.typ()).ok_or_else(|| Error::Process(format!("joining {:?} namespaces", ns.typ())))?;
        setns(&fd, f).map_err(|e| fail(format!("setns {}", path.display()), e))?;
    }
    let mut new = CloneFlags::empty();
    for ns in namespaces.iter().filter(|n| n.path().is_none() && n.typ() != LinuxNamespaceType::Cgroup) {
        new |= flag(ns.typ()).ok_or_else(|| Error::Process(format!("{:?} namespaces", ns.typ())))?;
    }
    unshare(new).map_err(|e| fail("unshare", e))
}

/// The init: waits to be in its cgroup, builds the container and waits for `start`.
fn stage2(child: Child) -> ! {
    let err = match init(&child) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    child.send(&Msg::Error(err.to_string()));
    exit_child(1)
}

enum Never {}

fn init(child: &Child) -> Result<Never, Error> {
    let spec = &child.spec;
    // Wait for `create` to place us in the cgroup; it then sends the state for the hooks.
    let mut from_parent =
        std::fs::File::from(child.from_parent.try_clone().map_err(|e| Error::Process(format!("dup: {e}")))?);
    let state_json = read_line(&mut from_parent)?;
    if state_json.is_empty() {
        return Err(Error::Process("create went away before the container was in its cgroup".into()));
    }
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    let new_ns = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t && n.path().is_none());
    if new_ns(LinuxNamespaceType::Cgroup) {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| fail("unshare cgroup namespace", e))?;
    }
    if let Some(fds) = child.stdio {
        crate::sys::set_stdio(fds).map_err(|e| Error::Process(format!("setting up stdio: {e}")))?;
    }
    nix::unistd::setsid().map_err(|e| fail("setsid", e))?;
    // The fifo is reached through an O_PATH descriptor: after pivot_root its path is gone.
    let fifo = nix::fcntl::open(
        &child.exec_fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(format!("opening {}", child.exec_fifo.display()), e))?;

    // The console socket's path is only reachable before pivot_root.
    let console = child.console.as_ref().map(super::console::connect).transpose()?;
    mounts::mount_all(spec, &child.rootfs, child.cgroup.as_ref())?;
    // The runtime's hooks (prestart, createRuntime) run now, in create, with the namespaces
    // and mounts in place; then ours, createContainer, before pivot_root so its path resolves
    // in the runtime's view of the filesystem, as runc runs it.
    child.send(&Msg::Mounted);
    if read_line(&mut from_parent)? != b"go" {
        return Err(Error::Process("create went away during the hooks".into()));
    }
    let hooks = spec.hooks().as_ref();
    super::hooks::run("createContainer", hooks.and_then(|h| h.create_container().as_ref()), &state_json)?;
    mounts::pivot(&child.rootfs)?;
    if let Some(h) = spec.hostname() {
        if new_ns(LinuxNamespaceType::Uts) {
            nix::unistd::sethostname(h).map_err(|e| fail("sethostname", e))?;
        }
    }
    // Sysctls before /proc/sys turns read-only, and only those the container's own namespaces
    // scope.
    if let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        for (key, value) in sysctl {
            check_sysctl(key, value, &new_ns)?;
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| Error::Process(format!("sysctl {key}: {e}")))?;
        }
    }
    mounts::finish_rootfs(spec)?;
    let process = spec.process().as_ref().ok_or_else(|| Error::Bundle("process is required".into()))?;
    if let Some(socket) = console {
        let size = process.console_size().map(|b| (b.height() as u16, b.width() as u16));
        super::console::setup(socket, size, process.user().uid(), process.user().gid())?;
    }
    let mut ready = prepare_process(process, &child.seccomp, &mut |w| child.send(&Msg::Warning(w)))?;
    if let Some(argv0) = spec.annotations().as_ref().and_then(|a| a.get(husk_oci::ANNOTATION_ARGV0)) {
        ready.argv[0] =
            CString::new(argv0.as_bytes()).map_err(|_| Error::Bundle("argv0 annotation: NUL byte".into()))?;
    }
    child.send(&Msg::Created);

    // A non-dumpable process' /proc/self belongs to root: a command that runs as another user
    // reopens its fifo there, so it becomes dumpable again first (a window only for a nested
    // container that shares its parent's pid namespace and runs as a user other than root).
    if !nix::unistd::geteuid().is_root() {
        let _ = nix::sys::prctl::set_dumpable(true);
    }
    // Blocks until `start` opens the fifo for reading; exec closes it (O_CLOEXEC), which tells
    // `start` the exec happened. A failed exec writes its reason into the fifo instead.
    let mut fifo_w = nix::fcntl::open(
        Path::new(&format!("/proc/self/fd/{}", fifo.as_raw_fd())),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(std::fs::File::from)
    .map_err(|e| fail("opening the exec fifo", e))?;
    drop(fifo);
    // startContainer hooks belong to `start`: its errors go back through the fifo.
    if let Err(e) = super::hooks::run("startContainer", hooks.and_then(|h| h.start_container().as_ref()), &state_json) {
        let _ = fifo_w.write_all(e.to_string().as_bytes());
        exit_child(1)
    }
    if let Some(status_fd) = child.init_status {
        // The container's pid 1 stays ours: it forwards signals to the command and reaps every
        // orphan. Signals are blocked before the fork so none is lost in between.
        let all = nix::sys::signal::SigSet::all();
        let mut old = nix::sys::signal::SigSet::empty();
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old))
            .map_err(|e| fail("blocking signals", e))?;
        match fork().map_err(|e| Error::Process(format!("fork: {e}")))? {
            Fork::Parent(command) => {
                drop(fifo_w);
                super::reaper_init::run(command, status_fd)
            }
            Fork::Child => {
                let _ = old;
            }
        }
    }
    let text = ready.exec().to_string();
    let _ = fifo_w.write_all(text.as_bytes());
    exit_child(127)
}

/// A process ready to exec: everything of `process` applied but the exec itself.
pub(super) struct Ready {
    pub executable: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub program: String,
}

impl Ready {
    /// Execs the command with clean signal state; returns only the reason it failed.
    pub fn exec(&self) -> Error {
        crate::sys::reset_signals();
        let e = nix::unistd::execve(&self.executable, &self.argv, &self.env).unwrap_err();
        Error::Process(format!("exec {}: {}", self.program, errno_text(e)))
    }
}

/// Applies the OCI `process` to the calling process (oom score, rlimits, working directory,
/// user, capabilities, no_new_privs, seccomp) and resolves what to exec. Shared by the
/// container's init and by `exec`. Requests that had to be adjusted go to `warn`.
pub(super) fn prepare_process(
    process: &oci_spec::runtime::Process,
    seccomp: &[BpfProgram],
    warn: &mut dyn FnMut(String),
) -> Result<Ready, Error> {
    if let Some(adj) = process.oom_score_adj() {
        oom_score_adj(adj, warn)?;
    }
    for r in process.rlimits().iter().flatten() {
        rlimit(r.typ(), r.soft(), r.hard(), warn)?;
    }

    let env: Vec<CString> = process
        .env()
        .iter()
        .flatten()
        .map(|kv| CString::new(kv.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Bundle("process.env: NUL byte".into()))?;
    let args = process.args().clone().unwrap_or_default();
    let program = args.first().ok_or_else(|| Error::Bundle("process.args is empty".into()))?;
    let path_var = process
        .env()
        .iter()
        .flatten()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(husk_oci::config::DEFAULT_PATH)
        .to_string();
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| fail(format!("chdir {}", cwd.display()), e))?;
    let executable = find_executable(program, &path_var)?;
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Bundle("process.args: NUL byte".into()))?;

    // Nothing the runtime or its caller opened reaches the command (checked before seccomp,
    // which might refuse close_range).
    crate::sys::cloexec_from(3).map_err(|e| Error::Process(format!("closing inherited descriptors: {e}")))?;
    // While the process still has every privilege it will have.
    super::lsm::apply(process)?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    if !nnp {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
        super::seccomp::load(seccomp)?;
    }
    set_user_and_capabilities(process, warn)?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| fail("no_new_privileges", e))?;
        super::seccomp::load(seccomp)?;
    }
    Ok(Ready { executable, argv, env, program: program.clone() })
}

/// Reads one line (without its newline) from `create`; empty at EOF.
fn read_line(f: &mut std::fs::File) -> Result<Vec<u8>, Error> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match f.read(&mut byte) {
            Ok(0) => return Ok(line),
            Ok(_) if byte[0] == b'\n' => return Ok(line),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Process(format!("reading from create: {e}"))),
        }
    }
}

/// A sysctl the container may set: a well-formed name that one of its own IPC, network or UTS
/// namespaces scopes (runc's rule), never a host-wide one.
fn check_sysctl(key: &str, value: &str, new_ns: &dyn Fn(LinuxNamespaceType) -> bool) -> Result<(), Error> {
    use husk_oci::validate::SysctlScope;
    let scope = husk_oci::validate::sysctl(key, value, "linux.sysctl").map_err(|e| Error::Bundle(e.to_string()))?;
    let ns = match scope {
        SysctlScope::Ipc => LinuxNamespaceType::Ipc,
        SysctlScope::Network => LinuxNamespaceType::Network,
        SysctlScope::Uts => LinuxNamespaceType::Uts,
    };
    if !new_ns(ns) {
        return Err(Error::Bundle(format!(
            "linux.sysctl: {key} is not scoped by a namespace of the container's own; it would change the host"
        )));
    }
    Ok(())
}

fn find_executable(program: &str, path_var: &str) -> Result<CString, Error> {
    let found = if program.contains('/') {
        std::fs::metadata(program).map(|_| PathBuf::from(program)).map_err(|e| {
            Error::Process(format!(
                "exec {program}: {}",
                e.raw_os_error().map(|n| errno_text(nix::errno::Errno::from_raw(n))).unwrap_or(e.to_string())
            ))
        })?
    } else {
        path_var
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
            .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
            .ok_or_else(|| Error::Process(format!("exec {program}: executable file not found in $PATH")))?
    };
    CString::new(found.as_os_str().as_bytes()).map_err(|_| Error::Bundle("process.args[0]: NUL byte".into()))
}

/// Lowering oom_score_adj below the caller's needs CAP_SYS_RESOURCE: without it the value is
/// clamped to the caller's and reported, as containerd's restrict_oom_score_adj does.
fn oom_score_adj(adj: i32, warn: &mut dyn FnMut(String)) -> Result<(), Error> {
    let path = "/proc/self/oom_score_adj";
    if std::fs::write(path, adj.to_string()).is_ok() {
        return Ok(());
    }
    let current = std::fs::read_to_string(path).unwrap_or_default();
    warn(format!("oom_score_adj {adj} not permitted here; kept {}", current.trim()));
    Ok(())
}

fn rlimit(typ: PosixRlimitType, soft: u64, hard: u64, warn: &mut dyn FnMut(String)) -> Result<(), Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let r = match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    };
    match setrlimit(r, soft, hard) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            // Raising a hard limit needs CAP_SYS_RESOURCE: clamp to what we have, and say so.
            let (_, current_hard) = getrlimit(r).map_err(|e| fail("getrlimit", e))?;
            let (s, h) = (soft.min(current_hard), hard.min(current_hard));
            setrlimit(r, s, h).map_err(|e| fail(format!("setrlimit {typ:?}"), e))?;
            warn(format!("{typ:?} {soft}/{hard} above the host's hard limit; clamped to {s}/{h}"));
            Ok(())
        }
        Err(e) => Err(fail(format!("setrlimit {typ:?}"), e)),
    }
}

fn to_caps(set: &Option<oci_spec::runtime::Capabilities>) -> Result<caps::CapsHashSet, Error> {
    set.iter()
        .flatten()
        .map(|c| {
            let name = serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            name.parse::<caps::Capability>().map_err(|_| Error::Bundle(format!("process.capabilities: unknown {name}")))
        })
        .collect()
}

fn set_user_and_capabilities(process: &oci_spec::runtime::Process, warn: &mut dyn FnMut(String)) -> Result<(), Error> {
    use caps::CapSet;
    let user = process.user();
    let capset_err = |what: &str, e: caps::errors::CapsError| Error::Process(format!("{what}: {e}"));
    let wanted = process.capabilities().as_ref();
    if let Some(c) = wanted {
        let bounding = to_caps(c.bounding())?;
        for cap in caps::all() {
            if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| capset_err("dropping bounding capabilities", e))?;
            }
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(|e| fail("keepcaps", e))?;
    let groups: Vec<Gid> = user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail(format!("setgid {gid}"), e))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail(format!("setuid {uid}"), e))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| fail("keepcaps", e))?;
    let Some(c) = wanted else { return Ok(()) };
    // The kernel wants effective ⊆ permitted at every step: shrink effective first.
    caps::set(None, CapSet::Effective, &to_caps(c.effective())?)
        .map_err(|e| capset_err("setting effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &to_caps(c.permitted())?)
        .map_err(|e| capset_err("setting permitted capabilities", e))?;
    caps::set(None, CapSet::Inheritable, &to_caps(c.inheritable())?)
        .map_err(|e| capset_err("setting inheritable capabilities", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| capset_err("clearing ambient capabilities", e))?;
    // The kernel raises an ambient capability only when it is both permitted and inheritable.
    // One that is not stays unraised, as runc leaves it: `runc spec` itself writes
    // CAP_NET_BIND_SERVICE in the ambient set and not in the inheritable one.
    let (permitted, inheritable) = (to_caps(c.permitted())?, to_caps(c.inheritable())?);
    for cap in to_caps(c.ambient())? {
        if permitted.contains(&cap) && inheritable.contains(&cap) {
            caps::raise(None, CapSet::Ambient, cap).map_err(|e| capset_err(&format!("raising ambient {cap}"), e))?;
        } else {
            warn(format!(
                "process.capabilities: ambient {cap} left unraised: it is not both permitted and inheritable"
            ));
        }
    }
    Ok(())
}
