//! huskctl's output: tables for people, JSON and YAML (the protobuf JSON mapping) for scripts.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_proto::agent::v1::{ContainerInfo, ContainerState, ContainerTermination};
use husk_proto::mesos::v1::Resource;
use serde::Serialize;

/// How listings and inspections are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML, or `table()` for a table.
pub fn print<T: Serialize>(value: &T, format: Format, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `RUNNING`, `TERMINATED`, ... as people read them: `running`.
pub fn state(s: ContainerState) -> String {
    s.as_str_name().to_ascii_lowercase()
}

/// How long ago `ns` (nanoseconds since the epoch) was: `5s`, `3m`, `2h`, `4d`.
pub fn ago(ns: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
    let secs = (now.saturating_sub(ns) / 1_000_000_000).max(0) as u64;
    human(Duration::from_secs(secs))
}

/// A point in time as `--since` takes it, in unix nanoseconds: a duration back from now
/// (`90s`, `10m`, `2h`, `1d`, combined as `1h30m`) or an RFC 3339 time
/// (`2026-11-21T09:30:00Z`, `2026-11-21T10:30:00.5+01:00`).
pub fn parse_since(s: &str) -> Result<i64, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
    if let Some(back) = parse_relative(s) {
        return Ok(now.saturating_sub(back));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("`{s}` is neither a duration (10m, 1h30m, 2d) nor an RFC 3339 time (2026-11-21T09:30:00Z)")
    })
}

fn parse_relative(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit: i64 = match &rest[..unit_len] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        padded.truncate(9);
        frac_ns = padded.parse().ok()?;
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(tz.as_bytes()[0], b'+' | b'-') && tz.as_bytes()[3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let o = oh * 3600 + om * 60;
            if tz.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// A progress bar `[=====>    ]` of `width` cells for a fraction done.
pub fn bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0) * width as f64) as usize).min(width);
    let head = if filled < width { ">" } else { "" };
    format!("[{}{head}{}]", "=".repeat(filled), " ".repeat(width - filled - head.len()))
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `cpus:0.5 mem:64` from resources (scalars only).
pub fn resources(r: &[Resource]) -> String {
    let parts: Vec<String> =
        r.iter().filter_map(|r| r.scalar.map(|s| format!("{}:{}", r.name, trim_float(s.value)))).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

pub fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The STATUS column: `running`, or `exited (3) 5s ago`, `killed`, `failed: <message>`.
pub fn status(c: &ContainerInfo) -> String {
    match &c.termination {
        None => state(c.state()),
        Some(t) => termination(t),
    }
}

pub fn termination(t: &ContainerTermination) -> String {
    use husk_proto::mesos::v1::TaskState;
    let when = t.finished_at_ns.map(|ns| format!(" {} ago", ago(ns))).unwrap_or_default();
    match (t.state(), t.exit_code, t.signal) {
        (TaskState::TaskFinished, _, _) => format!("exited (0){when}"),
        (TaskState::TaskKilled, _, _) => format!("killed{when}"),
        (_, _, _) if t.oom_killed() => format!("oom-killed{when}"),
        (_, Some(code), _) => format!("exited ({code}){when}"),
        (_, None, Some(sig)) => format!("signaled ({sig}){when}"),
        (state, None, None) => {
            format!("{}: {}", state.as_str_name().trim_start_matches("TASK_").to_lowercase(), t.message())
        }
    }
}

/// Bytes as `12.3MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_every_column_but_the_last() {
        let t = table(&["ID", "STATE", "COMMAND"], &[vec!["a".into(), "running".into(), "sleep 1".into()]]);
        assert_eq!(t, "ID  STATE    COMMAND\na   running  sleep 1\n");
    }

    #[test]
    fn people_numbers() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(64 << 20), "64.0MiB");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(3600)), "60m");
        assert_eq!(human(Duration::from_secs(3 * 86400)), "3d");
        assert_eq!(trim_float(0.5), "0.5");
        assert_eq!(trim_float(64.0), "64");
        assert_eq!(bar(0.5, 10), "[=====>    ]");
        assert_eq!(bar(1.0, 4), "[====]");
        assert_eq!(bar(0.0, 4), "[>   ]");
    }

    #[test]
    fn since_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-21T09:30:00Z"), Some(1_795_253_400 * 1_000_000_000));
        assert_eq!(parse_rfc3339("2026-11-21T10:30:00.5+01:00"), Some(1_795_253_400 * 1_000_000_000 + 500_000_000));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.123456789123-00:30"),
            Some((951_782_400 + 1800) * 1_000_000_000 + 123_456_789)
        );
        for bad in [
            "2026-11-21",
            "2026-13-01T00:00:00Z",
            "2026-11-21T09:30:00",
            "2026-11-21T09:30:00.Z",
            "x026-11-21T09:30:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_relative("90s"), Some(90_000_000_000));
        assert_eq!(parse_relative("1h30m"), Some(5_400_000_000_000));
        for bad in ["", "10", "m", "5y", "99999999999999999999d"] {
            assert_eq!(parse_relative(bad), None, "{bad}");
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        let ten_min_ago = parse_since("10m").unwrap();
        assert!((now - ten_min_ago - 600_000_000_000).abs() < 5_000_000_000);
        assert!(parse_since("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
