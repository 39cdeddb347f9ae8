//! Paths inside a root that is not ours to trust (an image rootfs, a sandbox the container
//! writes to): every symlink is resolved as if `root` were `/`, so no path, however it is
//! built, resolves outside `root`.
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed at most while resolving one path (Linux' own limit is 40).
const MAX_SYMLINKS: usize = 255;

/// Resolves `path` (absolute or relative, both taken from `root`) inside `root`, following
/// symlinks with `root` as their `/` and clamping `..` at `root`. Missing trailing components are
/// kept as they are, so the result may not exist. The result always starts with `root`.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut followed = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = join(root, &resolved).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many levels of symbolic links resolving {}", path.display()),
                    ));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            Ok(_) => resolved.push(part),
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved.push(part),
            Err(e) => return Err(e),
        }
    }
    Ok(join(root, &resolved))
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

/// Creates `rel` (and its missing parents) inside `root`, never following a symbolic link: each
/// component is created and then opened with `O_NOFOLLOW` relative to its parent, so a link
/// planted by whoever writes inside `root` fails the call instead of redirecting it.
pub fn mkdir_in_root(root: &Path, rel: &Path, mode: u32) -> io::Result<()> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut dir = open(root, flags, Mode::empty()).map_err(io::Error::from)?;
    for part in rel.components() {
        let Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{}` is not a plain relative path", rel.display()),
            ));
        };
        match mkdirat(&dir, name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        dir = openat(&dir, name, flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{}` in `{}` is not a directory (a symbolic link?)", name.to_string_lossy(), root.display()),
            ),
            e => e.into(),
        })?;
    }
    Ok(())
}

/// Whether `path` is free of `..` components (a lexical check, for request fields).
pub fn has_parent_component(path: &str) -> bool {
    Path::new(path).components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        symlink("/etc/shadow", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("real/up")).unwrap();
        symlink("real", root.join("rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        assert_eq!(resolve_in_root(root, Path::new("/abs")).unwrap(), root.join("etc/shadow"));
        assert_eq!(resolve_in_root(root, Path::new("real/up/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("/../../x")).unwrap(), root.join("x"));
        assert_eq!(resolve_in_root(root, Path::new("/rel/a/../b")).unwrap(), root.join("real/b"));
        assert!(resolve_in_root(root, Path::new("/loop1")).is_err());
    }

    #[test]
    fn mkdir_in_root_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        mkdir_in_root(dir.path(), Path::new("a/b/c"), 0o755).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
        mkdir_in_root(dir.path(), Path::new("a/b/c"), 0o755).unwrap();
        symlink(outside.path(), dir.path().join("a/link")).unwrap();
        assert!(mkdir_in_root(dir.path(), Path::new("a/link/x"), 0o755).is_err());
        assert!(!outside.path().join("x").exists(), "nothing created through the link");
        assert!(mkdir_in_root(dir.path(), Path::new("../x"), 0o755).is_err());
    }

    #[test]
    fn parent_components() {
        assert!(has_parent_component("/a/../b"));
        assert!(has_parent_component(".."));
        assert!(!has_parent_component("/a/..b/c"));
    }
}
