//! Unpacking a layer tar into a directory the way overlayfs reads layers, and flattening
//! unpacked layers into one tree for the copy backend.
//!
//! Layers come from registries and archives, so every entry is hostile until placed: paths are
//! made relative and refused if they climb (`..`); every parent directory is opened
//! component by component with `O_NOFOLLOW` from the layer's own handle, so a symlink the same
//! layer planted never redirects a later entry; hard links must point at a file already in the
//! layer and never follow a link; device nodes are not created (the runtime gives containers
//! their `/dev`); setuid and setgid bits are dropped unless the store keeps them.
//!
//! Whiteouts become what overlayfs understands: `.wh.NAME` a 0/0 character device `NAME`,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its directory.
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, fstatat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Keep setuid/setgid bits on files (dropped by default).
    pub keep_setuid: bool,
}

/// What an unpack did.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
    /// Entries that were left out (device nodes), for the operator's log.
    pub skipped: Vec<String>,
}

fn corrupt(path: &[u8], why: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("layer entry `{}`: {why}", String::from_utf8_lossy(path).escape_debug()))
}

/// The entry's path as parts below the layer root: leading `/` and `.` dropped, `..` refused.
fn parts_of(raw: &[u8]) -> Result<Vec<OsString>> {
    let mut parts = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(corrupt(raw, "`..` would leave the layer")),
            Component::Prefix(_) => return Err(corrupt(raw, "not a Unix path")),
        }
    }
    Ok(parts)
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC).union(OFlag::O_RDONLY);

pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(path, DIR_FLAGS, Mode::empty())?)
}

