//! Provisioning a container's root filesystem from a directory on the node (`LaunchRequest.rootfs`):
//! an overlay whose lower layer is that directory and whose upper layer is the container's own,
//! so the directory is never written and containers share it. The overlay is mounted at
//! `<container dir>/rootfs` and goes with the container's directory (the filesystem isolator's
//! cleanup detaches every mount under it).
use std::path::{Path, PathBuf};

use tonic::Status;

/// Where the overlay is mounted, below the container's directory.
pub const MOUNT_POINT: &str = "rootfs";
/// The overlay's upper and work directories, below the container's directory.
const LAYER_DIR: &str = "rootfs.layer";

/// Checks a requested rootfs directory; returns its real path.
pub fn check(value: &str, work_dir: &Path) -> Result<PathBuf, Status> {
    let bad = |rule: &str| Status::invalid_argument(format!("rootfs: `{}` {rule}", value.escape_debug()));
    if !value.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if value.contains('\0') || husk_oci::fs::has_parent_component(value) {
        return Err(bad("must not contain `..` or NUL"));
    }
    let real = std::fs::canonicalize(value)
        .map_err(|e| Status::failed_precondition(format!("rootfs: `{}`: {e}", value.escape_debug())))?;
    if !real.is_dir() {
        return Err(bad("is not a directory"));
    }
    if real == Path::new("/") {
        return Err(bad("is the host's root: leave rootfs unset to run on the host filesystem"));
    }
    if real.starts_with(work_dir) {
        return Err(bad("is inside the agent's work dir"));
    }
    // overlayfs takes its layers in a comma- and colon-separated option string.
    if real.to_string_lossy().contains([',', ':', '\\']) {
        return Err(bad("contains `,`, `:` or `\\`, which an overlay layer path cannot"));
    }
    Ok(real)
}

/// Mounts the overlay of `lower` for the container whose directory is `dir`; returns the mount
/// point.
pub fn mount(dir: &Path, lower: &Path) -> std::io::Result<PathBuf> {
    let layer = dir.join(LAYER_DIR);
    let (upper, work, target) = (layer.join("upper"), layer.join("work"), dir.join(MOUNT_POINT));
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d)?;
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    if options.len() > 4000 {
        return Err(std::io::Error::other("the overlay's layer paths are too long for one mount"));
    }
    nix::mount::mount(Some("overlay"), &target, Some("overlay"), nix::mount::MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| {
            std::io::Error::other(format!("mounting the overlay of {} on {}: {e}", lower.display(), target.display()))
        })?;
    Ok(target)
}
