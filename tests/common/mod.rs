//! Shared fixtures of the end-to-end tests: a busybox rootfs, runc, and cleanup guards that
//! leave no cgroup, mount or file behind, also when a test fails.
#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why an end-to-end test cannot run here, or `None` when it can. A test that cannot run fails
/// unless `HUSK_ALLOW_SKIP=1`, so a missing dependency never passes silently.
pub fn cannot_run(needs_runc: bool) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some("needs root".into());
    }
    if needs_runc && which("runc").is_none() {
        return Some("needs runc (apt-get install -y runc)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs a static busybox at /bin/busybox (apt-get install -y busybox-static)".into());
    }
    None
}

/// Skips (with a visible message) or fails the calling test when it cannot run here.
#[macro_export]
macro_rules! require {
    ($needs_runc:expr) => {
        if let Some(why) = common::cannot_run($needs_runc) {
            if std::env::var("HUSK_ALLOW_SKIP").as_deref() == Ok("1") {
                eprintln!("SKIPPED: {}: {why}", module_path!());
                return;
            }
            panic!("cannot run: {why} (set HUSK_ALLOW_SKIP=1 to skip instead)");
        }
    };
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Users of the busybox rootfs.
pub const APP_UID: u32 = 1000;
pub const APP_GID: u32 = 1000;
pub const VIDEO_GID: u32 = 44;

/// Builds a minimal busybox-static rootfs in `dir`: every applet under /bin, an `app` user
/// (1000:1000, also in group `video` 44), and the usual empty mount points.
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "root", "home/app"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\nvideo:x:44:app\nnogroup:x:65534:\n").unwrap();
}

/// Removes the test's cgroup subtree (every controller) on drop.
pub struct CgroupRoot {
    pub name: String,
}

impl CgroupRoot {
    pub fn new(tag: &str) -> Self {
        CgroupRoot { name: format!("husk-test-{tag}-{}", std::process::id()) }
    }

    /// Every directory of this cgroup root that exists, deepest first.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for base in cgroup_mounts() {
            let root = base.join(&self.name);
            if root.exists() {
                collect_dirs(&root, &mut out);
            }
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Mount points of the host's cgroup hierarchies (v1 controllers and the v2 mount).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .collect()
}

impl Drop for CgroupRoot {
    /// Also after a failed test: whatever still runs in the subtree (a shim killed a moment ago,
    /// a container's process) is killed, and removal is retried while it exits.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftovers();
            for dir in &left {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            for dir in &left {
                let _ = std::fs::remove_dir(dir);
            }
            if self.leftovers().is_empty() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Mount points below `prefix` in this process' mount namespace.
pub fn mounts_under(prefix: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(prefix))
        .collect()
}

pub struct Output {
    /// The command ran past its deadline and was killed.
    pub timed_out: bool,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command with a deadline; kills it when the deadline passes (`timed_out`), so the
/// caller can clean up before it asserts. Output goes through files, not pipes: a container
/// runtime's `create` hands its stdio to the container, which keeps it open after `create` exits.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Output {
    let out_file = tempfile::tempfile().unwrap();
    let err_file = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(err_file.try_clone().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            timed_out = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    Output { timed_out, status, stdout: read(out_file), stderr: read(err_file) }
}

/// Parses `key=value` lines.
pub fn observations(stdout: &str) -> std::collections::HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The capabilities this process holds, as `/proc/self/status` shows them (`CapEff`, hex): what
/// a privileged container of an agent running as this user gets.
pub fn own_effective_caps() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_string()
}

/// A device of the node's `/dev` that no container gets by default, for a privileged one to
/// find.
pub fn non_default_host_device() -> oci_spec::runtime::LinuxDevice {
    let default = ["null", "zero", "full", "random", "urandom", "tty", "console", "ptmx"];
    husk_oci::translate::host_devices(Path::new("/dev"))
        .unwrap()
        .into_iter()
        .find(|d| !default.iter().any(|n| *d.path() == Path::new("/dev").join(n)))
        .expect("the node has a device beyond the default ones")
}
