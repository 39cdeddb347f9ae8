//! The container's stdout and stderr, appended to `<sandbox>/stdout` and `<sandbox>/stderr` by
//! the shim (the container never holds the files), rotated by size as Mesos' logrotate
//! container logger does: `stdout` → `stdout.1` → ... → `stdout.<keep-1>`, the oldest dropped.
//!
//! Beside each live file, `.stdout.times` maps offsets to write times so that readers can start
//! at a point in time (`huskctl logs --since`): a 16-byte record (offset, unix nanoseconds, both
//! little-endian) is appended before a write when the last record is a second old or more, so
//! every byte from one record's offset to the next was written within a second of its time.
//! The times restart with the live file on rotation.
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Mesos' logrotate logger default: 10 MB per file.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Files kept per stream, the live one included.
pub const DEFAULT_KEEP: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { max_size: DEFAULT_MAX_SIZE, keep: DEFAULT_KEEP }
    }
}

/// Parses a Mesos byte size: `1048576`, `512KB`, `10MB`, `1GB` (binary multiples, as Mesos'
/// `Bytes`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The rotation of one stream (`STDOUT` or `STDERR`) from the container's environment:
/// `CONTAINER_LOGGER_MAX_<STREAM>_SIZE` and `rotate N` in `CONTAINER_LOGGER_LOGROTATE_<STREAM>_OPTIONS`.
/// Bad values keep the defaults (and are returned as warnings).
pub fn rotation_from_env(env: &[String], stream: &str) -> (Rotation, Vec<String>) {
    let mut r = Rotation::default();
    let mut warnings = Vec::new();
    let get = |key: &str| env.iter().rev().find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')));
    let size_key = format!("CONTAINER_LOGGER_MAX_{stream}_SIZE");
    if let Some(v) = get(&size_key) {
        match parse_size(v) {
            Some(n) if n >= 4096 => r.max_size = n,
            _ => warnings.push(format!("{size_key}={v}: not a size of at least one page; using {}", r.max_size)),
        }
    }
    let opts_key = format!("CONTAINER_LOGGER_LOGROTATE_{stream}_OPTIONS");
    if let Some(v) = get(&opts_key) {
        let mut words = v.split(|c: char| c.is_whitespace() || c == ';');
        while let Some(w) = words.next() {
            if w == "rotate" {
                match words.next().and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) => r.keep = n + 1,
                    None => warnings.push(format!("{opts_key}: `rotate` needs a number")),
                }
            }
        }
    }
    (r, warnings)
}

/// An append-only log file that rotates itself.
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
    times: Option<File>,
    /// Unix nanoseconds of the last time record (0: none in this file yet).
    last_record_ns: i64,
}

/// One time record: offset in the live file, unix nanoseconds.
const TIME_RECORD: usize = 16;
/// A new time record when the last one is this old.
const TIME_RECORD_EVERY_NS: i64 = 1_000_000_000;

/// The times file of a log file: `.stdout.times` for `stdout`.
pub fn times_path(log: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(log.file_name().unwrap_or_default());
    name.push(".times");
    log.with_file_name(name)
}

/// Where to start reading a live log file (as it is `len` bytes long) for output written at or
/// after `since_ns` (unix nanoseconds), from its times file: the offset of the first record
/// that may hold such bytes, so the answer includes at most a second of earlier output and
/// never misses later output. With no usable record, 0 (the whole file). Records are checked,
/// not trusted: the sandbox is the container's to write.
pub fn offset_since(times: &[u8], len: u64, since_ns: i64) -> u64 {
    let mut previous = 0u64;
    for r in times.chunks_exact(TIME_RECORD) {
        let offset = u64::from_le_bytes(r[..8].try_into().unwrap());
        let ns = i64::from_le_bytes(r[8..].try_into().unwrap());
        if offset < previous || offset > len {
            return previous.min(len);
        }
        if ns.saturating_add(TIME_RECORD_EVERY_NS) > since_ns {
            return offset;
        }
        previous = offset;
    }
    // Every record is older: only bytes after the last section, which may be newer, remain.
    match times.len() >= TIME_RECORD {
        true => len,
        false => 0,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Opens a log file for appending without ever following a link or blocking on a FIFO: the
/// sandbox is the container's to write, and the shim writing as root must not be redirected to
/// a host file by a symlink the container planted. Anything but a regular file is replaced.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .mode(0o644)
            .open(path)
    };
    match open() {
        Ok(f) if f.metadata()?.is_file() => return Ok(f),
        Ok(_) => {}
        // ELOOP: a symlink; ENXIO: a FIFO without reader.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENXIO)) => {}
        Err(e) => return Err(e),
    }
    // Not a regular file: take the name back (a directory there is an error).
    std::fs::remove_file(path)?;
    let f = open()?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!("{} is not a regular file", path.display())));
    }
    Ok(f)
}

impl RotatingFile {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<RotatingFile> {
        let file = open_log(path)?;
        let size = file.metadata()?.len();
        // Without times, --since reads the whole file: worth a warning, not a lost log.
        let times = open_log(&times_path(path))
            .inspect_err(|e| eprintln!("husk-shim: {}: {e}", times_path(path).display()))
            .ok();
        Ok(RotatingFile { path: path.to_path_buf(), rotation, file, size, times, last_record_ns: 0 })
    }

