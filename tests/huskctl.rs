//! huskctl against a real agent: every command, every output format parsed back, exit codes,
//! errors, and `huskctl shim` with the agent stopped.
mod common;

use std::process::Command;
use std::time::Duration;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{huskctl, ok, Agent};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}): {text}"))
}

fn lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().collect();
    v.sort();
    v
}

#[test]
fn every_command_against_a_real_agent() {
    require!(false);
    let agent = Agent::start("huskctl-cli");
    let files = tempfile::tempdir().unwrap();
    let launch = files.path().join("launch.json");
    std::fs::write(
        &launch,
        r#"{"container_id": {"value": "lc"},
            "command": {"value": "sleep 300"},
            "resources": [{"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
            "labels": {"labels": [{"key": "team", "value": "web"}]}}"#,
    )
    .unwrap();
    let task = files.path().join("task.json");
    std::fs::write(
        &task,
        r#"{"name": "t", "task_id": {"value": "t.1"}, "agent_id": {"value": "S1"},
            "command": {"value": "sleep 300"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.25}}]}"#,
    )
    .unwrap();

    let call = files.path().join("call.json");
    std::fs::write(
        &call,
        r#"{"type": "LAUNCH_CONTAINER", "launch_container": {
             "container_id": {"value": "mc"}, "command": {"value": "exit 0"}}}"#,
    )
    .unwrap();

    // Launch documents as Mesos tools write them: the agent API call, its bare object, a TaskInfo.
    assert_eq!(ok(&agent, &["launch", "-f", call.to_str().unwrap()]), "mc\n");
    assert_eq!(huskctl(&agent, &["wait", "mc"]).status.code(), Some(0));
    ok(&agent, &["rm", "mc"]);
    assert_eq!(ok(&agent, &["launch", "-f", launch.to_str().unwrap()]), "lc\n");
    assert_eq!(ok(&agent, &["launch", "-f", task.to_str().unwrap(), "--id", "tk"]), "tk\n");

    // ps in every format.
    let table = ok(&agent, &["ps"]);
    assert!(table.starts_with("ID ") && table.contains("lc ") && table.contains("tk "), "{table}");
    assert_eq!(lines(&ok(&agent, &["ps", "-q"])), ["lc", "tk"]);
    assert_eq!(json(&ok(&agent, &["ps", "-o", "json"])).as_array().unwrap().len(), 2);
    assert_eq!(yaml(&ok(&agent, &["ps", "-o", "yaml"])).as_array().unwrap().len(), 2);
    assert_eq!(ok(&agent, &["ps", "--label", "team=web", "-q"]), "lc\n");
    assert_eq!(ok(&agent, &["ps", "--state", "terminated", "-q"]), "");

    // inspect.
    let info = json(&ok(&agent, &["inspect", "lc"]));
    assert_eq!(info["container_id"]["value"], "lc");
    assert_eq!(info["state"], "RUNNING");
    assert!(info["container_status"]["executor_pid"].as_u64().unwrap() > 0);
    assert_eq!(yaml(&ok(&agent, &["inspect", "-o", "yaml", "lc"]))["container_id"]["value"], "lc");
    assert!(ok(&agent, &["inspect", "-o", "table", "tk"]).contains("sandbox"));

    // stats, once.
    let stats = json(&ok(&agent, &["stats", "--no-stream", "-o", "json"]));
    assert_eq!(stats.as_array().unwrap().len(), 2, "{stats}");
    assert!(stats[0]["mem_bytes"].as_u64().is_some(), "{stats}");
    assert!(ok(&agent, &["stats", "--no-stream", "lc"]).starts_with("ID  CPU"));

    // update, seen in the cgroup.
    assert_eq!(ok(&agent, &["update", "lc", "--mem", "128", "--cpus", "1"]), "lc\n");
    let memory = common::cgroup_mounts().into_iter().find(|m| m.ends_with("memory")).unwrap();
    let limit = std::fs::read_to_string(memory.join(&agent.cgroups.name).join("lc/memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (128u64 << 20).to_string());

    // kill with a signal; wait exits with the shell's status for it.
    assert_eq!(ok(&agent, &["kill", "-s", "TERM", "tk"]), "tk\n");
    let waited = huskctl(&agent, &["wait", "tk"]);
    assert_eq!(waited.status.code(), Some(143), "{}{}", waited.stdout, waited.stderr);
    assert_eq!(json(&waited.stdout)["state"], "TASK_KILLED");

    // stop: TERM, then KILL after the grace, and waits.
    assert_eq!(ok(&agent, &["stop", "-t", "5", "lc"]), "lc\n");
    assert_eq!(lines(&ok(&agent, &["ps", "-a", "-q", "--state", "terminated"])), ["lc", "tk"]);
    assert_eq!(ok(&agent, &["stop", "lc"]), "lc\n", "stopping a stopped container is fine");

    // run and logs.
    let out = huskctl(&agent, &["run", "--id", "lg", "--", "echo out; echo err >&2; exit 3"]);
    assert_eq!((out.status.code(), out.stdout.as_str(), out.stderr.as_str()), (Some(3), "out\n", "err\n"));
    let both = huskctl(&agent, &["logs", "lg"]);
    assert_eq!((both.stdout.as_str(), both.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!(ok(&agent, &["logs", "--stream", "stdout", "lg"]), "out\n");
    ok(&agent, &["run", "-d", "--id", "many", "--", "seq 1 5"]);
    huskctl(&agent, &["wait", "many"]);
    assert_eq!(ok(&agent, &["logs", "--tail", "2", "many"]), "4\n5\n");

    // Errors: stderr with the gRPC status, exit code 1 (2 for bad flags).
    let nope = huskctl(&agent, &["inspect", "nope"]);
    assert_eq!(nope.status.code(), Some(1));
    assert!(nope.stderr.contains("NotFound") && nope.stderr.contains("no container `nope`"), "{}", nope.stderr);
    let bad = huskctl(&agent, &["kill", "-s", "BOGUS", "lc"]);
    assert!(bad.status.code() == Some(1) && bad.stderr.contains("not a signal"), "{}", bad.stderr);
    assert_eq!(huskctl(&agent, &["ps", "--bogus"]).status.code(), Some(2));
    let state = huskctl(&agent, &["ps", "--state", "weird"]);
    assert!(state.status.code() == Some(1) && state.stderr.contains("--state `weird`"), "{}", state.stderr);
    let alive = huskctl(&agent, &["rm", "lc", "nope"]);
    assert_eq!(alive.status.code(), Some(1), "one of two failed");
    assert!(alive.stdout.contains("lc") && alive.stderr.contains("nope"), "{}{}", alive.stdout, alive.stderr);

    // rm -f stops a live container first.
    ok(&agent, &["run", "-d", "--id", "live", "--", "sleep 300"]);
    assert_eq!(ok(&agent, &["rm", "-f", "live", "tk", "lg", "many"]), "live\ntk\nlg\nmany\n");
    assert_eq!(ok(&agent, &["ps", "-a", "-q"]), "");

    // The node and the versions.
    let node = json(&ok(&agent, &["info", "-o", "json"]));
    assert!(node["total_resources"].as_array().is_some_and(|r| !r.is_empty()), "{node}");
    assert!(ok(&agent, &["info"]).contains("isolators"));
    let versions = json(&ok(&agent, &["version", "-o", "json"]));
    assert_eq!(versions["huskctl"], env!("CARGO_PKG_VERSION"));
    assert!(versions["agent"]["version"].is_string(), "{versions}");
    assert!(ok(&agent, &["completion", "bash"]).contains("huskctl"));
}

#[test]
fn run_flags_reach_the_container() {
    require!(false);
    let agent = Agent::start("huskctl-run");
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("env"), "# settings\nFROM_FILE=yes\nOVERRIDDEN=file\n").unwrap();
    let shared = files.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("data.txt"), "hello\n").unwrap();
    std::fs::write(files.path().join("tool.sh"), "#!/bin/sh\necho tool ran\n").unwrap();
    let script = "echo FROM_FILE=$FROM_FILE; echo OVERRIDDEN=$OVERRIDDEN; cat data/data.txt; \
                  touch data/new 2>/dev/null && echo writable || echo read-only; \
                  grep CapEff /proc/self/status; ./bin/tool";
    let env_file = files.path().join("env");
    let volume = format!("{}:data:ro", shared.display());
    let uri = format!("file://{}/tool.sh,executable,output=bin/tool", files.path().display());
    let args = [
        "run",
        "--id",
        "flags",
        "--rm",
        "--cpus",
        "0.5",
        "--mem",
        "64",
        "--env-file",
        env_file.to_str().unwrap(),
        "-e",
        "OVERRIDDEN=flag",
        "-v",
        &volume,
        "--cap-drop",
        "CHOWN",
        "--uri",
        &uri,
        "--",
        script,
    ];
    let out = huskctl(&agent, &args);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let seen: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(seen[..4], ["FROM_FILE=yes", "OVERRIDDEN=flag", "hello", "read-only"], "{}", out.stdout);
    let eff = u64::from_str_radix(seen[4].split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff & 1, 0, "CAP_CHOWN (bit 0) dropped: {}", seen[4]);
    assert!(eff & (1 << 3) != 0, "CAP_FOWNER (a default) kept: {}", seen[4]);
    assert_eq!(seen[5], "tool ran");
    assert_eq!(ok(&agent, &["ps", "-a", "-q"]), "", "--rm removed it");
    assert!(!shared.join("new").exists());

    // Capability flags shape root's set; they never grant a non-root user anything.
    let out = huskctl(
        &agent,
        &["run", "--rm", "-u", "nobody", "--cap-drop", "NET_RAW", "--", "grep CapEff /proc/self/status"],
    );
    assert_eq!(out.stdout.split_whitespace().nth(1), Some("0000000000000000"), "{}{}", out.stdout, out.stderr);

    let rootfs = files.path().join("busybox");
    common::busybox_rootfs(&rootfs);
    let out = huskctl(&agent, &["run", "--rm", "--rootfs", rootfs.to_str().unwrap(), "--", "head -1 /etc/passwd"]);
    assert_eq!(out.stdout, "root:x:0:0:root:/root:/bin/sh\n", "{}", out.stderr);
    // A working directory the rootfs lacks is made in the container's layer, not in the rootfs.
    let out = huskctl(&agent, &["run", "--rm", "--rootfs", rootfs.to_str().unwrap(), "-w", "/srv/app", "--", "pwd"]);
    assert_eq!(out.stdout, "/srv/app\n", "{}", out.stderr);
    assert!(!rootfs.join("srv").exists(), "the rootfs directory is never written");
    let out = huskctl(&agent, &["run", "--rm", "-w", "/proc", "--", "pwd"]);
    assert_eq!(out.stdout, "/proc\n", "{}", out.stderr);
    let bad = huskctl(&agent, &["run", "-w", "/no/such/dir", "--", "true"]);
    assert!(
        bad.status.code() == Some(1) && bad.stderr.contains("working_dir") && bad.stderr.contains("not a directory"),
        "{}",
        bad.stderr
    );
    let bad = huskctl(&agent, &["run", "-w", "relative", "--", "true"]);
    assert!(bad.status.code() == Some(1) && bad.stderr.contains("must be an absolute path"), "{}", bad.stderr);

    let bad = huskctl(&agent, &["run", "--cpus", "1", "--resources", "cpus:1", "--", "true"]);
    assert!(bad.status.code() == Some(1) && bad.stderr.contains("both give `cpus`"), "{}", bad.stderr);
    let bad = huskctl(&agent, &["run", "-v", "relative:data", "--", "true"]);
    assert!(bad.status.code() == Some(1) && bad.stderr.contains("must be absolute"), "{}", bad.stderr);
    let bad = huskctl(&agent, &["run", "--uri", "http://h/a,shiny", "--", "true"]);
    assert!(bad.status.code() == Some(1) && bad.stderr.contains("unknown option `shiny`"), "{}", bad.stderr);
    let bad = huskctl(&agent, &["run", "--cap-add", "NOT_A_CAP", "--", "true"]);
    assert!(bad.status.code() == Some(1) && bad.stderr.contains("unknown capability"), "{}", bad.stderr);

    // Security options: a read-only root, a sysctl in the container's own IPC namespace, its
    // oom_score_adj (raised: lowering needs CAP_SYS_RESOURCE, which a CI sandbox may lack); a
    // host-wide sysctl is refused with the rule.
    let out = huskctl(
        &agent,
        &[
            "run",
            "--rm",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--read-only",
            "--sysctl",
            "kernel.msgmax=4321",
            "--oom-score-adj",
            "7",
            "--group-add",
            "4242",
            "--group-add",
            "44",
            "--",
            "touch /x 2>/dev/null || echo ro; cat /proc/sys/kernel/msgmax /proc/self/oom_score_adj; id -G",
        ],
    );
    assert_eq!(out.stdout, "ro\n4321\n7\n0 44 4242\n", "{}", out.stderr);
    let bad = huskctl(&agent, &["run", "--sysctl", "kernel.panic=1", "--", "true"]);
    assert!(
        bad.status.code() == Some(1) && bad.stderr.contains("security.sysctls[kernel.panic]: is not scoped"),
        "{}",
        bad.stderr
    );
    let bad = huskctl(&agent, &["run", "--privileged", "--", "true"]);
    assert!(
        bad.status.code() == Some(1) && bad.stderr.contains("security.privileged: is not allowed by this agent"),
        "{}",
        bad.stderr
    );
    let bad = huskctl(&agent, &["run", "--privileged", "--cap-add", "NET_ADMIN", "--", "true"]);
    assert!(bad.status.code() == Some(2) && bad.stderr.contains("cannot be used with"), "{}", bad.stderr);
}

#[test]
fn shim_inspect_answers_while_the_agent_is_stopped() {
    require!(false);
    let mut agent = Agent::start("huskctl-shim");
    ok(&agent, &["run", "-d", "--id", "sh", "--", "sleep 300"]);
    agent.kill9();
    let run_dir = agent.path("run");
    let run = run_dir.to_str().unwrap();
    let table = ok(&agent, &["shim", "ls", "--runtime-dir", run]);
    assert!(table.lines().any(|l| l.starts_with("sh ") && l.contains("running")), "{table}");
    assert_eq!(ok(&agent, &["shim", "ls", "-q", "--runtime-dir", run]), "sh\n");
    let view = json(&ok(&agent, &["shim", "inspect", "sh", "--runtime-dir", run]));
    assert!(view["shim_alive"].as_bool().unwrap(), "{view}");
    assert!(view["state"]["pid"].as_u64().unwrap() > 0, "{view}");
    assert!(!view["processes"].as_array().unwrap().is_empty(), "{view}");
    // Protobuf JSON writes 64-bit integers as strings.
    let rss: u64 = view["statistics"]["mem_rss_bytes"].as_str().unwrap().parse().unwrap();
    assert!(rss > 0, "{view}");
    let missing = huskctl(&agent, &["shim", "inspect", "nope", "--runtime-dir", run]);
    assert!(missing.status.code() == Some(1) && missing.stderr.contains("no shim `nope`"), "{}", missing.stderr);
    let outside = huskctl(&agent, &["shim", "inspect", "../etc", "--runtime-dir", run]);
    assert_eq!(outside.status.code(), Some(1), "ids are checked before any path is built");

    agent.restart();
    ok(&agent, &["rm", "-f", "sh"]);
}

#[test]
fn logs_since_a_time() {
    require!(false);
    let agent = Agent::start("huskctl-since");
    ok(&agent, &["run", "-d", "--id", "talk", "--", "echo early; sleep 3; echo late; sleep 300"]);
    let until = |text: &str| {
        for _ in 0..200 {
            if ok(&agent, &["logs", "talk"]).contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("`{text}` never reached the log");
    };
    until("early");
    // More than the one-second precision after `early`, before `late`.
    std::thread::sleep(Duration::from_millis(1500));
    let date = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"]).output().unwrap();
    let mark = String::from_utf8(date.stdout).unwrap().trim().to_string();
    until("late");
    assert_eq!(ok(&agent, &["logs", "--since", &mark, "talk"]), "late\n");
    assert_eq!(ok(&agent, &["logs", "--since", "1h", "talk"]), "early\nlate\n");
    assert_eq!(ok(&agent, &["logs", "--since", "1h", "--tail", "1", "talk"]), "late\n");
    let bad = huskctl(&agent, &["logs", "--since", "yesterday", "talk"]);
    assert!(bad.status.code() == Some(2) && bad.stderr.contains("RFC 3339"), "{}", bad.stderr);
    ok(&agent, &["rm", "-f", "talk"]);
}
