//! Soak: 20 clients launch, wait for and remove containers in a loop against one agent, for
//! `HUSK_SOAK_SECS` seconds (60 by default, as CI runs it; the long form is
//! `HUSK_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`). It reports the
//! throughput, the agent's memory and open descriptors, and fails on growth of either or on
//! anything left behind.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{cid, processes_under, Agent};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_proto::agent::v1 as pb;
use husk_proto::mesos::v1::CommandInfo;

const CONCURRENCY: usize = 20;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_launch_and_destroy_at_concurrency_20() {
    require!(false);
    let secs: u64 = std::env::var("HUSK_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let agent = Agent::start("soak");
    let pid = agent.process.as_ref().unwrap().id();
    let cycles = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    // The baseline is taken once the agent has warmed up (a fifth of the run).
    let warm = started + Duration::from_secs(secs / 5);
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let mut c = agent.client().await;
        let (cycles, failures) = (cycles.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let id = format!("s{w}-{n}");
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
        }));
    }
    tokio::time::sleep_until(warm.into()).await;
    let (rss_base, fds_base, cycles_base) = (rss_kib(pid), fds(pid), cycles.load(Ordering::Relaxed));
    let mut rss_peak = rss_base;
    let mut series = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(pid);
        rss_peak = rss_peak.max(now);
        series.push((cycles.load(Ordering::Relaxed), now));
    }
    let step = (series.len() / 10).max(1);
    let samples: Vec<String> = series.iter().step_by(step).map(|(n, kib)| format!("{n}:{kib}")).collect();
    println!("soak: agent RSS KiB by containers done: {}", samples.join(" "));
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (rss_end, fds_end, total) = (rss_kib(pid), fds(pid), cycles.load(Ordering::Relaxed));
    let growth = (rss_end as f64 - rss_base as f64) / rss_base as f64 * 100.0;
    println!(
        "soak: {secs} s at concurrency {CONCURRENCY}: {total} containers launched, waited for and removed \
         ({:.1}/s; {} after warm-up); agent RSS {rss_base} KiB after warm-up, {rss_end} KiB at the end \
         ({growth:+.1} %), peak {rss_peak} KiB; open descriptors {fds_base} -> {fds_end}",
        total as f64 / elapsed,
        total - cycles_base,
    );
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} cycles failed:\n{}", failures.len(), failures.join("\n"));
    assert!(total >= CONCURRENCY as u64, "every worker got through a cycle");
    assert!(growth < 10.0, "the agent's memory grew {growth:.1} % ({rss_base} -> {rss_end} KiB)");
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
