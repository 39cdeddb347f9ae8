//! Linux security modules: the AppArmor profile and the SELinux label a process execs into
//! (`process.apparmorProfile`, `process.selinuxLabel`, OCI runtime spec "Linux Process").
//!
//! Both are set the way runc sets them: written to the calling thread's `attr/.../exec` in
//! procfs just before the container's process execs, so the kernel switches it at exec. A
//! profile or label asked for on a host whose kernel does not run that module is an error, found
//! before anything is forked (runc finds the AppArmor one only inside the container's init).
use std::io::Write;

use husk_oci::lsm::{apparmor_enabled, selinux_enabled};
use oci_spec::runtime::Process;

use super::Error;

fn asked(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Refuses what this host cannot apply, and profiles or labels that cannot be written whole.
pub fn check(process: &Process, selinux_mount_label: Option<&str>) -> Result<(), Error> {
    let refuse = |field: &str, what: &str| Error::Bundle(format!("{field}: {what}"));
    if let Some(profile) = asked(process.apparmor_profile()) {
        if profile.len() > 4096 || profile.chars().any(|c| c.is_control()) {
            return Err(refuse("process.apparmorProfile", "must be a profile name without control characters"));
        }
        if !apparmor_enabled() {
            return Err(refuse(
                "process.apparmorProfile",
                &format!("profile `{profile}` was asked for, but AppArmor is not enabled on this host"),
            ));
        }
    }
    for (field, label) in
        [("process.selinuxLabel", asked(process.selinux_label())), ("linux.mountLabel", selinux_mount_label)]
    {
        let Some(label) = label.filter(|l| !l.is_empty()) else { continue };
        if label.len() > 4096 || label.chars().any(|c| c.is_control() || c == '"') {
            return Err(refuse(field, "must be an SELinux context without control characters or quotes"));
        }
        // A mount label on a host without SELinux means nothing and is left alone, as runc
        // does; a process label is refused, as runc refuses it.
        if field == "process.selinuxLabel" && !selinux_enabled() {
            return Err(refuse(
                field,
                &format!("label `{label}` was asked for, but SELinux is not enabled on this host"),
            ));
        }
    }
    Ok(())
}

/// Writes `value` to the first of `paths` (under the calling thread's procfs) the kernel has,
/// after making sure the file is procfs's: a volume mounted over /proc (through a symlink in
/// the image, say) must not take the write and leave the process unconfined (runc's
/// CVE-2019-16884).
fn write_attr(paths: &[&str], value: &str, field: &str, what: &str) -> Result<(), Error> {
    let fail = |p: &str, e: String| Error::Process(format!("{field}: {what}: {p}: {e}"));
    let mut last = None;
    for p in paths {
        match std::fs::OpenOptions::new().write(true).open(p) {
            Ok(mut f) => {
                let fs = nix::sys::statfs::fstatfs(&f).map_err(|e| fail(p, super::describe(e)))?;
                if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
                    return Err(fail(p, "not on procfs: something is mounted over the container's /proc".into()));
                }
                return f.write_all(value.as_bytes()).map_err(|e| {
                    // The kernel's answer to a profile it does not know.
                    let hint = match e.raw_os_error() {
                        Some(nix::libc::ENOENT) | Some(nix::libc::EINVAL) => " (is it loaded on this node?)",
                        _ => "",
                    };
                    fail(p, format!("{}{hint}", super::describe(e)))
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(fail(p, super::describe(e))),
        }
    }
    let e = last.map(super::describe).unwrap_or_default();
    Err(fail(&paths.join(" or "), e))
}

/// Sets the profile and label `process` execs into. Called in the container (its /proc mounted)
/// before privileges are dropped.
pub fn apply(process: &Process) -> Result<(), Error> {
    if let Some(profile) = asked(process.apparmor_profile()) {
        // Kernels with stacked modules (5.8+) have AppArmor's own directory; older ones the
        // shared attribute.
        write_attr(
            &["/proc/thread-self/attr/apparmor/exec", "/proc/thread-self/attr/exec"],
            &format!("exec {profile}"),
            "process.apparmorProfile",
            &format!("applying AppArmor profile `{profile}`"),
        )?;
    }
    if let Some(label) = asked(process.selinux_label()) {
        write_attr(
            &["/proc/thread-self/attr/exec"],
            label,
            "process.selinuxLabel",
            &format!("setting SELinux label `{label}`"),
        )?;
    }
    Ok(())
}

/// The mount data of a mount made for the container (tmpfs, devpts, mqueue) with the spec's
/// SELinux mount label added, when SELinux is enabled (runc's `FormatMountLabel`).
pub fn with_mount_label(data: String, mount_label: Option<&str>) -> String {
    match mount_label.filter(|l| !l.is_empty()) {
        Some(label) if selinux_enabled() => {
            let context = format!("context=\"{label}\"");
            if data.is_empty() {
                context
            } else {
                format!("{data},{context}")
            }
        }
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        let mut base = serde_json::json!({"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}});
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn profiles_and_labels_this_host_cannot_apply_are_refused_up_front() {
        assert!(check(&process(serde_json::json!({})), None).is_ok());
        assert!(check(&process(serde_json::json!({"apparmorProfile": "", "selinuxLabel": ""})), Some("")).is_ok());
        let e = check(&process(serde_json::json!({"apparmorProfile": "a\nb"})), None).unwrap_err();
        assert_eq!(e.to_string(), "process.apparmorProfile: must be a profile name without control characters");
        let e = check(&process(serde_json::json!({"selinuxLabel": "a\"b"})), None).unwrap_err();
        assert!(e.to_string().starts_with("process.selinuxLabel: must be an SELinux context"), "{e}");
        let e = check(&process(serde_json::json!({})), Some("x\"y")).unwrap_err();
        assert!(e.to_string().starts_with("linux.mountLabel: "), "{e}");
        if !apparmor_enabled() {
            let e = check(&process(serde_json::json!({"apparmorProfile": "husk-test"})), None).unwrap_err();
            assert_eq!(
                e.to_string(),
                "process.apparmorProfile: profile `husk-test` was asked for, but AppArmor is not enabled on this host"
            );
        }
        let label = "system_u:object_r:container_file_t:s0:c1,c2";
        assert!(check(&process(serde_json::json!({})), Some(label)).is_ok(), "categories are comma-separated");
        if !selinux_enabled() {
            let e = check(&process(serde_json::json!({"selinuxLabel": "system_u:system_r:container_t:s0"})), None)
                .unwrap_err();
            assert!(e.to_string().contains("but SELinux is not enabled on this host"), "{e}");
            // A mount label alone is no error without SELinux, and changes no mount.
            assert!(check(&process(serde_json::json!({})), Some("system_u:object_r:container_file_t:s0")).is_ok());
            assert_eq!(with_mount_label("mode=755".into(), Some(label)), "mode=755");
        } else {
            assert_eq!(with_mount_label("mode=755".into(), Some(label)), format!("mode=755,context=\"{label}\""));
        }
    }
}
