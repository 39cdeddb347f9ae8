//! Provisioning a container's root filesystem from a directory on the node (`LaunchRequest.rootfs`):
//! an overlay whose lower layer is that directory and whose upper layer is the container's own,
//! so the directory is never written and containers share it. The overlay is mounted at
//! `<container dir>/rootfs`; destroying the container unmounts it and removes it with the
//! container's layer, while the sandbox stays until the container is removed.
use std::path::{Path, PathBuf};

use tonic::Status;

/// Where the overlay is mounted, below the container's directory.
pub const MOUNT_POINT: &str = "rootfs";
/// The overlay's upper and work directories, below the container's directory.
const LAYER_DIR: &str = "rootfs.layer";

/// A checked rootfs directory, held open: the overlay is mounted from this handle, so a path
/// component swapped for a link after the check cannot redirect it.
pub struct Lower {
    fd: std::os::fd::OwnedFd,
    pub path: PathBuf,
}

/// Checks a requested rootfs directory and opens it.
pub fn check(value: &str, work_dir: &Path) -> Result<Lower, Status> {
    let bad = |rule: &str| Status::invalid_argument(format!("rootfs: `{}` {rule}", value.escape_debug()));
    if !value.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if value.contains('\0') || husk_oci::fs::has_parent_component(value) {
        return Err(bad("must not contain `..` or NUL"));
    }
    let missing =
        |e: &dyn std::fmt::Display| Status::failed_precondition(format!("rootfs: `{}`: {e}", value.escape_debug()));
    let canonical = std::fs::canonicalize(value).map_err(|e| missing(&e))?;
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        &canonical,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ENOTDIR => bad("is not a directory"),
        e => missing(&e),
    })?;
    // What the handle really is (every rule below applies to it, not to the path).
    use std::os::fd::AsRawFd;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| missing(&e))?;
    if real != canonical {
        return Err(bad("changed while it was being checked"));
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
    Ok(Lower { fd, path: real })
}

impl Lower {
    /// An image layer of the store (a directory the agent made itself).
    pub fn layer(path: &Path) -> std::io::Result<Lower> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(Lower { fd, path: path.to_path_buf() })
    }
}

/// Mounts the overlay of `lowers` (top first) for the container whose directory is `dir`;
/// returns the mount point. The layers go in as `/proc/self/fd/N` of handles held open, which
/// keeps the mount options short (a page at most) whatever the store's path, for images of
/// many layers too.
pub fn mount(dir: &Path, lowers: &[Lower]) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    let layer = dir.join(LAYER_DIR);
    let (upper, work, target) = (layer.join("upper"), layer.join("work"), dir.join(MOUNT_POINT));
    for d in [&upper, &work, &target] {
        let text = d.to_str().ok_or_else(|| std::io::Error::other(format!("{} is not UTF-8", d.display())))?;
        if text.contains([',', ':', '\\']) {
            return Err(std::io::Error::other(format!(
                "{text} has `,`, `:` or `\\`, which an overlay layer path cannot"
            )));
        }
    }
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d)?;
    }
    // The lower layer through the checked handle, not by its path again.
    let lowerdir: Vec<String> = lowers.iter().map(|l| format!("/proc/self/fd/{}", l.fd.as_raw_fd())).collect();
    let options = format!("lowerdir={},upperdir={},workdir={}", lowerdir.join(":"), upper.display(), work.display());
    if options.len() > 4000 {
        return Err(std::io::Error::other("the overlay's layer paths are too long for one mount"));
    }
    nix::mount::mount(Some("overlay"), &target, Some("overlay"), nix::mount::MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| {
            let paths: Vec<String> = lowers.iter().map(|l| l.path.display().to_string()).collect();
            std::io::Error::other(format!("mounting the overlay of {} on {}: {e}", paths.join(":"), target.display()))
        })?;
    Ok(target)
}

/// Unmounts and removes the root filesystem of the container whose directory is `dir` (the
/// overlay and its upper layer, or a copy): the destroy path's, idempotent.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    super::sweep::remove_tree(&dir.join(MOUNT_POINT))?;
    super::sweep::remove_tree(&dir.join(LAYER_DIR))
}