/// Opens `parts` below `root` one component at a time without following links, creating
/// missing directories (0755, root's) when `create`.
fn walk(root: BorrowedFd, parts: &[OsString], create: bool) -> io::Result<OwnedFd> {
    let mut dir: OwnedFd = openat(root, ".", DIR_FLAGS, Mode::empty())?;
    for p in parts {
        if create {
            match nix::sys::stat::mkdirat(&dir, p.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        dir = openat(&dir, p.as_os_str(), DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{}` is not a directory (a symbolic link?)", p.to_string_lossy()),
            ),
            e => e.into(),
        })?;
    }
    Ok(dir)
}

/// Removes `name` in `dir`, a whole tree if it is a directory, never following a link.
pub fn remove_at(dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let sub = openat(dir, name, DIR_FLAGS, Mode::empty())?;
        let names: Vec<OsString> = {
            let mut d = nix::dir::Dir::from_fd(sub.try_clone()?)?;
            d.iter()
                .filter_map(|e| e.ok())
                .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
                .filter(|n| n != "." && n != "..")
                .collect()
        };
        for n in names {
            remove_at(sub.as_fd(), &n)?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

fn is_dir_at(dir: BorrowedFd, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

fn chown_at(dir: BorrowedFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    fchownat(dir, name, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn id32(v: io::Result<u64>, raw: &[u8], what: &str) -> Result<u32> {
    let v = v.map_err(|e| corrupt(raw, format!("{what}: {e}")))?;
    u32::try_from(v).map_err(|_| corrupt(raw, format!("{what} {v} is out of range")))
}

/// Unpacks the tar `stream` into the empty directory `root`.
pub fn unpack(stream: impl Read, root: &Path, opts: Options) -> Result<Unpacked> {
    let root_fd = open_dir(root).map_err(|e| ImageError::io(format!("opening {}", root.display()), e))?;
    let mut archive = tar::Archive::new(stream);
    let mut done = Unpacked::default();
    let entries = archive.entries().map_err(|e| ImageError::Corrupt(format!("reading the layer: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::Corrupt(format!("reading the layer: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        let mut parts = parts_of(&raw)?;
        let Some(name) = parts.pop() else { continue };
        let in_layer = |e: io::Error| corrupt(&raw, e);
        let parent = walk(root_fd.as_fd(), &parts, true).map_err(in_layer)?;
        done.entries += 1;
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            use xattr::FileExt;
            let dir = std::fs::File::from(parent.try_clone().map_err(in_layer)?);
            dir.set_xattr(OPAQUE_XATTR, b"y").map_err(in_layer)?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..wh.*` other than the opaque marker are aufs bookkeeping: not content.
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
                continue;
            }
            let hidden = OsStr::from_bytes(hidden);
            remove_at(parent.as_fd(), hidden).map_err(in_layer)?;
            mknodat(&parent, hidden, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| in_layer(e.into()))?;
            continue;
        }
        let header = entry.header();
        let uid = id32(header.uid(), &raw, "uid")?;
        let gid = id32(header.gid(), &raw, "gid")?;
        let mut mode = header.mode().map_err(|e| corrupt(&raw, e))? & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        match kind {
            tar::EntryType::Directory => {
                if !is_dir_at(parent.as_fd(), &name) {
                    remove_at(parent.as_fd(), &name).map_err(in_layer)?;
                    nix::sys::stat::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| in_layer(e.into()))?;
                }
                chown_at(parent.as_fd(), &name, uid, gid).map_err(in_layer)?;
                fchmodat(&parent, name.as_os_str(), Mode::from_bits_truncate(mode), FchmodatFlags::NoFollowSymlink)
                    .or_else(|e| match e {
                        // Old kernels cannot chmod without following; a directory is no link.
                        Errno::EOPNOTSUPP => fchmodat(
                            &parent,
                            name.as_os_str(),
                            Mode::from_bits_truncate(mode),
                            FchmodatFlags::FollowSymlink,
                        ),
                        e => Err(e),
                    })
                    .map_err(|e| in_layer(e.into()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_at(parent.as_fd(), &name).map_err(in_layer)?;
                let fd = openat(
                    &parent,
                    name.as_os_str(),
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| in_layer(e.into()))?;
                let mut file = std::fs::File::from(fd);
                done.bytes += io::copy(&mut entry, &mut file).map_err(|e| corrupt(&raw, e))?;
                if !opts.keep_setuid {
                    mode &= !0o6000;
                }
                nix::unistd::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(|e| in_layer(e.into()))?;
                // After chown, which clears setuid bits.
                fchmod(&file, Mode::from_bits_truncate(mode)).map_err(|e| in_layer(e.into()))?;
                let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
                let _ = nix::sys::stat::futimens(&file, &t, &t);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt(&raw, "a symbolic link without a target"))?
                    .into_owned();
                remove_at(parent.as_fd(), &name).map_err(in_layer)?;
                symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str()).map_err(|e| in_layer(e.into()))?;
                chown_at(parent.as_fd(), &name, uid, gid).map_err(in_layer)?;
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| corrupt(&raw, "a hard link without a target"))?.into_owned();
                let mut target_parts = parts_of(&target)?;
                let target_name = target_parts.pop().ok_or_else(|| corrupt(&raw, "a hard link to the layer's root"))?;
                let target_dir = walk(root_fd.as_fd(), &target_parts, false)
                    .map_err(|e| corrupt(&raw, format!("hard link target: {e}")))?;
                remove_at(parent.as_fd(), &name).map_err(in_layer)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, never what it names.
                linkat(&target_dir, target_name.as_os_str(), &parent, name.as_os_str(), AtFlags::empty())
                    .map_err(|e| corrupt(&raw, format!("hard link to `{}`: {e}", String::from_utf8_lossy(&target))))?;
            }
            tar::EntryType::Fifo => {
                remove_at(parent.as_fd(), &name).map_err(in_layer)?;
                mknodat(&parent, name.as_os_str(), SFlag::S_IFIFO, Mode::from_bits_truncate(mode & 0o777), 0)
                    .map_err(|e| in_layer(e.into()))?;
                chown_at(parent.as_fd(), &name, uid, gid).map_err(in_layer)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let (major, minor) = (header.device_major().ok().flatten(), header.device_minor().ok().flatten());
                if kind == tar::EntryType::Char && major == Some(0) && minor == Some(0) {
                    // Already an overlay whiteout.
                    remove_at(parent.as_fd(), &name).map_err(in_layer)?;
                    mknodat(&parent, name.as_os_str(), SFlag::S_IFCHR, Mode::empty(), 0)
                        .map_err(|e| in_layer(e.into()))?;
                } else {
                    done.skipped.push(format!("{} (a device node)", String::from_utf8_lossy(&raw)));
                }
            }
            other => done.skipped.push(format!("{} (entry type {:?})", String::from_utf8_lossy(&raw), other)),
        }
    }
    Ok(done)
}

/// Whether `st` is an overlay whiteout (a 0/0 character device).
fn is_whiteout(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0
}

/// The copy backend: applies an unpacked layer (overlay whiteouts and opaque directories
/// included) on top of the tree at `dest`, as the next layer of a stack. Hard links within the
/// layer become copies.
pub fn apply_copy(layer: &Path, dest: &Path) -> io::Result<()> {
    let src = open_dir(layer)?;
    let dst = open_dir(dest)?;
    copy_dir(src.as_fd(), dst.as_fd())
}

