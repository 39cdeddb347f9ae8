//! Failpoints: named places in the agent and the shim where a test crashes or stalls the
//! process, to prove that what was checkpointed before the crash survives it.
//!
//! They are armed by the environment only, `HUSK_FAILPOINTS="name=action[;name=action...]"`,
//! read once per process. The shim inherits the agent's environment, so one variable reaches
//! both (the names say which process a point is in). Actions:
//!
//! - `abort`: print `husk: failpoint <name>: abort` to stderr and abort (SIGABRT, no core file),
//!   as a crash.
//! - `sleep(MS)`: stall the calling thread for MS milliseconds, then go on.
//!
//! `action@N` fires only at the Nth time the point is reached (counting from 1). Off (the
//! variable unset or empty) a failpoint is one load of an initialised `OnceLock` and a length
//! check: nothing else runs, whatever the build.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms failpoints.
pub const VAR: &str = "HUSK_FAILPOINTS";

/// Every failpoint of the agent, in the order a container meets them. The crash matrix test
/// crashes the agent at each.
pub const AGENT: &[&str] = &[
    // Launch: launch.json written but not state.json; both written; bundle written; shim up;
    // command started.
    "agent.launch.half-checkpointed",
    "agent.launch.accepted",
    "agent.launch.bundle-written",
    "agent.launch.shim-started",
    "agent.launch.running",
    // Kill: the kill checkpointed, the signal not yet sent.
    "agent.kill.checkpointed",
    // The end of a container: the shim reported its exit; cleaned up; termination checkpointed.
    "agent.destroy.exit-reported",
    "agent.destroy.cleaned-up",
    "agent.destroy.terminated",
    // Remove: the shim's directory gone, the container's directory not yet.
    "agent.remove.partial",
    // Recovery: a checkpoint loaded, not yet acted on; every container recovered.
    "agent.recover.loaded",
    "agent.recover.done",
];

/// Every failpoint of the shim.
pub const SHIM: &[&str] = &[
    // The container created (init.json written), the shim not yet serving.
    "shim.created",
    // The runtime's start done, the answer to Start not yet sent.
    "shim.started",
    // The init reaped, its exit not yet in exit.json.
    "shim.reaped",
    // exit.json written, the exit not yet reported to anyone.
    "shim.exit-recorded",
];

#[derive(Debug)]
enum Action {
    Abort,
    Sleep(Duration),
}

#[derive(Debug)]
struct Point {
    name: String,
    action: Action,
    /// Fire only at this hit (1-based); 0: at every hit.
    at: u64,
    hits: AtomicU64,
}

static POINTS: OnceLock<Vec<Point>> = OnceLock::new();

fn armed() -> &'static [Point] {
    POINTS.get_or_init(|| match std::env::var(VAR) {
        Ok(spec) => parse(&spec).unwrap_or_else(|e| {
            // A mistyped failpoint must not let a crash test pass by never crashing.
            eprintln!("husk: {VAR}: {e}");
            std::process::abort()
        }),
        Err(_) => Vec::new(),
    })
}

/// Parses and checks `HUSK_FAILPOINTS` now, so a bad value stops the process at its start.
/// Returns the names of the armed points.
pub fn init() -> Result<Vec<String>, String> {
    let spec = std::env::var(VAR).unwrap_or_default();
    parse(&spec)?;
    Ok(armed().iter().map(|p| p.name.clone()).collect())
}

/// The failpoint `name`: does what `HUSK_FAILPOINTS` says for it, if anything.
#[inline]
pub fn hit(name: &str) {
    let points = armed();
    if !points.is_empty() {
        fire(points, name);
    }
}

#[cold]
fn fire(points: &[Point], name: &str) {
    debug_assert!(AGENT.contains(&name) || SHIM.contains(&name), "unlisted failpoint {name}");
    for p in points.iter().filter(|p| p.name == name) {
        let n = p.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if p.at != 0 && p.at != n {
            continue;
        }
        match p.action {
            Action::Abort => {
                eprintln!("husk: failpoint {name}: abort");
                // A simulated crash leaves no core file behind.
                let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
                std::process::abort();
            }
            Action::Sleep(d) => {
                eprintln!("husk: failpoint {name}: sleeping {} ms", d.as_millis());
                std::thread::sleep(d);
            }
        }
    }
}

fn parse(spec: &str) -> Result<Vec<Point>, String> {
    let mut points = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) =
            item.split_once('=').ok_or_else(|| format!("`{item}`: expected `name=action` (abort or sleep(MS))"))?;
        let name = name.trim();
        if !AGENT.contains(&name) && !SHIM.contains(&name) {
            return Err(format!("`{name}` is not a failpoint (known: {})", [AGENT, SHIM].concat().join(", ")));
        }
        let (action, at) = match action.trim().split_once('@') {
            Some((a, n)) => {
                let n: u64 = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("`{item}`: `@{n}` must be a hit count ≥ 1"))?;
                (a, n)
            }
            None => (action.trim(), 0),
        };
        let action = match action {
            "abort" => Action::Abort,
            a if a.starts_with("sleep(") && a.ends_with(')') => {
                let ms: u64 = a[6..a.len() - 1]
                    .parse()
                    .map_err(|_| format!("`{item}`: sleep takes milliseconds, as in sleep(500)"))?;
                Action::Sleep(Duration::from_millis(ms))
            }
            a => return Err(format!("`{item}`: unknown action `{a}` (abort or sleep(MS))")),
        };
        points.push(Point { name: name.to_string(), action, at, hits: AtomicU64::new(0) });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_counts() {
        let p = parse(" agent.launch.accepted=abort ; shim.reaped=sleep(250)@3").unwrap();
        assert_eq!(p.len(), 2);
        assert!(matches!(p[0].action, Action::Abort) && p[0].at == 0);
        assert!(matches!(p[1].action, Action::Sleep(d) if d == Duration::from_millis(250)) && p[1].at == 3);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_what_would_never_fire() {
        assert!(parse("agent.nope=abort").unwrap_err().contains("`agent.nope` is not a failpoint"));
        assert!(parse("shim.reaped").unwrap_err().contains("expected `name=action`"));
        assert!(parse("shim.reaped=explode").unwrap_err().contains("unknown action `explode`"));
        assert!(parse("shim.reaped=abort@0").unwrap_err().contains("hit count"));
        assert!(parse("shim.reaped=sleep(x)").unwrap_err().contains("milliseconds"));
    }

    #[test]
    fn counts_hits_and_sleeps_only_at_the_nth() {
        let p = parse("agent.recover.done=sleep(200)@2").unwrap();
        fire(&p, "agent.recover.done");
        let t = std::time::Instant::now();
        fire(&p, "agent.recover.done");
        assert!(t.elapsed() >= Duration::from_millis(200), "the second hit sleeps");
        assert_eq!(p[0].hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn names_are_unique() {
        let all = [AGENT, SHIM].concat();
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }
}
