//! Benchmark (not a test): `husk-runtime run` against `runc run` on the same bundle, in one
//! run, and the memory of husk-shim. Run as root: `cargo bench -p husk-shim --bench runtime`.
#[path = "../../tests/common/mod.rs"]
#[allow(unused_macros)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::{CommandInfo, ContainerId};

const RUNS: usize = 50;
const SHIMS: usize = 10;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bundle(work: &Path, cgroup_root: &str, script: &str) -> PathBuf {
    let rootfs = work.join("rootfs");
    if !rootfs.exists() {
        common::busybox_rootfs(&rootfs);
    }
    let sandbox = work.join("sandbox");
    std::fs::create_dir_all(&sandbox).unwrap();
    let req = LaunchRequest {
        container_id: ContainerId { value: "bench".into(), parent: None },
        command: Some(CommandInfo { shell: Some(false), value: Some(script.into()), ..Default::default() }),
        ..Default::default()
    };
    let cfg = Config { cgroup_root: cgroup_root.into(), ..Default::default() };
    let place = Placement { sandbox_dir: sandbox, rootfs: Some(rootfs), ..Default::default() };
    let dir = work.join(format!("bundle-{}", script.replace('/', "_")));
    translate(&req, &cfg, &place).unwrap().write_bundle(&dir).unwrap();
    dir
}

/// Launch→exit latency of `<runtime> run` of `/bin/true`, in ms, over RUNS runs.
fn latencies(runtime: &Path, bundle: &Path, state: &Path, tag: &str) -> Vec<f64> {
    let mut out = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let id = format!("bench-{tag}-{i}");
        let start = Instant::now();
        let status = Command::new(runtime)
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(status.success(), "{} run failed", runtime.display());
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn smaps_rollup(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("Rss:"), get("Pss:"))
}

fn main() {
    if let Some(why) = common::cannot_run(true) {
        eprintln!("SKIPPED: runtime benchmark: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cgroups = common::CgroupRoot::new("bench");
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk-runtime"));
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_husk-shim"));
    let b = bundle(work.path(), &cgroups.name, "/bin/true");

    // Warm the page cache for both, then measure them in alternating halves.
    let _ = latencies(&husk, &b, &work.path().join("warm-h"), "warm-h");
    let _ = latencies(Path::new("runc"), &b, &work.path().join("warm-r"), "warm-r");
    let h = latencies(&husk, &b, &work.path().join("state-h"), "h");
    let r = latencies(Path::new("runc"), &b, &work.path().join("state-r"), "r");

    // Shim memory: SHIMS shims each holding a sleeping container.
    let sleeper = bundle(work.path(), &cgroups.name, "/bin/sleep");
    let config = sleeper.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(["/bin/sleep", "600"]);
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut mem = Vec::new();
    let mut states = Vec::new();
    for i in 0..SHIMS {
        let state = work.path().join(format!("shim-{i}"));
        let out = Command::new(&shim)
            .args(["start", "--id", &format!("bench-shim-{i}"), "--bundle"])
            .arg(&sleeper)
            .arg("--sandbox")
            .arg(work.path().join("sandbox"))
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success(), "husk-shim start: {}", String::from_utf8_lossy(&out.stderr));
        states.push(state);
    }
    std::thread::sleep(Duration::from_millis(200));
    for state in &states {
        let pid = husk_shim::shim::ProcessId::load(&state.join("shim.json")).unwrap().pid;
        mem.push(smaps_rollup(pid));
    }
    for (i, state) in states.iter().enumerate() {
        let _ = Command::new(&shim)
            .args(["cleanup", "--id", &format!("bench-shim-{i}"), "--bundle"])
            .arg(&sleeper)
            .arg("--sandbox")
            .arg(work.path().join("sandbox"))
            .arg("--state-dir")
            .arg(state)
            .output();
    }

    let (rss1, pss1) = mem[0];
    let pss_avg = mem.iter().map(|m| m.1).sum::<u64>() as f64 / mem.len() as f64;
    let rss_avg = mem.iter().map(|m| m.0).sum::<u64>() as f64 / mem.len() as f64;
    println!("launch→exit of /bin/true, {RUNS} runs each (ms)");
    println!("{:<14} {:>8} {:>8} {:>8}", "runtime", "p50", "p90", "p99");
    for (name, v) in [("husk-runtime", &h), ("runc", &r)] {
        println!("{:<14} {:>8.2} {:>8.2} {:>8.2}", name, percentile(v, 0.5), percentile(v, 0.9), percentile(v, 0.99));
    }
    let ratio = percentile(&h, 0.5) / percentile(&r, 0.5);
    println!("husk-runtime / runc (p50): {ratio:.2}   (goal: ≤ 0.5)");
    println!("husk-shim memory: first shim RSS {rss1} KiB, PSS {pss1} KiB; average over {SHIMS}: RSS {rss_avg:.0} KiB, PSS {pss_avg:.0} KiB   (goal: RSS ≤ 2560 KiB)");
    let json = serde_json::json!({
        "runs": RUNS,
        "husk_runtime_ms": {"p50": percentile(&h, 0.5), "p90": percentile(&h, 0.9), "p99": percentile(&h, 0.99)},
        "runc_ms": {"p50": percentile(&r, 0.5), "p90": percentile(&r, 0.9), "p99": percentile(&r, 0.99)},
        "ratio_p50": ratio,
        "shim_kib": {"first_rss": rss1, "first_pss": pss1, "avg_rss": rss_avg, "avg_pss": pss_avg, "shims": SHIMS},
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/husk-bench-runtime.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
