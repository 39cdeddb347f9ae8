//! Removing what the agent owns on disk without ever deleting across a mount point: a sandbox
//! may hold a bind of a host directory, and deleting through it would delete the host's files.
use std::io;
use std::path::{Path, PathBuf};

/// The mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir`, deepest first. Returns how many there were.
pub fn unmount_all_under(dir: &Path) -> io::Result<usize> {
    let mounts = mounts_under(dir);
    for m in &mounts {
        match nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(io::Error::new(io::Error::from(e).kind(), format!("unmounting {}: {e}", m.display())))
            }
        }
    }
    Ok(mounts.len())
}

/// Removes `dir` and everything below it: every mount below it is detached first, and nothing
/// is removed while one is left. The removal itself is `std::fs::remove_dir_all`, which works
/// from directory handles and never follows a link, however the tree changes meanwhile. A
/// missing `dir` is fine.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    unmount_all_under(&dir)?;
    let left = mounts_under(&dir);
    if let Some(m) = left.first() {
        return Err(io::Error::other(format!("{} is still a mount point; not removed", m.display())));
    }
    match std::fs::symlink_metadata(&dir)?.is_dir() {
        true => std::fs::remove_dir_all(&dir),
        false => std::fs::remove_file(&dir),
    }
}

/// A duration in Mesos' flag form: a number and a unit (`ns`, `us`, `ms`, `secs`/`s`,
/// `mins`/`m`, `hrs`/`h`, `days`/`d`, `weeks`/`w`), e.g. `1weeks`, `30s`, `2.5h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration (e.g. 30s, 5mins, 1weeks)"))?;
    let secs = match unit.trim() {
        "ns" => 1e-9,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hrs" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        "w" | "week" | "weeks" => 604800.0,
        u => return Err(format!("`{text}`: unknown unit `{u}` (ns, us, ms, secs, mins, hrs, days, weeks)")),
    };
    std::time::Duration::try_from_secs_f64(n * secs).map_err(|e| format!("`{text}`: {e}"))
}

/// The fraction of the filesystem holding `path` that is in use (0 when unknown).
pub fn disk_usage(path: &Path) -> f64 {
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) if st.blocks() > 0 => 1.0 - st.blocks_available() as f64 / st.blocks() as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_mesos_form() {
        assert_eq!(parse_duration("1weeks").unwrap().as_secs(), 604800);
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("2.5h").unwrap().as_secs(), 9000);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    #[test]
    fn removal_never_crosses_a_mount_point() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep").unwrap();
        let tree = tempfile::tempdir().unwrap();
        let target = tree.path().join("sandbox/volume");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(tree.path().join("sandbox/file"), "x").unwrap();
        nix::mount::mount(Some(outside.path()), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .unwrap();
        remove_tree(tree.path()).unwrap();
        assert!(!tree.path().exists());
        assert_eq!(std::fs::read_to_string(outside.path().join("precious")).unwrap(), "keep");
        assert!(mounts_under(tree.path()).is_empty());
    }
}