    fn record_time(&mut self) {
        let now = now_ns();
        if now.saturating_sub(self.last_record_ns) < TIME_RECORD_EVERY_NS {
            return;
        }
        if let Some(t) = &mut self.times {
            let mut r = [0u8; TIME_RECORD];
            r[..8].copy_from_slice(&self.size.to_le_bytes());
            r[8..].copy_from_slice(&now.to_le_bytes());
            if t.write_all(&r).is_err() {
                self.times = None;
            }
        }
        self.last_record_ns = now;
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{n}"));
        self.path.with_file_name(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.keep.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.numbered(keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = std::fs::rename(self.numbered(n), self.numbered(n + 1));
            }
            // rename(2) moves names, never follows links.
            std::fs::rename(&self.path, self.numbered(1))?;
            self.file = open_log(&self.path)?;
        }
        self.size = 0;
        if let Some(t) = &self.times {
            let _ = t.set_len(0);
        }
        self.last_record_ns = 0;
        Ok(())
    }

    /// Appends `data`, rotating first when it would pass the size limit.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.size >= self.rotation.max_size {
                self.rotate()?;
            }
            self.record_time();
            let room = (self.rotation.max_size - self.size) as usize;
            let n = data.len().min(room.max(1));
            self.file.write_all(&data[..n])?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MB"), Some(10 << 20));
        assert_eq!(parse_size("512kb"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GB"), Some(1 << 30));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("1PB"), None);
        assert_eq!(parse_size("99999999999999999999TB"), None);
    }

    #[test]
    fn rotation_from_the_environment() {
        let env = vec![
            "CONTAINER_LOGGER_MAX_STDOUT_SIZE=8KB".to_string(),
            "CONTAINER_LOGGER_LOGROTATE_STDOUT_OPTIONS=rotate 2".to_string(),
            "CONTAINER_LOGGER_MAX_STDERR_SIZE=1".to_string(),
        ];
        assert_eq!(rotation_from_env(&env, "STDOUT"), (Rotation { max_size: 8192, keep: 3 }, vec![]));
        let (r, warnings) = rotation_from_env(&env, "STDERR");
        assert_eq!(r, Rotation::default());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn a_planted_symlink_or_fifo_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "host file\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("stdout")).unwrap();
        let mut f = RotatingFile::open(&dir.path().join("stdout"), Rotation { max_size: 8, keep: 3 }).unwrap();
        f.write(b"from the container").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host file\n", "the link was not followed");
        assert!(dir.path().join("stdout").symlink_metadata().unwrap().is_file());
        // A link planted where a rotation will open the next file is replaced too.
        std::fs::remove_file(dir.path().join("stdout")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("stdout"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let mut f = RotatingFile::open(&dir.path().join("stdout"), Rotation::default()).unwrap();
        f.write(b"x").unwrap();
        assert!(dir.path().join("stdout").symlink_metadata().unwrap().is_file(), "a FIFO is replaced, not blocked on");
    }

    fn record(offset: u64, ns: i64) -> Vec<u8> {
        [offset.to_le_bytes(), ns.to_le_bytes()].concat()
    }

    #[test]
    fn offsets_since_a_time() {
        const S: i64 = 1_000_000_000;
        let times = [record(0, 10 * S), record(100, 20 * S), record(250, 30 * S)].concat();
        assert_eq!(offset_since(&times, 300, 0), 0);
        assert_eq!(offset_since(&times, 300, 10 * S), 0, "bytes at the record's time are included");
        assert_eq!(offset_since(&times, 300, 10 * S + S / 2), 0, "within a second of a record: included");
        assert_eq!(offset_since(&times, 300, 11 * S), 100);
        assert_eq!(offset_since(&times, 300, 25 * S), 250);
        assert_eq!(offset_since(&times, 300, 40 * S), 300, "everything is older");
        assert_eq!(offset_since(&[], 300, 40 * S), 0, "no records: the whole file");
        // Nonsense from the container: offsets going back or past the end stop the search.
        let bad = [record(100, 10 * S), record(50, 20 * S)].concat();
        assert_eq!(offset_since(&bad, 300, 30 * S), 100);
        assert_eq!(offset_since(&record(900, 10 * S), 300, 30 * S), 0);
    }

    #[test]
    fn writes_record_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let before = now_ns();
        let mut f = RotatingFile::open(&path, Rotation { max_size: 10, keep: 2 }).unwrap();
        f.write(b"abc").unwrap();
        f.write(b"def").unwrap();
        let times = std::fs::read(times_path(&path)).unwrap();
        assert_eq!(times.len(), TIME_RECORD, "one record per second at most");
        assert_eq!(offset_since(&times, 6, before), 0);
        assert_eq!(offset_since(&times, 6, now_ns() + 2 * TIME_RECORD_EVERY_NS), 6);
        f.write(b"0123456789").unwrap(); // rotates: the times restart with the live file
        let times = std::fs::read(times_path(&path)).unwrap();
        assert_eq!(times.len(), TIME_RECORD);
        assert_eq!(u64::from_le_bytes(times[..8].try_into().unwrap()), 0);
    }

    #[test]
    fn rotates_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut f = RotatingFile::open(&path, Rotation { max_size: 10, keep: 3 }).unwrap();
        f.write(b"0123456789abcdefghij").unwrap(); // two full files
        f.write(b"KLMNO").unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("stdout"), "KLMNO");
        assert_eq!(read("stdout.1"), "abcdefghij");
        assert_eq!(read("stdout.2"), "0123456789");
        f.write(b"pqrstuvwxyz").unwrap();
        assert_eq!(read("stdout"), "uvwxyz");
        assert_eq!(read("stdout.1"), "KLMNOpqrst");
        assert_eq!(read("stdout.2"), "abcdefghij");
        assert!(!dir.path().join("stdout.3").exists(), "only `keep` files are kept");
        // Reopening continues where the file is.
        drop(f);
        let mut f = RotatingFile::open(&path, Rotation { max_size: 10, keep: 3 }).unwrap();
        f.write(b"1234").unwrap();
        assert_eq!(read("stdout"), "uvwxyz1234");
    }
}