fn copy_dir(src: BorrowedFd, dst: BorrowedFd) -> io::Result<()> {
    let names: Vec<OsString> = {
        let mut d = nix::dir::Dir::from_fd(openat(src, ".", DIR_FLAGS, Mode::empty())?)?;
        d.iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    for name in names {
        let st = fstatat(src, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        if is_whiteout(&st) {
            remove_at(dst, &name)?;
            continue;
        }
        match kind {
            SFlag::S_IFDIR => {
                let sub = openat(src, name.as_os_str(), DIR_FLAGS, Mode::empty())?;
                use xattr::FileExt;
                let opaque = std::fs::File::from(sub.try_clone()?).get_xattr(OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
                if opaque || !is_dir_at(dst, &name) {
                    remove_at(dst, &name)?;
                    nix::sys::stat::mkdirat(dst, name.as_os_str(), Mode::from_bits_truncate(0o700))?;
                }
                chown_at(dst, &name, st.st_uid, st.st_gid)?;
                fchmodat(dst, name.as_os_str(), mode, FchmodatFlags::FollowSymlink)?;
                let sub_dst = openat(dst, name.as_os_str(), DIR_FLAGS, Mode::empty())?;
                copy_dir(sub.as_fd(), sub_dst.as_fd())?;
            }
            SFlag::S_IFREG => {
                remove_at(dst, &name)?;
                let from = openat(
                    src,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let to = openat(
                    dst,
                    name.as_os_str(),
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let (mut from, mut to) = (std::fs::File::from(from), std::fs::File::from(to));
                io::copy(&mut from, &mut to)?;
                nix::unistd::fchown(&to, Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)))?;
                fchmod(&to, mode)?;
                let t = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
                let _ = nix::sys::stat::futimens(&to, &t, &t);
            }
            SFlag::S_IFLNK => {
                remove_at(dst, &name)?;
                let target = nix::fcntl::readlinkat(src, name.as_os_str())?;
                symlinkat(target.as_os_str(), dst, name.as_os_str())?;
                chown_at(dst, &name, st.st_uid, st.st_gid)?;
            }
            SFlag::S_IFIFO => {
                remove_at(dst, &name)?;
                mknodat(dst, name.as_os_str(), SFlag::S_IFIFO, mode, 0)?;
                chown_at(dst, &name, st.st_uid, st.st_gid)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar built entry by entry, headers written raw so hostile names go in unchanged.
    pub struct TarBuilder(tar::Builder<Vec<u8>>);

    impl TarBuilder {
        pub fn new() -> Self {
            TarBuilder(tar::Builder::new(Vec::new()))
        }
        fn header(kind: tar::EntryType, path: &str, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            let name = &mut h.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(0);
            h
        }
        pub fn file(mut self, path: &str, content: &[u8], mode: u32) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, path, mode);
            h.set_size(content.len() as u64);
            h.set_cksum();
            self.0.append(&h, content).unwrap();
            self
        }
        pub fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Directory, path, 0o755);
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }
        pub fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
            let mut h = Self::header(kind, path, 0o777);
            h.set_link_name(target).unwrap();
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }
        pub fn device(mut self, path: &str, major: u32, minor: u32) -> Self {
            let mut h = Self::header(tar::EntryType::Char, path, 0o666);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_cksum();
            self.0.append(&h, &[][..]).unwrap();
            self
        }
        pub fn build(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn unpack_into(tar: &[u8]) -> (tempfile::TempDir, Result<Unpacked>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(tar, dir.path(), Options::default());
        (dir, r)
    }

    #[test]
    fn files_links_and_whiteouts() {
        let tar = TarBuilder::new()
            .dir("etc/")
            .file("./etc/hostname", b"layer\n", 0o644)
            .file("bin/tool", b"#!/bin/sh\n", 0o4755)
            .link(tar::EntryType::Symlink, "bin/sh", "/bin/busybox")
            .link(tar::EntryType::Link, "bin/tool2", "bin/tool")
            .file(".wh.gone", b"", 0o644)
            .file("etc/.wh..wh..opq", b"", 0o644)
            .build();
        let (dir, r) = unpack_into(&tar);
        let done = r.unwrap();
        let p = dir.path();
        assert_eq!(std::fs::read_to_string(p.join("etc/hostname")).unwrap(), "layer\n");
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let tool = std::fs::metadata(p.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o755, "setuid dropped by default");
        assert_eq!(tool.ino(), std::fs::metadata(p.join("bin/tool2")).unwrap().ino(), "a hard link");
        assert_eq!(std::fs::read_link(p.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        let gone = std::fs::symlink_metadata(p.join("gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0, "a whiteout device");
        assert_eq!(xattr::get(p.join("etc"), OPAQUE_XATTR).unwrap().as_deref(), Some(&b"y"[..]));
        assert!(!p.join("etc/.wh..wh..opq").exists());
        assert_eq!(done.entries, 7);

        let kept = tempfile::tempdir().unwrap();
        unpack(&tar[..], kept.path(), Options { keep_setuid: true }).unwrap();
        assert_eq!(std::fs::metadata(kept.path().join("bin/tool")).unwrap().mode() & 0o7777, 0o4755);
    }

    #[test]
    fn hostile_entries_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "host\n").unwrap();
        let o = outside.path().to_str().unwrap().trim_start_matches('/').to_string();

        // `..` in a path or a hard link target is refused.
        for tar in [
            TarBuilder::new().file("../escape", b"x", 0o644).build(),
            TarBuilder::new().file("a/../../escape", b"x", 0o644).build(),
            TarBuilder::new().link(tar::EntryType::Link, "l", "../../etc/passwd").build(),
        ] {
            let (_d, r) = unpack_into(&tar);
            assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("..")), "{r:?}");
        }
        // An absolute path lands inside.
        let (d, r) = unpack_into(&TarBuilder::new().file(&format!("/{o}/victim"), b"owned\n", 0o644).build());
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host\n");
        assert_eq!(std::fs::read_to_string(d.path().join(&o).join("victim")).unwrap(), "owned\n");
        // A symlink to the outside, then a file through it: refused, nothing written outside.
        let tar = TarBuilder::new()
            .link(tar::EntryType::Symlink, "out", outside.path().to_str().unwrap())
            .file("out/victim", b"owned\n", 0o644)
            .build();
        let (_d, r) = unpack_into(&tar);
        assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("symbolic link")), "{r:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host\n");
        // A hard link through a symlinked directory, or to a file outside: refused.
        let tar = TarBuilder::new()
            .link(tar::EntryType::Symlink, "out", outside.path().to_str().unwrap())
            .link(tar::EntryType::Link, "stolen", "out/victim")
            .build();
        let (d, r) = unpack_into(&tar);
        assert!(r.is_err());
        assert!(!d.path().join("stolen").exists());
        let (_d, r) =
            unpack_into(&TarBuilder::new().link(tar::EntryType::Link, "stolen", &format!("/{o}/victim")).build());
        assert!(r.is_err(), "the target must be in the layer");
        // A hard link to a symlink links the symlink itself, never its target.
        let tar = TarBuilder::new()
            .link(tar::EntryType::Symlink, "s", victim.to_str().unwrap())
            .link(tar::EntryType::Link, "h", "s")
            .build();
        let (d, r) = unpack_into(&tar);
        r.unwrap();
        assert!(std::fs::symlink_metadata(d.path().join("h")).unwrap().file_type().is_symlink());
        // Device nodes are left out; a whiteout device is kept.
        let (d, r) = unpack_into(&TarBuilder::new().device("dev/sda", 8, 0).device("wh", 0, 0).build());
        let done = r.unwrap();
        assert!(!d.path().join("dev/sda").exists());
        assert_eq!(done.skipped.len(), 1, "{:?}", done.skipped);
        assert!(d.path().join("wh").symlink_metadata().is_ok());
    }

    #[test]
    fn copy_backend_applies_whiteouts() {
        let lower = TarBuilder::new()
            .file("keep", b"1", 0o644)
            .file("gone", b"1", 0o644)
            .file("d/old", b"1", 0o644)
            .link(tar::EntryType::Symlink, "ln", "keep")
            .build();
        let upper = TarBuilder::new()
            .file(".wh.gone", b"", 0o644)
            .dir("d/")
            .file("d/.wh..wh..opq", b"", 0o644)
            .file("d/new", b"2", 0o600)
            .file("keep", b"2", 0o644)
            .build();
        let (l, r) = unpack_into(&lower);
        r.unwrap();
        let (u, r) = unpack_into(&upper);
        r.unwrap();
        let dest = tempfile::tempdir().unwrap();
        apply_copy(l.path(), dest.path()).unwrap();
        apply_copy(u.path(), dest.path()).unwrap();
        let p = dest.path();
        assert_eq!(std::fs::read_to_string(p.join("keep")).unwrap(), "2");
        assert!(!p.join("gone").exists() && std::fs::symlink_metadata(p.join("gone")).is_err());
        assert!(!p.join("d/old").exists(), "an opaque directory hides the lower one");
        assert_eq!(std::fs::read_to_string(p.join("d/new")).unwrap(), "2");
        assert_eq!(std::fs::read_link(p.join("ln")).unwrap(), Path::new("keep"));
    }
}
