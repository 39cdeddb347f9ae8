//! The container's filesystem: mounts of the spec, default devices, pivot_root, masked and
//! read-only paths. [`parse_options`] is the pure part (what an option list means); the rest
//! runs in the container's init, inside its new mount namespace.
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{Mount, Spec};

use super::Error;
use crate::cgroups::{Cgroup, Layout};

/// What an OCI mount option list asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    /// Propagation changes, applied after the mount.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options (`mode=755`, `size=64k`, ...).
    pub data: Vec<String>,
    /// `rro`: read-only for the whole tree.
    pub recursive_ro: bool,
}

/// Parses mount options as runc does.
pub fn parse_options(options: &[String]) -> Options {
    let mut o = Options { flags: MsFlags::empty(), propagation: Vec::new(), data: Vec::new(), recursive_ro: false };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "rro" => {
                o.recursive_ro = true;
                continue;
            }
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable") => {
                let mut f = match p.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if p.starts_with('r') {
                    f |= MsFlags::MS_REC;
                }
                o.propagation.push(f);
                continue;
            }
            data => {
                o.data.push(data.to_string());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Process(format!("{what}: {}", super::describe(e)))
}

/// `dest` inside `rootfs`, with every symlink resolved inside it: a mount target never leaves
/// the container's root, however the image's links point.
pub fn target(rootfs: &Path, dest: &Path) -> Result<PathBuf, Error> {
    husk_oci::fs::resolve_in_root(rootfs, dest).map_err(|e| err(format!("resolving {}", dest.display()), e))
}

/// Creates the mount point `target` (a directory, or a file when `file` is set), never through
/// a symlink.
fn mount_point(rootfs: &Path, target: &Path, file: bool) -> Result<(), Error> {
    let rel = target.strip_prefix(rootfs).map_err(|_| err(target.display(), "outside the root"))?;
    let (dir, name) = match (file, rel.parent(), rel.file_name()) {
        (true, Some(parent), Some(name)) => (parent, Some(name)),
        _ => (rel, None),
    };
    husk_oci::fs::mkdir_in_root(rootfs, dir, 0o755).map_err(|e| err(format!("creating {}", target.display()), e))?;
    if let Some(name) = name {
        let path = rootfs.join(dir).join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags_nofollow()
                .open(&path)
                .map_err(|e| err(format!("creating {}", path.display()), e))?;
        }
    }
    Ok(())
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

/// Mounts one spec mount at its target inside `rootfs`.
fn mount_one(rootfs: &Path, m: &Mount, cgroup: Option<&Cgroup>, mount_label: Option<&str>) -> Result<(), Error> {
    let dest = target(rootfs, m.destination())?;
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let what = format!(
        "mounting {} on {}",
        m.source().as_deref().unwrap_or(Path::new(typ)).display(),
        m.destination().display()
    );
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    if typ == "cgroup" {
        return mount_cgroup(rootfs, &dest, &opts, cgroup).map_err(|e| err(&what, e));
    }
    if is_bind {
        let source = m.source().as_deref().ok_or_else(|| err(&what, "a bind mount needs a source"))?;
        let meta = std::fs::metadata(source).map_err(|e| err(&what, e))?;
        mount_point(rootfs, &dest, !meta.is_dir())?;
        let rec = opts.flags & MsFlags::MS_REC;
        mount(Some(source), &dest, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>).map_err(|e| err(&what, e))?;
        // Flags other than bind/rec need a remount of the new bind mount.
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            mount(None::<&str>, &dest, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra, None::<&str>)
                .map_err(|e| err(format!("{what} (remount)"), e))?;
        }
    } else {
        mount_point(rootfs, &dest, false)?;
        let data = match typ {
            "tmpfs" | "devpts" | "mqueue" => super::lsm::with_mount_label(opts.data.join(","), mount_label),
            _ => opts.data.join(","),
        };
        mount(
            m.source().as_deref(),
            &dest,
            Some(typ),
            opts.flags & !MsFlags::MS_REMOUNT,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|e| err(&what, e))?;
    }
    for p in &opts.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>)
            .map_err(|e| err(format!("{what} (propagation)"), e))?;
    }
    if opts.recursive_ro {
        crate::sys::make_tree_readonly(&dest).map_err(|e| err(format!("{what} (rro)"), e))?;
    }
    Ok(())
}

