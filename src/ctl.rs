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
    }
}
