//! Cgroups of one container on v1, hybrid and v2 hosts.
//!
//! What to write where is planned by pure code ([`plan`]) from the OCI resources, so the plan is
//! tested without root against a fake cgroupfs tree; [`Cgroup`] does the writing, reading,
//! killing and removing, tested as root against the host's real hierarchy.
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod stats;
pub use stats::Stats;

/// v1 controllers husk manages.
pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "freezer", "devices"];
/// v2 controllers husk enables for its containers.
pub const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// How the host's cgroups are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One hierarchy per controller (`controllers`: name → mount point). `unified` is the
    /// cgroup2 mount of a hybrid host, which carries no controllers.
    V1 { controllers: BTreeMap<String, PathBuf>, unified: Option<PathBuf> },
    /// The unified hierarchy.
    V2 { root: PathBuf },
}

impl Layout {
    /// Reads the layout of this process' cgroup mounts.
    pub fn detect() -> io::Result<Layout> {
        Layout::from_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?)
    }

    /// Parses `/proc/self/mountinfo` text.
    pub fn from_mountinfo(text: &str) -> io::Result<Layout> {
        let mut controllers = BTreeMap::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mut right = right.split_whitespace();
            let (fstype, _source, options) = (right.next(), right.next(), right.next().unwrap_or(""));
            let Some(mount_point) = left.split_whitespace().nth(4) else { continue };
            match fstype {
                Some("cgroup2") => unified = Some(PathBuf::from(unescape(mount_point))),
                Some("cgroup") => {
                    for opt in options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            controllers.insert(opt.to_string(), PathBuf::from(unescape(mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        match (controllers.is_empty(), unified) {
            (false, unified) => Ok(Layout::V1 { controllers, unified }),
            (true, Some(root)) => Ok(Layout::V2 { root }),
            (true, None) => Err(io::Error::new(io::ErrorKind::NotFound, "no cgroup hierarchy is mounted")),
        }
    }

    /// `v1`, `hybrid` or `v2`, as operators call them.
    pub fn mode(&self) -> &'static str {
        match self {
            Layout::V1 { unified: Some(_), .. } => "hybrid",
            Layout::V1 { unified: None, .. } => "v1",
            Layout::V2 { .. } => "v2",
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes[i] == b'\\' && i + 4 <= bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b));
        if octal {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The limits husk sets, in OCI terms (`linux.resources`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs; negative removes the quota.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Bytes; -1 removes the limit.
    pub memory_limit: Option<i64>,
    pub memory_reservation: Option<i64>,
    /// Memory plus swap, in bytes (OCI semantics); -1 for unlimited swap.
    pub memory_swap: Option<i64>,
    /// -1 removes the limit.
    pub pids_limit: Option<i64>,
    /// Device access rules in order, as the v1 devices controller takes them (`c 1:3 rwm`).
    pub devices: Vec<DeviceRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a`, `b` or `c`.
    pub kind: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// The device rules every container gets: deny everything, then allow null, zero, full, random,
/// urandom, tty, console, ptmx and the pty slaves.
pub fn default_device_rules() -> Vec<DeviceRule> {
    let allow = |major: i64, minor: Option<i64>| DeviceRule {
        allow: true,
        kind: 'c',
        major: Some(major),
        minor,
        access: "rwm".into(),
    };
    vec![
        DeviceRule { allow: false, kind: 'a', major: None, minor: None, access: "rwm".into() },
        allow(1, Some(3)),
        allow(1, Some(5)),
        allow(1, Some(7)),
        allow(1, Some(8)),
        allow(1, Some(9)),
        allow(5, Some(0)),
        allow(5, Some(1)),
        allow(5, Some(2)),
        allow(136, None),
    ]
}

/// The rules runc appends to every container's own (its `AllowedDevices`, without the tun
/// device runc 1.2 dropped): mknod of any device node, which the container's CAP_MKNOD still
/// gates, and the default devices. So a bundle that denies every device, as `runc spec` writes
/// it, still gets a working /dev.
pub fn implicit_device_rules() -> Vec<DeviceRule> {
    let mknod = |kind: char| DeviceRule { allow: true, kind, major: None, minor: None, access: "m".into() };
    let mut rules = vec![mknod('c'), mknod('b')];
    rules.extend(default_device_rules().into_iter().filter(|r| r.allow));
    rules
}

impl DeviceRule {
    fn line(&self) -> String {
        let n = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        format!("{} {}:{} {}", self.kind, n(self.major), n(self.minor), self.access)
    }
}

impl Resources {
    pub fn from_oci(r: &oci_spec::runtime::LinuxResources) -> Resources {
        let cpu = r.cpu().as_ref();
        let mem = r.memory().as_ref();
        Resources {
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            memory_limit: mem.and_then(|m| m.limit()),
            memory_reservation: mem.and_then(|m| m.reservation()),
            memory_swap: mem.and_then(|m| m.swap()),
            pids_limit: r.pids().as_ref().map(|p| p.limit()),
            devices: r
                .devices()
                .iter()
                .flatten()
                .map(|d| DeviceRule {
                    allow: d.allow(),
                    kind: d.typ().map(|t| t.as_str().chars().next().unwrap_or('a')).unwrap_or('a'),
                    major: d.major(),
                    minor: d.minor(),
                    access: d.access().clone().unwrap_or_else(|| "rwm".into()),
                })
                .collect(),
        }
    }
}

/// One file write of a plan: `controller` is the v1 hierarchy (empty on v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

fn w(controller: &'static str, file: &'static str, value: impl ToString) -> Write {
    Write { controller, file, value: value.to_string() }
}

/// cgroup v2 `cpu.weight` for a v1 `cpu.shares` value (the conversion runc and crun use:
/// [2, 262144] onto [1, 10000]).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The writes that apply `r`. Order matters on v1: a memory+swap limit must never be below the
/// memory limit, so the larger one goes first when both grow, which the caller cannot know: the
/// plan writes memory.limit, then memsw, and [`Cgroup::apply`] retries the pair the other way
/// round on EINVAL.
pub fn plan(v2: bool, r: &Resources) -> Vec<Write> {
    let mut out = Vec::new();
    if v2 {
        if let Some(s) = r.cpu_shares {
            out.push(w("", "cpu.weight", shares_to_weight(s)));
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() {
            let period = r.cpu_period.unwrap_or(100_000);
            let quota = match r.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            out.push(w("", "cpu.max", format!("{quota} {period}")));
        }
        if let Some(l) = r.memory_limit {
            out.push(w("", "memory.max", if l < 0 { "max".to_string() } else { l.to_string() }));
        }
        if let Some(l) = r.memory_reservation {
            out.push(w("", "memory.low", if l < 0 { "0".to_string() } else { l.to_string() }));
        }
        if let Some(s) = r.memory_swap {
            // v2 limits swap alone; OCI's value is memory + swap.
            let value = match (s, r.memory_limit) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => (s - l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            out.push(w("", "memory.swap.max", value));
        }
        if let Some(p) = r.pids_limit {
            out.push(w("", "pids.max", if p <= 0 { "max".to_string() } else { p.to_string() }));
        }
    } else {
        if let Some(s) = r.cpu_shares {
            out.push(w("cpu", "cpu.shares", s));
        }
        if let Some(p) = r.cpu_period {
            out.push(w("cpu", "cpu.cfs_period_us", p));
        }
        if let Some(q) = r.cpu_quota {
            out.push(w("cpu", "cpu.cfs_quota_us", if q > 0 { q } else { -1 }));
        }
        if let Some(l) = r.memory_limit {
            out.push(w("memory", "memory.limit_in_bytes", l));
        }
        if let Some(s) = r.memory_swap {
            out.push(w("memory", "memory.memsw.limit_in_bytes", s));
        }
        if let Some(l) = r.memory_reservation {
            out.push(w("memory", "memory.soft_limit_in_bytes", l));
        }
        if let Some(p) = r.pids_limit {
            out.push(w("pids", "pids.max", if p <= 0 { "max".to_string() } else { p.to_string() }));
        }
        // v2 has no devices files (it takes an eBPF program); v1 takes the rules in order.
        for d in &r.devices {
            out.push(w("devices", if d.allow { "devices.allow" } else { "devices.deny" }, d.line()));
        }
    }
    out
}

/// One container's cgroup: `path` (e.g. `/husk/web`) under every hierarchy husk manages.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
    path: PathBuf,
}

impl Cgroup {
    /// `path` is the OCI `cgroupsPath`: absolute, without `..`.
    pub fn new(layout: Layout, path: &Path) -> io::Result<Cgroup> {
        if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cgroups path `{}` must be absolute and without `..`", path.display()),
            ));
        }
        Ok(Cgroup { layout, path: path.to_path_buf() })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn rel(&self) -> &Path {
        self.path.strip_prefix("/").unwrap_or(&self.path)
    }

    /// The directory of this cgroup in `controller`'s hierarchy (any name on v2).
    pub fn dir(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2 { root } => Some(root.join(self.rel())),
            Layout::V1 { controllers, .. } => controllers.get(controller).map(|m| m.join(self.rel())),
        }
    }

    /// Every directory of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = match &self.layout {
            Layout::V2 { root } => vec![root.join(self.rel())],
            Layout::V1 { controllers, .. } => controllers.values().map(|m| m.join(self.rel())).collect(),
        };
        // cpu and cpuacct are often one hierarchy mounted twice (cpu,cpuacct).
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Creates the cgroup (and its parents). On v2, enables husk's controllers on the way down.
    pub fn create(&self) -> io::Result<()> {
        if let Layout::V2 { root } = &self.layout {
            let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let wanted: Vec<String> = V2_CONTROLLERS
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            let mut dir = root.clone();
            for part in self.rel().components() {
                if !wanted.is_empty() {
                    write_file(&dir.join("cgroup.subtree_control"), &wanted.join(" "))?;
                }
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(annotate(e, &dir)),
                }
            }
            return Ok(());
        }
        for dir in self.dirs() {
            std::fs::create_dir_all(&dir).map_err(|e| annotate(e, &dir))?;
        }
        Ok(())
    }

    /// Applies limits.
    pub fn apply(&self, r: &Resources) -> io::Result<()> {
        let writes = plan(self.layout.is_v2(), r);
        let mut i = 0;
        while i < writes.len() {
            let wr = &writes[i];
            match self.write(wr) {
                Ok(()) => i += 1,
                // Raising memory+swap above the current one (or lowering memory below it) in the
                // wrong order fails with EINVAL: write memsw first, then memory.
                Err(e)
                    if e.kind() == io::ErrorKind::InvalidInput
                        && wr.file == "memory.limit_in_bytes"
                        && writes.get(i + 1).is_some_and(|n| n.file == "memory.memsw.limit_in_bytes") =>
                {
                    self.write(&writes[i + 1])?;
                    self.write(wr)?;
                    i += 2;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds `rules` as [`implicit_device_rules`] are added: each one the parent cgroup does not
    /// allow (v1 refuses it with EPERM: a parent made before husk added these rules) is left
    /// out, since the parent's policy holds below it anyway. Nothing to do on v2.
    pub fn allow_devices_if_parent_does(&self, rules: &[DeviceRule]) -> io::Result<()> {
        if self.layout.is_v2() {
            return Ok(());
        }
        for r in rules.iter().filter(|r| r.allow) {
            match self.write(&w("devices", "devices.allow", r.line())) {
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn write(&self, wr: &Write) -> io::Result<()> {
        let dir = self.dir(wr.controller).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("the {} cgroup controller is not mounted", wr.controller))
        })?;
        write_file(&dir.join(wr.file), &wr.value)
    }

    /// Moves `pid` into the cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for dir in self.dirs() {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the cgroup and every cgroup below it.
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        let dir = self.dir("pids").or_else(|| self.dir("freezer")).or_else(|| self.dirs().into_iter().next());
        let dir = dir.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup hierarchy"))?;
        let mut dirs = Vec::new();
        collect_dirs(&dir, &mut dirs);
        if dirs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: no such cgroup", dir.display())));
        }
        let mut pids = Vec::new();
        for d in dirs {
            match std::fs::read_to_string(d.join("cgroup.procs")) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                // A child cgroup removed while we walk.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(annotate(e, &d)),
            }
        }
        Ok(pids)
    }

    /// Freezes (`true`) or thaws the cgroup, and waits (up to `timeout`) until the kernel says it
    /// is done: a v1 freeze passes through FREEZING, a v2 one shows in `cgroup.events`.
    pub fn set_frozen(&self, frozen: bool, timeout: Duration) -> io::Result<()> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, &str) = match &self.layout {
            Layout::V2 { .. } => {
                let dir = self.dir("").unwrap();
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                (dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }, dir.join("cgroup.events"), want)
            }
            Layout::V1 { .. } => {
                let dir = self
                    .dir("freezer")
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the freezer controller is not mounted"))?;
                let want = if frozen { "FROZEN" } else { "THAWED" };
                (dir.join("freezer.state"), want, dir.join("freezer.state"), want)
            }
        };
        write_file(&file, value)?;
        let deadline = Instant::now() + timeout;
        loop {
            let state = std::fs::read_to_string(&state_file).map_err(|e| annotate(e, &state_file))?;
            // A fake tree without the kernel's state file reads back what was written.
            if state.lines().any(|l| l.trim() == done) || (state_file == file && state.trim() == value) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not reach `{done}` within {timeout:?}", self.path.display()),
                ));
            }
            // A v1 freeze can stall on a task in uninterruptible sleep: ask again.
            if !self.layout.is_v2() && frozen {
                write_file(&file, value)?;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills every process of the cgroup and its children and waits until they are gone, within
    /// `timeout`. v2 uses `cgroup.kill`. Otherwise (v1, v2 before Linux 5.14) the cgroup is
    /// frozen first, so no process can fork out of the round and no listed pid can exit and be
    /// reused by another process, then every process gets SIGKILL and the cgroup is thawed (a
    /// frozen process dies only once thawed); repeated until nothing is left.
    pub fn kill_all(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let kill_file = self.dir("").filter(|_| self.layout.is_v2()).map(|d| d.join("cgroup.kill"));
        loop {
            let procs = match self.procs() {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            if procs.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} processes still in {} after {timeout:?}", procs.len(), self.path.display()),
                ));
            }
            let freezable = match &self.layout {
                Layout::V2 { .. } => self.dir("").is_some_and(|d| d.join("cgroup.freeze").exists()),
                Layout::V1 { .. } => self.dir("freezer").is_some_and(|d| d.exists()),
            };
            match &kill_file {
                Some(f) if f.exists() => write_file(f, "1")?,
                // Without a freezer (a cgroup someone made in some hierarchies only), each round
                // kills what it lists; the loop catches what forked meanwhile.
                _ if !freezable => {
                    for pid in procs {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                }
                _ => {
                    self.set_frozen(true, left)?;
                    let result = self.procs().map(|frozen| {
                        for pid in frozen {
                            // ESRCH: a zombie already; anything else shows up as a process left.
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    });
                    self.set_frozen(
                        false,
                        deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)),
                    )?;
                    result?;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the cgroup (children first) from every hierarchy, retrying `EBUSY` (a cgroup whose
    /// last process is still exiting) until `timeout`. A cgroup that is already gone is fine.
    pub fn remove(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        for dir in self.dirs() {
            let mut all = Vec::new();
            collect_dirs(&dir, &mut all);
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for d in all {
                let mut delay = Duration::from_millis(1);
                loop {
                    match std::fs::remove_dir(&d) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_millis(100));
                        }
                        Err(e) => return Err(annotate(e, &d)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Usage statistics.
    pub fn stats(&self) -> io::Result<Stats> {
        stats::read(self)
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    out.push(dir.to_path_buf());
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes a cgroup interface file (created in a fake tree; cgroupfs files always exist).
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| annotate(e, path))?;
    f.write_all(value.as_bytes()).map_err(|e| annotate(e, path))
}

#[cfg(test)]
mod tests;