/// A `cgroup` mount: on v2 the cgroup2 filesystem (the cgroup namespace shows the container's
/// own cgroup as its root); on v1 a tmpfs with the container's cgroup of every hierarchy bound
/// into it.
fn mount_cgroup(rootfs: &Path, dest: &Path, opts: &Options, cgroup: Option<&Cgroup>) -> Result<(), Error> {
    mount_point(rootfs, dest, false)?;
    let flags = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let Some(cg) = cgroup else { return Ok(()) };
    match cg.layout() {
        Layout::V2 { .. } => {
            let f = if ro { flags | MsFlags::MS_RDONLY } else { flags };
            if std::fs::read_link("/proc/self/ns/cgroup").ok() != std::fs::read_link("/proc/1/ns/cgroup").ok() {
                // Our own cgroup namespace: cgroup2 shows our cgroup as its root.
                mount(Some("cgroup2"), dest, Some("cgroup2"), f, None::<&str>).map_err(|e| err("cgroup2", e))?;
            } else {
                // The host's namespace would show the whole host tree: bind our cgroup only.
                let own = cg.dir("").ok_or_else(|| err("cgroup2", "no cgroup"))?;
                mount(Some(&own), dest, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| err("cgroup2", e))?;
                mount(None::<&str>, dest, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | f, None::<&str>)
                    .map_err(|e| err("cgroup2", e))?;
            }
        }
        Layout::V1 { controllers, .. } => {
            mount(Some("tmpfs"), dest, Some("tmpfs"), flags, Some("mode=755")).map_err(|e| err("cgroup tmpfs", e))?;
            let mut hierarchies: Vec<&PathBuf> = controllers.values().collect();
            hierarchies.sort();
            hierarchies.dedup();
            for mount_point_dir in hierarchies {
                let name = mount_point_dir.file_name().unwrap_or_default();
                let Some(controller) = name.to_str().and_then(|n| n.split(',').next()) else { continue };
                let Some(source) = cg.dir(controller) else { continue };
                let target = dest.join(name);
                std::fs::create_dir_all(&target).map_err(|e| err(target.display(), e))?;
                mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| err(format!("binding {}", source.display()), e))?;
                let f = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | flags
                    | if ro { MsFlags::MS_RDONLY } else { MsFlags::empty() };
                mount(None::<&str>, &target, None::<&str>, f, None::<&str>).map_err(|e| err(target.display(), e))?;
            }
            if ro {
                let f = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags;
                mount(None::<&str>, dest, None::<&str>, f, Some("mode=755"))
                    .map_err(|e| err("cgroup tmpfs (ro)", e))?;
            }
        }
    }
    Ok(())
}

/// The devices every container gets (name, major, minor).
const DEFAULT_DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Creates the devices on the container's own `/dev` tmpfs (`dev_fs`, its device number) only:
/// never where a volume covers `/dev` or a directory or file under it (a host `/dev` bound in
/// for a privileged container keeps its nodes untouched).
fn create_devices(rootfs: &Path, spec: &Spec, dev_fs: u64) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let on_dev_fs = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.dev() == dev_fs);
    // A node may go only where its directory is the tmpfs and nothing is mounted on its name.
    let ours = |path: &Path| {
        path.parent().is_some_and(on_dev_fs) && (std::fs::symlink_metadata(path).is_err() || on_dev_fs(path))
    };
    let dev = target(rootfs, Path::new("/dev"))?;
    if !on_dev_fs(&dev) {
        return Ok(());
    }
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = dev.join(name);
        if !ours(&path) {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(*major, *minor))
            .map_err(|e| err(format!("mknod {}", path.display()), e))?;
        // mknod honours the umask; the devices are 0666 whatever it is.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .or_else(|_| {
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .map_err(|_| nix::errno::Errno::EPERM)
        })
        .map_err(|e| err(format!("chmod {}", path.display()), e))?;
    }
    for d in spec.linux().as_ref().and_then(|l| l.devices().as_ref()).into_iter().flatten() {
        let path = target(rootfs, d.path())?;
        let kind = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => SFlag::S_IFBLK,
            oci_spec::runtime::LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        if let Some(parent) = path.parent() {
            // Directories are made on the tmpfs only, never inside a volume.
            let existing = parent.ancestors().find(|a| std::fs::symlink_metadata(a).is_ok());
            if !existing.is_some_and(on_dev_fs) {
                continue;
            }
            let rel = parent.strip_prefix(rootfs).map_err(|_| err(parent.display(), "outside the root"))?;
            husk_oci::fs::mkdir_in_root(rootfs, rel, 0o755).map_err(|e| err(parent.display(), e))?;
        }
        if !ours(&path) {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
        mknod(&path, kind, mode, makedev(d.major() as u64, d.minor() as u64))
            .map_err(|e| err(format!("mknod {}", path.display()), e))?;
        nix::unistd::chown(&path, d.uid().map(nix::unistd::Uid::from_raw), d.gid().map(nix::unistd::Gid::from_raw))
            .map_err(|e| err(format!("chown {}", path.display()), e))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        if std::fs::symlink_metadata(&path).is_err() && ours(&path) {
            symlink(to, &path).map_err(|e| err(format!("symlink {}", path.display()), e))?;
        }
    }
    if dev.join("pts/ptmx").exists() && ours(&dev.join("ptmx")) {
        let ptmx = dev.join("ptmx");
        let _ = std::fs::remove_file(&ptmx);
        symlink("pts/ptmx", &ptmx).map_err(|e| err("symlink /dev/ptmx", e))?;
    }
    Ok(())
}

