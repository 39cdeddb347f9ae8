//! Soak: 20 clients launch, wait for and remove containers in a loop against one agent, for
//! `HUSK_SOAK_SECS` seconds (60 by default, as CI runs it; the long form is
//! `HUSK_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`). It reports the
//! throughput, the agent's memory and open descriptors at rest after a warm-up third of the run
//! and after the rest, and fails on growth of either or on anything left behind.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{cid, processes_under, Agent};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_proto::agent::v1 as pb;
use husk_proto::mesos::v1::CommandInfo;

type Client = husk_proto::agent::v1::containerizer_client::ContainerizerClient<tonic::transport::Channel>;

const CONCURRENCY: usize = 20;

/// A `/proc/<pid>/status` memory field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Launches, waits for and removes containers on every client until `until`; the clients come
/// back for the next phase.
async fn load(
    clients: Vec<Client>,
    until: Instant,
    cycles: &Arc<AtomicU64>,
    failures: &Arc<std::sync::Mutex<Vec<String>>>,
    phase: usize,
) -> Vec<Client> {
    let mut workers = Vec::new();
    for (w, mut c) in clients.into_iter().enumerate() {
        let (cycles, failures) = (cycles.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let id = format!("s{phase}-{w}-{n}");
                n += 1;
                let r = pb::LaunchRequest {
                    container_id: cid(&id),
                    command: Some(CommandInfo { value: Some(format!("exit {}", n % 3)), ..Default::default() }),
                    ..Default::default()
                };
                let done = async {
                    c.launch(r).await?;
                    let t = c.wait(pb::WaitRequest { container_id: cid(&id) }).await?.into_inner();
                    if t.exit_code != Some((n % 3) as i32) {
                        return Err(tonic::Status::internal(format!("{id} ended {t:?}")));
                    }
                    c.remove(pb::RemoveRequest { container_id: cid(&id) }).await?;
                    Ok::<(), tonic::Status>(())
                };
                match tokio::time::timeout(Duration::from_secs(60), done).await {
                    Ok(Ok(())) => {
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => failures.lock().unwrap().push(format!("{id}: {e:?}")),
                    Err(_) => failures.lock().unwrap().push(format!("{id}: no answer within 60 s")),
                }
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for w in workers {
        clients.push(w.await.unwrap());
    }
    clients
}

/// The agent's anonymous memory once it has been idle for longer than its heap-trimming
/// period: what it keeps, not what the requests in flight hold.
async fn at_rest(pid: u32) -> u64 {
    tokio::time::sleep(husk::agent::HEAP_TRIM_EVERY + Duration::from_secs(1)).await;
    status_kib(pid, "RssAnon")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_launch_and_destroy_at_concurrency_20() {
    require!(false);
    let secs: u64 = std::env::var("HUSK_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let agent = Agent::start("soak");
    let pid = agent.process.as_ref().unwrap().id();
    let cycles = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..CONCURRENCY {
        clients.push(agent.client().await);
    }
    // Two phases with a rest after each: the first (a third of the run) warms the agent up (its
    // allocator's heaps, the runtime's threads, the connections' buffers); its memory and
    // descriptors at rest after it are the baseline for the rest after the second. Anonymous
    // memory only: the binary's pages come in as code paths first run and are no leak.
    let started = Instant::now();
    let first = started + Duration::from_secs(secs / 3);
    let clients = load(clients, first, &cycles, &failures, 0).await;
    let (rss_base, fds_base, cycles_base) = (at_rest(pid).await, fds(pid), cycles.load(Ordering::Relaxed));
    let second = Instant::now();
    let until = second + Duration::from_secs(secs - secs / 3);
    let sampler = {
        let cycles = cycles.clone();
        tokio::spawn(async move {
            let mut series = Vec::new();
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                series.push((cycles.load(Ordering::Relaxed), status_kib(pid, "RssAnon")));
            }
            series
        })
    };
    let clients = load(clients, until, &cycles, &failures, 1).await;
    let series = sampler.await.unwrap();
    // The two phases of load, without the rest between them.
    let elapsed = ((first - started) + (until - second)).as_secs_f64();
    let (rss_end, fds_end, total) = (at_rest(pid).await, fds(pid), cycles.load(Ordering::Relaxed));
    drop(clients);
    let step = (series.len() / 10).max(1);
    let samples: Vec<String> = series.iter().step_by(step).map(|(n, kib)| format!("{n}:{kib}")).collect();
    println!("soak: agent anonymous memory (KiB) under load by containers done: {}", samples.join(" "));
    let peak = series.iter().map(|(_, kib)| *kib).max().unwrap_or(rss_base);
    let growth = (rss_end as f64 - rss_base as f64) / rss_base as f64 * 100.0;
    let per_container = (rss_end as f64 - rss_base as f64) * 1024.0 / (total - cycles_base).max(1) as f64;
    println!(
        "soak: {secs} s of load at concurrency {CONCURRENCY}: {total} containers launched, waited for and removed \
         ({:.1}/s; {} after the first rest); agent anonymous memory at rest {rss_base} KiB after {cycles_base} \
         containers, {rss_end} KiB after {total} ({growth:+.1} %, {per_container:.0} bytes per container), \
         peak under load {peak} KiB; open descriptors at rest {fds_base} -> {fds_end}",
        total as f64 / elapsed,
        total - cycles_base,
    );
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} cycles failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cycles_base >= CONCURRENCY as u64, "every worker got through a cycle");
    // A leak of anything a container leaves behind (its record, a task, a connection) is a
    // kilobyte or more each. What the allocator keeps does not grow like that: a few hundred
    // bytes per container over the first thousands (debug build, 2 cores), less and less after.
    assert!(
        per_container < 1024.0,
        "the agent kept {per_container:.0} bytes per container launched and removed ({rss_base} -> {rss_end} KiB at rest)"
    );
    assert!(fds_end <= fds_base + 2, "the agent's descriptors grew: {fds_base} -> {fds_end}");

    // Nothing is left: no container, shim, mount or process (cgroups: the fixture's drop).
    let mut c = agent.client().await;
    assert!(c.list(pb::ListRequest::default()).await.unwrap().into_inner().containers.is_empty());
    for dir in ["run/shims", "work/containers"] {
        let left: Vec<_> = std::fs::read_dir(agent.path(dir)).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    assert_eq!(common::mounts_under(agent.dir.path()), Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_under(agent.dir.path(), Some(pid));
        if procs.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {procs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
