//! Resolving `CommandInfo.user` to numeric ids from the container's own `/etc/passwd` and
//! `/etc/group` (read inside the rootfs, never following a link out of it).
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fs::resolve_in_root;

/// Files larger than this are not account databases; refuse them rather than read them.
const MAX_DB_SIZE: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership), without the primary gid.
    pub additional_gids: Vec<u32>,
    /// The user's name when it has a passwd entry.
    pub name: Option<String>,
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (`name`, `uid`, `name:group` or `uid:gid`) against the databases in `rootfs`.
pub fn resolve(rootfs: &Path, user: &str, field: &str) -> Result<ResolvedUser> {
    if user.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if user.chars().any(|c| c.is_control() || c == '/' || c.is_whitespace()) {
        return Err(Error::invalid(field, format!("`{}` has a control character, `/` or space", user.escape_debug())));
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(Error::invalid(field, format!("`{user}` must be `user`, `uid`, `user:group` or `uid:gid`")));
    }
    let passwd = read_db(rootfs, "/etc/passwd", field)?;
    let entries = parse_passwd(passwd.as_deref().unwrap_or(""));

    let (uid, mut gid, name, home) = match user_part.parse::<u32>() {
        Ok(uid) => match entries.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone()), Some(e.home.clone())),
            None => (uid, 0, None, None),
        },
        Err(_) => match entries.iter().find(|e| e.name == user_part) {
            Some(e) => (e.uid, e.gid, Some(e.name.clone()), Some(e.home.clone())),
            None => {
                return Err(Error::missing(field, format!("no user `{user_part}` in the container's /etc/passwd")));
            }
        },
    };

    let group_db = read_db(rootfs, "/etc/group", field)?;
    let groups = parse_group(group_db.as_deref().unwrap_or(""));
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| Error::missing(field, format!("no group `{g}` in the container's /etc/group")))?,
        };
    }
    let mut additional_gids: Vec<u32> = match &name {
        Some(n) => groups.iter().filter(|e| e.members.iter().any(|m| m == n)).map(|e| e.gid).collect(),
        None => Vec::new(),
    };
    additional_gids.retain(|g| *g != gid);
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser { uid, gid, additional_gids, name, home })
}

/// Reads an account database from inside `rootfs`; `None` when the rootfs has none.
fn read_db(rootfs: &Path, path: &str, field: &str) -> Result<Option<String>> {
    let resolved = resolve_in_root(rootfs, Path::new(path)).map_err(|e| Error::io(rootfs.join(&path[1..]), e))?;
    let file = match std::fs::File::open(&resolved) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(resolved, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(&resolved, e))?;
    if !meta.is_file() {
        return Err(Error::invalid(field, format!("the container's {path} is not a regular file")));
    }
    if meta.len() > MAX_DB_SIZE {
        return Err(Error::invalid(field, format!("the container's {path} is larger than {MAX_DB_SIZE} bytes")));
    }
    let mut text = String::new();
    file.take(MAX_DB_SIZE).read_to_string(&mut text).map_err(|e| Error::io(&resolved, e))?;
    Ok(Some(text))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
             app:x:1000:1000::/home/app:/bin/sh\nbroken:line\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:app\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let r = rootfs();
        let u = resolve(r.path(), "app", "command.user").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10, 29]);
        assert_eq!(u.home.as_deref(), Some("/home/app"));
    }

    #[test]
    fn numeric_and_explicit_group() {
        let r = rootfs();
        assert_eq!(resolve(r.path(), "1000", "u").unwrap().gid, 1000);
        let unknown = resolve(r.path(), "4242", "u").unwrap();
        assert_eq!((unknown.uid, unknown.gid, unknown.name), (4242, 0, None));
        assert_eq!(resolve(r.path(), "app:staff", "u").unwrap().gid, 50);
        assert_eq!(resolve(r.path(), "4242:77", "u").unwrap().gid, 77);
    }

    #[test]
    fn errors_name_the_field() {
        let r = rootfs();
        assert_eq!(
            resolve(r.path(), "ghost", "command.user").unwrap_err().to_string(),
            "command.user: no user `ghost` in the container's /etc/passwd"
        );
        assert!(resolve(r.path(), "app:ghosts", "u").unwrap_err().to_string().contains("no group `ghosts`"));
        assert!(resolve(r.path(), "", "u").is_err());
        assert!(resolve(r.path(), "a b", "u").is_err());
        assert!(resolve(r.path(), "app:", "u").is_err());
    }

    #[test]
    fn a_passwd_symlink_out_of_the_rootfs_is_read_inside_it() {
        let r = rootfs();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), r.path().join("etc/passwd")).unwrap();
        // The link's target does not exist inside the rootfs: as if there were no passwd.
        assert!(resolve(r.path(), "evil", "u").is_err());
        assert_eq!(resolve(r.path(), "0", "u").unwrap().name, None);
    }
}
