//! Structural checks of an OCI runtime spec, whoever wrote it: the invariants a runtime relies
//! on before it forks anything. Used on husk's own translations (tests) and on bundles handed to
//! husk's runtime.
use std::collections::HashSet;
use std::path::{Component, Path};

use oci_spec::runtime::{Capabilities, Spec};

use crate::error::{Error, Result};

fn absolute_clean(p: &Path, field: &str) -> Result<()> {
    if !p.is_absolute() {
        return Err(Error::invalid(field, format!("`{}` must be an absolute path", p.display())));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(field, format!("`{}` must not contain `..`", p.display())));
    }
    Ok(())
}

fn subset(a: &Option<Capabilities>, b: &Option<Capabilities>, what: &str) -> Result<()> {
    let empty = Capabilities::new();
    let (a, b) = (a.as_ref().unwrap_or(&empty), b.as_ref().unwrap_or(&empty));
    if let Some(extra) = a.difference(b).next() {
        return Err(Error::invalid("process.capabilities", format!("CAP_{extra} is in the {what}")));
    }
    Ok(())
}

/// Checks `spec` for what would make a container fail or behave other than asked.
pub fn check_spec(spec: &Spec) -> Result<()> {
    if !spec.version().starts_with("1.") {
        return Err(Error::invalid("ociVersion", format!("`{}` is not a 1.x runtime spec", spec.version())));
    }
    let root = spec.root().as_ref().ok_or_else(|| Error::invalid("root", "is required"))?;
    if root.path().as_os_str().is_empty() {
        return Err(Error::invalid("root.path", "must not be empty"));
    }
    let process = spec.process().as_ref().ok_or_else(|| Error::invalid("process", "is required"))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(Error::invalid("process.args", "must name the program to run")),
    }
    absolute_clean(process.cwd(), "process.cwd")?;
    for (i, kv) in process.env().iter().flatten().enumerate() {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() && !kv.contains('\0') => {}
            _ => return Err(Error::invalid(format!("process.env[{i}]"), "must be `NAME=value` without NUL")),
        }
    }
    if let Some(caps) = process.capabilities() {
        subset(caps.effective(), caps.permitted(), "effective set but not the permitted set")?;
        subset(caps.permitted(), caps.bounding(), "permitted set but not the bounding set")?;
        // An ambient capability outside the permitted or inheritable set is not refused: the
        // kernel does not raise it, and runc runs such a spec (its own `runc spec` writes one).
    }
    let mut seen = Vec::new();
    for r in process.rlimits().iter().flatten() {
        if seen.contains(&r.typ()) {
            return Err(Error::invalid("process.rlimits", format!("{:?} is set twice", r.typ())));
        }
        seen.push(r.typ());
        if r.soft() > r.hard() {
            return Err(Error::invalid("process.rlimits", format!("{:?}: soft limit above hard limit", r.typ())));
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        absolute_clean(m.destination(), &format!("mounts[{i}].destination"))?;
    }
    let Some(linux) = spec.linux() else { return Ok(()) };
    let mut types = HashSet::new();
    let mut new_uts = false;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !types.insert(ns.typ()) {
            return Err(Error::invalid(format!("linux.namespaces[{i}]"), format!("{:?} is listed twice", ns.typ())));
        }
        if let Some(p) = ns.path() {
            absolute_clean(p, &format!("linux.namespaces[{i}].path"))?;
        } else if ns.typ() == oci_spec::runtime::LinuxNamespaceType::Uts {
            new_uts = true;
        }
    }
    if spec.hostname().is_some() && !new_uts {
        return Err(Error::invalid("hostname", "needs a new uts namespace"));
    }
    if let Some(p) = linux.cgroups_path() {
        absolute_clean(p, "linux.cgroupsPath")?;
    }
    if let Some(res) = linux.resources() {
        if let Some(cpu) = res.cpu() {
            if cpu.shares().is_some_and(|s| s < 2) {
                return Err(Error::invalid("linux.resources.cpu.shares", "must be at least 2"));
            }
            if cpu.quota().is_some_and(|q| q > 0 && q < 1000) {
                return Err(Error::invalid("linux.resources.cpu.quota", "must be at least 1000 µs"));
            }
            if cpu.period().is_some_and(|p| !(1000..=1_000_000).contains(&p)) {
                return Err(Error::invalid("linux.resources.cpu.period", "must be between 1 ms and 1 s"));
            }
        }
        if let Some(mem) = res.memory() {
            if mem.limit().is_some_and(|l| l == 0 || l < -1) {
                return Err(Error::invalid("linux.resources.memory.limit", "must be positive or -1"));
            }
        }
        if let Some(p) = res.pids() {
            if p.limit() == 0 || p.limit() < -1 {
                return Err(Error::invalid("linux.resources.pids.limit", "must be positive or -1"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "env": ["A=1"], "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "hostname": "h",
            "linux": {"namespaces": [{"type": "uts"}, {"type": "pid"}], "cgroupsPath": "/a/b"}
        })
    }

    fn check(v: serde_json::Value) -> Result<()> {
        check_spec(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn accepts_a_sane_spec_and_names_each_broken_rule() {
        check(base()).unwrap();
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/process/args", serde_json::json!([]), "process.args"),
            ("/process/cwd", serde_json::json!("rel"), "process.cwd"),
            ("/process/env", serde_json::json!(["NOEQUALS"]), "process.env[0]"),
            ("/mounts/0/destination", serde_json::json!("/a/../b"), "mounts[0].destination"),
            ("/linux/namespaces", serde_json::json!([{"type": "pid"}, {"type": "pid"}]), "linux.namespaces[1]"),
            ("/linux/cgroupsPath", serde_json::json!("rel/x"), "linux.cgroupsPath"),
            ("/ociVersion", serde_json::json!("0.9"), "ociVersion"),
        ];
        for (pointer, value, field) in cases {
            let mut v = base();
            *v.pointer_mut(pointer).unwrap() = value;
            assert_eq!(check(v).unwrap_err().field(), Some(field), "{pointer}");
        }
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        assert_eq!(check(v).unwrap_err().field(), Some("hostname"));
        let mut v = base();
        v["process"]["capabilities"] =
            serde_json::json!({"bounding": [], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]});
        assert!(check(v)
            .unwrap_err()
            .to_string()
            .contains("CAP_KILL is in the permitted set but not the bounding set"));
        // As `runc spec` writes it: an ambient capability the kernel will not raise is no error.
        let mut v = base();
        v["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]});
        assert!(check(v).is_ok());
        let mut v = base();
        v["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        assert!(check(v).is_err());
        let mut v = base();
        v["linux"]["resources"] = serde_json::json!({"cpu": {"shares": 1}});
        assert!(check(v).is_err());
    }
}
