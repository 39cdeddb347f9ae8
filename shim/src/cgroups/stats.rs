//! Usage statistics of a cgroup, in the terms of Mesos' `ResourceStatistics`.
use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::{Cgroup, Layout};

/// What a cgroup reports. Fields a hierarchy does not offer stay `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub processes: u32,
    pub threads: u32,
    pub cpus_user_time_secs: Option<f64>,
    pub cpus_system_time_secs: Option<f64>,
    pub cpus_nr_periods: Option<u64>,
    pub cpus_nr_throttled: Option<u64>,
    pub cpus_throttled_time_secs: Option<f64>,
    /// Memory in use (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub mem_total_bytes: Option<u64>,
    pub mem_total_memsw_bytes: Option<u64>,
    pub mem_limit_bytes: Option<u64>,
    pub mem_soft_limit_bytes: Option<u64>,
    pub mem_cache_bytes: Option<u64>,
    pub mem_rss_bytes: Option<u64>,
    pub mem_mapped_file_bytes: Option<u64>,
    pub mem_swap_bytes: Option<u64>,
    pub mem_unevictable_bytes: Option<u64>,
    /// Times the kernel's OOM killer killed a process of the cgroup.
    pub oom_kills: Option<u64>,
}

/// `key value` lines (cpu.stat, memory.stat, memory.events, cpuacct.stat).
fn flat_keyed(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single-number file; `max` and unreadable files are `None`.
fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn count_lines(path: &Path) -> u32 {
    std::fs::read_to_string(path).map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u32).unwrap_or(0)
}

/// v1 reports "no limit" as a huge page-aligned number.
fn v1_limit(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v < (i64::MAX as u64) & !4095)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map(|v| v as f64).unwrap_or(100.0)
}

pub(super) fn read(cg: &Cgroup) -> io::Result<Stats> {
    let mut s = Stats { processes: cg.procs()?.len() as u32, ..Default::default() };
    match cg.layout() {
        Layout::V2 { .. } => {
            let dir = cg.dir("").unwrap();
            s.threads = count_lines(&dir.join("cgroup.threads"));
            let cpu = flat_keyed(&dir.join("cpu.stat"));
            s.cpus_user_time_secs = cpu.get("user_usec").map(|v| *v as f64 / 1e6);
            s.cpus_system_time_secs = cpu.get("system_usec").map(|v| *v as f64 / 1e6);
            s.cpus_nr_periods = cpu.get("nr_periods").copied();
            s.cpus_nr_throttled = cpu.get("nr_throttled").copied();
            s.cpus_throttled_time_secs = cpu.get("throttled_usec").map(|v| *v as f64 / 1e6);
            s.mem_total_bytes = number(&dir.join("memory.current"));
            s.mem_limit_bytes = number(&dir.join("memory.max"));
            s.mem_soft_limit_bytes = number(&dir.join("memory.low")).filter(|v| *v > 0);
            let swap = number(&dir.join("memory.swap.current"));
            s.mem_swap_bytes = swap;
            s.mem_total_memsw_bytes = match (s.mem_total_bytes, swap) {
                (Some(m), Some(w)) => Some(m + w),
                _ => None,
            };
            let mem = flat_keyed(&dir.join("memory.stat"));
            s.mem_rss_bytes = mem.get("anon").copied();
            s.mem_cache_bytes = mem.get("file").copied();
            s.mem_mapped_file_bytes = mem.get("file_mapped").copied();
            s.mem_unevictable_bytes = mem.get("unevictable").copied();
            s.oom_kills = flat_keyed(&dir.join("memory.events")).get("oom_kill").copied();
        }
        Layout::V1 { .. } => {
            if let Some(dir) = cg.dir("pids").or_else(|| cg.dir("freezer")) {
                s.threads = count_lines(&dir.join("tasks"));
            }
            if let Some(dir) = cg.dir("cpuacct") {
                let acct = flat_keyed(&dir.join("cpuacct.stat"));
                let hz = clock_ticks();
                s.cpus_user_time_secs = acct.get("user").map(|v| *v as f64 / hz);
                s.cpus_system_time_secs = acct.get("system").map(|v| *v as f64 / hz);
            }
            if let Some(dir) = cg.dir("cpu") {
                let cpu = flat_keyed(&dir.join("cpu.stat"));
                s.cpus_nr_periods = cpu.get("nr_periods").copied();
                s.cpus_nr_throttled = cpu.get("nr_throttled").copied();
                s.cpus_throttled_time_secs = cpu.get("throttled_time").map(|v| *v as f64 / 1e9);
            }
            if let Some(dir) = cg.dir("memory") {
                s.mem_total_bytes = number(&dir.join("memory.usage_in_bytes"));
                s.mem_total_memsw_bytes = number(&dir.join("memory.memsw.usage_in_bytes"));
                s.mem_limit_bytes = v1_limit(number(&dir.join("memory.limit_in_bytes")));
                s.mem_soft_limit_bytes = v1_limit(number(&dir.join("memory.soft_limit_in_bytes")));
                let mem = flat_keyed(&dir.join("memory.stat"));
                let get = |k: &str| mem.get(&format!("total_{k}")).or_else(|| mem.get(k)).copied();
                s.mem_rss_bytes = get("rss");
                s.mem_cache_bytes = get("cache");
                s.mem_mapped_file_bytes = get("mapped_file");
                s.mem_swap_bytes = get("swap");
                s.mem_unevictable_bytes = get("unevictable");
                s.oom_kills = flat_keyed(&dir.join("memory.oom_control")).get("oom_kill").copied();
            }
        }
    }
    Ok(s)
}
