//! The container's output in the Kubernetes CRI log format, for the kubelet and crictl: one
//! entry per line, `<RFC3339Nano time> <stream> <tag> <text>\n`, where the stream is `stdout`
//! or `stderr` and the tag is `F` for a full line or `P` for a part of a line longer than
//! [`MAX_LINE`] (the newline itself is never written). The kubelet rotates the file by renaming
//! it and asking the runtime to reopen it ([`CriLog::reopen`]).
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Lines longer than this are split into `P` entries (containerd's default
/// `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// The CRI log file of a container, shared by its stdout and stderr.
pub struct CriLog {
    path: PathBuf,
    file: File,
}

fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link planted where the file goes: the shim writes as root.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o640)
        .open(path)
}

impl CriLog {
    pub fn open(path: &Path) -> io::Result<CriLog> {
        Ok(CriLog { path: path.to_path_buf(), file: open(path)? })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file at the path afresh (after a rotation renamed it away); the old file gets
    /// no more entries. On error the old file stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open(&self.path)?;
        Ok(())
    }

    /// Writes one entry in a single write, so entries of the two streams never interleave.
    pub fn entry(&mut self, time_ns: i64, stream: &str, partial: bool, text: &[u8]) -> io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(rfc3339_nano(time_ns).as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(text);
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// Cuts a stream of output into CRI entries: full lines, and parts of lines that grow past
/// [`MAX_LINE`]. Output without a newline waits for the rest of its line.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Feeds output; calls `emit(partial, text)` for every entry it completes.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&data[..nl], &data[nl + 1..]);
            if self.pending.is_empty() {
                self.cut(line, &mut emit);
            } else {
                self.pending.extend_from_slice(line);
                let whole = std::mem::take(&mut self.pending);
                self.cut(&whole, &mut emit);
            }
            data = rest;
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() > MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            emit(true, &self.pending);
            self.pending = rest;
        }
    }

    /// A full line, its head cut into `P` parts when it is too long. A terminal ends lines
    /// with CRLF: the CR is not part of the text.
    fn cut(&self, mut line: &[u8], emit: &mut impl FnMut(bool, &[u8])) {
        line = line.strip_suffix(b"\r").unwrap_or(line);
        while line.len() > MAX_LINE {
            emit(true, &line[..MAX_LINE]);
            line = &line[MAX_LINE..];
        }
        emit(false, line);
    }

    /// The end of the stream: what is left is the last (full) line.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.cut(&last, &mut emit);
        }
    }
}

/// Unix nanoseconds as RFC 3339 in UTC with nine fractional digits
/// (`2026-11-21T09:03:04.000120000Z`): fixed width, so entries sort as text.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nano(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        // date -u -d @1795251784 → 2026-11-21T09:03:04Z
        assert_eq!(rfc3339_nano(1_795_251_784_000_120_000), "2026-11-21T09:03:04.000120000Z");
        assert_eq!(rfc3339_nano(4_102_444_799_999_999_999), "2099-12-31T23:59:59.999999999Z");
    }

    fn entries(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        for c in chunks {
            lines.push(c, |p, t| out.push((p, t.to_vec())));
        }
        lines.finish(|p, t| out.push((p, t.to_vec())));
        out
    }

    #[test]
    fn lines_are_whole_entries_however_they_arrive() {
        let full = |s: &str| (false, s.as_bytes().to_vec());
        assert_eq!(entries(&[b"one\ntwo\n"]), [full("one"), full("two")]);
        assert_eq!(entries(&[b"on", b"e\ntw", b"o"]), [full("one"), full("two")]);
        assert_eq!(entries(&[b"\n\n"]), [full(""), full("")]);
        assert_eq!(entries(&[b"tty\r\n"]), [full("tty")], "a terminal's CR goes");
        assert_eq!(entries(&[]), []);
    }

    #[test]
    fn long_lines_are_split_into_parts() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        let got = entries(&[&input]);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (true, vec![b'x'; MAX_LINE]));
        assert_eq!(got[1], (true, vec![b'x'; MAX_LINE]));
        assert_eq!(got[2], (false, vec![b'x'; 5]));
        assert_eq!(got[3], (false, b"next".to_vec()));
        // The same line arriving a byte at a time gives the same entries.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(entries(&bytes), got);
        // A line of exactly the limit is one full entry.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(entries(&[&exact]), [(false, vec![b'y'; MAX_LINE])]);
    }

    #[test]
    fn entries_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path).unwrap();
        log.entry(0, "stdout", false, b"hello").unwrap();
        log.entry(1, "stderr", true, b"par").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.entry(2, "stdout", false, b"after").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0.log.1")).unwrap(),
            "1970-01-01T00:00:00.000000000Z stdout F hello\n1970-01-01T00:00:00.000000001Z stderr P par\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1970-01-01T00:00:00.000000002Z stdout F after\n");
        // A symlink planted at the path is not followed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert!(log.reopen().is_err());
        assert!(CriLog::open(&path).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
    }
}