/// Builds the container's root under `rootfs`: every spec mount, and the default devices when
/// `/dev` is a fresh tmpfs. Runs in the init, in its own mount namespace; [`pivot`] follows.
pub fn mount_all(spec: &Spec, rootfs: &Path, cgroup: Option<&Cgroup>) -> Result<(), Error> {
    let propagation = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
        .map(|p| parse_options(&[p]).propagation)
        .unwrap_or_default();
    // Nothing mounted from here on may reach the host.
    let root_flags = propagation.first().copied().unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, root_flags, None::<&str>).map_err(|e| err("making / a slave mount", e))?;
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err(format!("binding the rootfs {}", rootfs.display()), e))?;
    let mount_label = spec.linux().as_ref().and_then(|l| l.mount_label().as_deref());
    // The device number of the tmpfs mounted on /dev, if one is: the devices go there only.
    let mut dev_fs = None;
    for m in spec.mounts().iter().flatten() {
        mount_one(rootfs, m, cgroup, mount_label)?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            use std::os::unix::fs::MetadataExt;
            let dev = target(rootfs, Path::new("/dev"))?;
            dev_fs = Some(std::fs::symlink_metadata(&dev).map_err(|e| err(dev.display(), e))?.dev());
        }
    }
    if let Some(dev_fs) = dev_fs {
        create_devices(rootfs, spec, dev_fs)?;
    }
    Ok(())
}

/// Makes `rootfs` the root and detaches the old one.
pub fn pivot(rootfs: &Path) -> Result<(), Error> {
    nix::unistd::chdir(rootfs).map_err(|e| err(format!("chdir {}", rootfs.display()), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    // The old root is stacked under the new one: detach it without letting the unmount
    // propagate to the host.
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err("making the old root a slave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("unmounting the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| err("chdir /", e))
}

/// Masked and read-only paths, and a read-only root: after pivot_root.
pub fn finish_rootfs(spec: &Spec) -> Result<(), Error> {
    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().iter().flatten() {
            mask(Path::new(p))?;
        }
        for p in linux.readonly_paths().iter().flatten() {
            readonly(Path::new(p))?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| err("making the root read-only", e))?;
    }
    Ok(())
}

fn mask(p: &Path) -> Result<(), Error> {
    // Only the real null device may be bound over a masked file (a /dev/null replaced by
    // something else would unmask, or expose, whatever it is).
    let null = std::fs::metadata("/dev/null").map_err(|e| err("/dev/null", e))?;
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if !null.file_type().is_char_device() || null.rdev() != makedev(1, 3) {
            return Err(Error::Process("masking: /dev/null is not the null device".into()));
        }
    }
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0k"))
            .map_err(|e| err(format!("masking {}", p.display()), e)),
        Ok(_) => mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| err(format!("masking {}", p.display()), e)),
    }
}

fn readonly(p: &Path) -> Result<(), Error> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err(format!("read-only {}", p.display()), e))?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>).map_err(|e| err(format!("read-only {}", p.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Options {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn option_lists() {
        let o = opts(&["rbind", "rslave", "ro", "rro", "nosuid"]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert!(o.recursive_ro);
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        let o = opts(&["ro", "rw", "private"]);
        assert_eq!(o.flags, MsFlags::empty(), "later options win");
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE]);
    }

    #[test]
    fn targets_stay_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("evil")).unwrap();
        assert_eq!(target(dir.path(), Path::new("/evil/passwd")).unwrap(), dir.path().join("etc/passwd"));
        assert_eq!(target(dir.path(), Path::new("/../../x")).unwrap(), dir.path().join("x"));
    }
}
