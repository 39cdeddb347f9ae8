use std::process::Command;
use std::time::Duration;

use super::*;

const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
30 25 0:28 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
31 25 0:29 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
32 1 0:30 / /mnt/with\\040space rw - ext4 /dev/sda rw
";

const PURE_V2: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

#[test]
fn layouts_from_mountinfo() {
    let hybrid = Layout::from_mountinfo(HYBRID).unwrap();
    assert_eq!(hybrid.mode(), "hybrid");
    let Layout::V1 { controllers, unified } = &hybrid else { panic!() };
    assert_eq!(controllers["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(controllers["cpuacct"], controllers["cpu"]);
    assert_eq!(unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    assert!(!controllers.contains_key("systemd"));
    let cg = Cgroup::new(hybrid, Path::new("/husk/c1")).unwrap();
    assert_eq!(cg.dirs().len(), 4, "cpu,cpuacct is one hierarchy (and no devices mount here)");

    let v2 = Layout::from_mountinfo(PURE_V2).unwrap();
    assert_eq!(v2, Layout::V2 { root: "/sys/fs/cgroup".into() });
    assert_eq!(v2.mode(), "v2");
    assert!(Layout::from_mountinfo("").is_err());
    assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
    assert_eq!(unescape("/é\\"), "/é\\");
}

#[test]
fn cgroups_path_must_be_absolute_and_clean() {
    let v2 = Layout::V2 { root: "/x".into() };
    assert!(Cgroup::new(v2.clone(), Path::new("husk/c")).is_err());
    assert!(Cgroup::new(v2, Path::new("/husk/../../etc")).is_err());
}

fn full() -> Resources {
    Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        memory_reservation: Some(32 << 20),
        memory_swap: Some(96 << 20),
        pids_limit: Some(64),
        devices: vec![
            DeviceRule { allow: false, kind: 'a', major: None, minor: None, access: "rwm".into() },
            DeviceRule { allow: true, kind: 'c', major: Some(1), minor: Some(3), access: "rwm".into() },
        ],
    }
}

fn as_pairs(plan: Vec<Write>) -> Vec<(String, String)> {
    plan.into_iter()
        .map(|w| (format!("{}{}", if w.controller.is_empty() { "" } else { "/" }, w.file), w.value))
        .collect()
}

#[test]
fn v1_plan() {
    let p = as_pairs(plan(false, &full()));
    let expect = [
        ("/cpu.shares", "512"),
        ("/cpu.cfs_period_us", "100000"),
        ("/cpu.cfs_quota_us", "50000"),
        ("/memory.limit_in_bytes", "67108864"),
        ("/memory.memsw.limit_in_bytes", "100663296"),
        ("/memory.soft_limit_in_bytes", "33554432"),
        ("/pids.max", "64"),
        ("/devices.deny", "a *:* rwm"),
        ("/devices.allow", "c 1:3 rwm"),
    ];
    assert_eq!(p, expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
    let unlimited = Resources { cpu_quota: Some(-1), pids_limit: Some(-1), ..Default::default() };
    assert_eq!(
        as_pairs(plan(false, &unlimited)),
        vec![("/cpu.cfs_quota_us".into(), "-1".into()), ("/pids.max".into(), "max".into())]
    );
}

#[test]
fn v2_plan() {
    let p = as_pairs(plan(true, &full()));
    let expect = [
        ("cpu.weight", "20"),
        ("cpu.max", "50000 100000"),
        ("memory.max", "67108864"),
        ("memory.low", "33554432"),
        ("memory.swap.max", "33554432"),
        ("pids.max", "64"),
    ];
    assert_eq!(p, expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
    let unlimited =
        Resources { cpu_quota: Some(-1), memory_limit: Some(-1), memory_swap: Some(-1), ..Default::default() };
    assert_eq!(
        as_pairs(plan(true, &unlimited)),
        vec![
            ("cpu.max".into(), "max 100000".into()),
            ("memory.max".into(), "max".into()),
            ("memory.swap.max".into(), "max".into())
        ]
    );
}

#[test]
fn shares_to_weight_matches_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(0), 1);
    assert_eq!(shares_to_weight(u64::MAX), 10_000);
}

/// A cgroup2 tree in a plain directory: the kernel is v1 here, so v2 is exercised on a fake.
#[test]
fn v2_on_a_fake_cgroupfs() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    let cg = Cgroup::new(Layout::V2 { root: root.path().into() }, Path::new("/husk/web")).unwrap();
    cg.create().unwrap();
    let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
    assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
    assert_eq!(read("husk/cgroup.subtree_control"), "+cpu +memory +pids");
    assert!(!root.path().join("husk/web/cgroup.subtree_control").exists(), "the leaf keeps its processes");
    cg.apply(&full()).unwrap();
    assert_eq!(read("husk/web/cpu.max"), "50000 100000");
    assert_eq!(read("husk/web/memory.max"), "67108864");
    assert_eq!(read("husk/web/pids.max"), "64");
    cg.add(4242).unwrap();
    assert_eq!(read("husk/web/cgroup.procs"), "4242");
    std::fs::write(root.path().join("husk/web/cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    cg.set_frozen(true, Duration::from_secs(1)).unwrap();
    assert_eq!(read("husk/web/cgroup.freeze"), "1");
    // The kernel never confirming the thaw is an error, not a hang.
    let e = cg.set_frozen(false, Duration::from_millis(20)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);

    let dir = root.path().join("husk/web");
    std::fs::write(dir.join("cgroup.threads"), "4242\n4243\n").unwrap();
    std::fs::write(dir.join("cpu.stat"), "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 500000\n").unwrap();
    std::fs::write(dir.join("memory.current"), "1048576\n").unwrap();
    std::fs::write(dir.join("memory.max"), "max\n").unwrap();
    std::fs::write(dir.join("memory.stat"), "anon 4096\nfile 8192\nfile_mapped 1024\nunevictable 0\n").unwrap();
    std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
    let s = cg.stats().unwrap();
    assert_eq!((s.processes, s.threads), (1, 2));
    assert_eq!(s.cpus_user_time_secs, Some(2.0));
    assert_eq!(s.cpus_throttled_time_secs, Some(0.5));
    assert_eq!(s.cpus_nr_throttled, Some(4));
    assert_eq!(s.mem_total_bytes, Some(1 << 20));
    assert_eq!(s.mem_limit_bytes, None, "`max` is no limit");
    assert_eq!((s.mem_rss_bytes, s.mem_cache_bytes), (Some(4096), Some(8192)));
    assert_eq!(s.oom_kills, Some(1));

    // kill_all writes cgroup.kill; the fake's processes never go, so it reports them in time.
    std::fs::write(dir.join("cgroup.kill"), "").unwrap();
    let e = cg.kill_all(Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert!(e.to_string().contains("1 processes still in /husk/web"), "{e}");
    assert_eq!(read("husk/web/cgroup.kill"), "1");
    std::fs::write(dir.join("cgroup.procs"), "").unwrap();
    cg.kill_all(Duration::from_secs(1)).unwrap();
}

/// Kills and reaps a test's child process however the test ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() && Layout::detect().is_ok_and(|l| !l.is_v2()) {
        return true;
    }
    if std::env::var("HUSK_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: needs root on a cgroup v1/hybrid host");
        return false;
    }
    panic!("needs root on a cgroup v1/hybrid host (set HUSK_ALLOW_SKIP=1 to skip)");
}

/// The real v1 hierarchy: create, limit, join, stats, freeze-kill, remove, nothing left.
#[test]
fn v1_lifecycle_on_the_host() {
    if !require_root() {
        return;
    }
    let layout = Layout::detect().unwrap();
    let top = format!("/husk-test-cg-{}", std::process::id());
    let cg = Cgroup::new(layout.clone(), &Path::new(&top).join("c1")).unwrap();
    let parent = Cgroup::new(layout, Path::new(&top)).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cg.create().unwrap();
        cg.apply(&Resources { memory_swap: None, ..full() }).unwrap();
        let read = |c: &str, f: &str| std::fs::read_to_string(cg.dir(c).unwrap().join(f)).unwrap().trim().to_string();
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("pids", "pids.max"), "64");

        // Raising memory and memory+swap together needs memsw first: apply handles the order.
        cg.apply(&Resources { memory_limit: Some(64 << 20), memory_swap: Some(64 << 20), ..Default::default() })
            .unwrap();
        cg.apply(&Resources { memory_limit: Some(128 << 20), memory_swap: Some(128 << 20), ..Default::default() })
            .unwrap();
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), (128u64 << 20).to_string());

        let mut child = ChildGuard(Command::new("sleep").arg("60").spawn().unwrap());
        let pid = child.0.id() as i32;
        cg.add(pid).unwrap();
        assert_eq!(cg.procs().unwrap(), vec![pid]);
        assert_eq!(parent.procs().unwrap(), vec![pid], "procs covers the subtree");
        let s = cg.stats().unwrap();
        assert_eq!((s.processes, s.threads), (1, 1));
        assert_eq!(s.mem_limit_bytes, Some(128 << 20));
        assert!(s.mem_total_bytes.is_some(), "a joined process's old charges stay where they were: usage may be 0");
        assert!(s.cpus_user_time_secs.is_some());

        cg.set_frozen(true, Duration::from_secs(5)).unwrap();
        assert_eq!(read("freezer", "freezer.state"), "FROZEN");
        cg.set_frozen(false, Duration::from_secs(5)).unwrap();
        assert_eq!(read("freezer", "freezer.state"), "THAWED");

        cg.kill_all(Duration::from_secs(10)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.0.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(cg.procs().unwrap().is_empty());
        cg.remove(Duration::from_secs(10)).unwrap();
        for d in cg.dirs() {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        // Removing what is gone is fine (destroy is idempotent).
        cg.remove(Duration::from_secs(1)).unwrap();
        cg.kill_all(Duration::from_secs(1)).unwrap();
    }));
    let cleanup = parent.kill_all(Duration::from_secs(5)).and_then(|_| parent.remove(Duration::from_secs(5)));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    cleanup.unwrap();
    for d in parent.dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}
