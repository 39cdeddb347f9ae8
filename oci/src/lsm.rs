//! The node's Linux security modules, as a launch's AppArmor profile needs them: whether the
//! kernel runs AppArmor or SELinux, and which AppArmor profiles are loaded.
use std::path::Path;

use crate::error::{Error, Result};

const APPARMOR_FS: &str = "/sys/kernel/security/apparmor";

/// AppArmor is enabled when the kernel has the module loaded and enforcing (runc's rule).
pub fn apparmor_enabled() -> bool {
    Path::new(APPARMOR_FS).is_dir()
        && std::fs::read("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.starts_with(b"Y"))
}

/// SELinux is enabled when selinuxfs is there to say so.
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Whether the kernel has profile `name` loaded (`/sys/kernel/security/apparmor/profiles` lists
/// one per line as `name (mode)`).
fn apparmor_loaded(name: &str) -> std::io::Result<bool> {
    let list = std::fs::read_to_string(Path::new(APPARMOR_FS).join("profiles"))?;
    Ok(list.lines().any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name)))
}

/// The AppArmor profile a process is to exec into, from the profile name a launch gives
/// (`field`): `None` for `unconfined`. The name must be a loaded profile on a node that runs
/// AppArmor; anything else fails here, before the container exists.
pub fn apparmor_profile(name: &str, field: &str) -> Result<Option<String>> {
    if name.is_empty() || name.len() > 4096 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(field, "must be a profile name without spaces or control characters"));
    }
    if name == "unconfined" {
        return Ok(None);
    }
    if !apparmor_enabled() {
        return Err(Error::missing(
            field,
            format!("profile `{name}` was asked for, but AppArmor is not enabled on this node"),
        ));
    }
    match apparmor_loaded(name) {
        Ok(true) => Ok(Some(name.to_string())),
        Ok(false) => Err(Error::missing(
            field,
            format!("AppArmor profile `{name}` is not loaded on this node (load it with apparmor_parser)"),
        )),
        Err(e) => Err(Error::missing(field, format!("{APPARMOR_FS}/profiles: {e}"))),
    }
}
