//! `huskctl bundle`: a Mesos launch document in, a bundle runc runs out; clear errors and exit
//! codes for bad input.
mod common;

use std::process::Command;
use std::time::Duration;

use common::{busybox_rootfs, run_with_deadline, CgroupRoot};

fn huskctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_huskctl"))
}

#[test]
fn mesos_launch_call_becomes_a_bundle_runc_runs() {
    require!(true);
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let launch = work.path().join("launch.json");
    std::fs::write(
        &launch,
        r#"{"type": "LAUNCH_CONTAINER", "launch_container": {
             "container_id": {"value": "ctl"},
             "command": {"value": "echo hello from $(hostname) as $(id -u)"},
             "resources": [{"name": "mem", "type": "SCALAR", "scalar": {"value": 48}}],
             "container": {"type": "MESOS", "hostname": "from-json"}}}"#,
    )
    .unwrap();
    let bundle = work.path().join("bundle");
    let cgroups = CgroupRoot::new("ctl");
    let out = run_with_deadline(
        huskctl()
            .args(["bundle", "--bundle"])
            .arg(&bundle)
            .arg("--rootfs")
            .arg(&rootfs)
            .args(["--cgroup-root", &cgroups.name, "-f"])
            .arg(&launch),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), bundle.join("config.json").display().to_string());
    assert!(bundle.join("sandbox").is_dir(), "default sandbox created");

    let state = work.path().join("runc-state");
    let id = format!("husk-ctl-{}", std::process::id());
    let run = run_with_deadline(
        Command::new("runc").arg("--root").arg(&state).args(["run", "--bundle"]).arg(&bundle).arg(&id),
        Duration::from_secs(60),
    );
    let _ = Command::new("runc").arg("--root").arg(&state).args(["delete", "--force", &id]).output();
    assert!(!run.timed_out && run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "hello from from-json as 0");
}

#[test]
fn flags_form_and_task_info() {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b");
    let out = run_with_deadline(
        huskctl().args(["bundle", "--bundle"]).arg(&bundle).args([
            "--resources",
            "cpus:2;mem:256",
            "--limit",
            "mem=inf",
            "-e",
            "A=1",
            "--no-shell",
            "--",
            "/bin/echo",
            "x",
        ]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], serde_json::json!(["/bin/echo", "x"]));
    assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 2048);
    assert!(spec["linux"]["resources"]["memory"].get("limit").is_none(), "mem=inf: no limit");
    assert!(spec["process"]["env"].as_array().unwrap().contains(&serde_json::json!("A=1")));

    let task = work.path().join("task.json");
    std::fs::write(
        &task,
        r#"{"name": "t", "task_id": {"value": "t.1"}, "agent_id": {"value": "S1"}, "command": {"value": "true"}}"#,
    )
    .unwrap();
    let out = run_with_deadline(
        huskctl().args(["bundle", "--bundle"]).arg(&bundle).arg("-f").arg(&task),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "a TaskInfo without --id gets the default id: {}", out.stderr);
    let out = run_with_deadline(
        huskctl().args(["bundle", "--bundle"]).arg(&bundle).args(["--id", "task1", "-f"]).arg(&task),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn bad_input_names_the_field_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b");
    let sandbox = work.path().join("s");
    std::fs::create_dir(&sandbox).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--resources", "cpus:-1", "--", "true"], "--resources[0] (cpus): must not be negative"),
        (&["--id", "a/b", "--", "true"], "container_id.value: `a/b` contains `/`"),
        (&["--hostname", "bad_name", "--", "true"], "container.hostname:"),
        (&["--limit", "cpus=abc", "--", "true"], "--limit `cpus=abc`"),
        (&["-e", "NOEQUALS", "--", "true"], "--env `NOEQUALS` is not NAME=VALUE"),
        (&["--rootfs", "/nonexistent-husk-rootfs", "--", "true"], "rootfs: `/nonexistent-husk-rootfs`"),
        (&[], "give a launch file with -f FILE, or a command after `--`"),
    ];
    for (args, expected) in cases {
        let out = run_with_deadline(
            huskctl().args(["bundle", "--bundle"]).arg(&bundle).arg("--sandbox").arg(&sandbox).args(*args),
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{args:?}: {:?} lacks {expected:?}", out.stderr);
        assert!(!bundle.exists(), "{args:?} wrote a bundle");
    }
    // Without --sandbox, the default sandbox it had to create goes again.
    let out = run_with_deadline(
        huskctl().args(["bundle", "--bundle"]).arg(&bundle).args(["--resources", "mem:NaN", "--", "true"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(!bundle.exists(), "a refused launch leaves no bundle or sandbox directory");

    let out = run_with_deadline(huskctl().args(["bundle", "--no-such-flag"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = run_with_deadline(
        huskctl().args(["bundle", "--bundle", "/tmp/x", "-f", "l.json", "--resources", "cpus:1"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "flags that -f would ignore are refused: {}", out.stderr);
    let out = run_with_deadline(
        huskctl()
            .args(["bundle", "--bundle"])
            .arg(&bundle)
            .args(["--limit", "mem=1", "--limit", "mem=2", "--", "true"]),
        Duration::from_secs(30),
    );
    assert!(out.stderr.contains("--limit `mem` is given twice"), "{}", out.stderr);
}
