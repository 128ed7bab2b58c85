//! `handover-sidecar demo`: a local pool of pods under client load, with pods killed and replaced
//! while it runs. Ends with a summary; its last line is the same summary as JSON. Exits non-zero
//! when an acknowledged update was lost in push mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::localpool::{
    CounterSession, LocalPool, PoolOptions, SessionCheck, Sig, check_session, metric_sum, scrape, session_started,
};
use handover_dataplane::decide::Mode;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Pods in the pool.
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 40)]
    pub sessions: usize,
    /// Requests in flight per session (a browser's parallel requests on several connections, one
    /// cookie jar): each acknowledged update must survive whatever order the answers arrive in.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=6))]
    pub concurrency: u16,
    /// How long clients run.
    #[arg(long, default_value = "20s", value_parser = handover_common::duration::parse)]
    pub duration: Duration,
    /// Kill (and replace) a pod this often.
    #[arg(long, default_value = "3s", value_parser = handover_common::duration::parse)]
    pub kill_every: Duration,
    /// push: the app pushes every change (nothing acknowledged may be lost); pull: the sidecar
    /// pulls every `--snapshot-interval` (may lose up to one interval).
    #[arg(long, value_enum, default_value = "push")]
    pub mode: Mode,
    #[arg(long, default_value = "500ms", value_parser = handover_common::duration::parse)]
    pub snapshot_interval: Duration,
    /// The faults, taken in turn: `kill` (SIGKILL), `term` (graceful drain), `stop` (SIGSTOP: the
    /// pod hangs without closing its connections, then is killed at the next fault).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kill,term")]
    pub faults: Vec<Fault>,
}

/// A way for a pod to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Kill,
    Term,
    Stop,
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: Mode,
    pub pods: usize,
    pub sessions: usize,
    pub concurrency: u16,
    pub duration_seconds: f64,
    pub requests: u64,
    pub acknowledged_updates: u64,
    pub client_errors: u64,
    pub pods_killed: u64,
    pub pods_terminated: u64,
    /// Sessions whose requests failed for a while and then went on.
    pub failovers: u64,
    /// Sessions taken over by a successor, as the sidecars counted them.
    pub takeovers: u64,
    pub failover_ms_p50: f64,
    pub failover_ms_p99: f64,
    pub lost_updates: u64,
    pub network: &'static str,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    if args.pods < 2 {
        return Err("--pods must be at least 2: a session needs somewhere to fail over to".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let mut opts = PoolOptions::new(exe, args.pods);
    opts.mode = args.mode;
    opts.snapshot_interval = args.snapshot_interval;
    println!("starting {} pods (sidecar + demo app each)…", args.pods);
    let mut pool = LocalPool::start(opts).await?;
    println!(
        "network: {}",
        match pool.network() {
            "namespaces" => "every pod in its own network namespace (own IP, own localhost) on a bridge",
            _ => "every pod on its own loopback address (no permission for network namespaces)",
        }
    );
    println!(
        "pool ready: {}; {} sessions for {:?}, a pod killed every {:?}, {:?} mode",
        pool.pods.iter().map(|p| format!("{}@{}", p.name, p.data())).collect::<Vec<_>>().join(" "),
        args.sessions,
        args.duration,
        args.kill_every,
        args.mode
    );

    let ready = pool.ready_handle();
    let started = Instant::now();
    let deadline = started + args.duration;
    let acked_total = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for session in 0..args.sessions {
        // The session's connections share one jar, as a browser's do.
        let jar = (args.concurrency > 1).then(|| Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())));
        for lane in 0..args.concurrency {
            clients.push((session, lane, Arc::clone(&ready), Arc::clone(&acked_total), jar.clone()));
        }
    }
    let clients: Vec<_> = clients
        .into_iter()
        .map(|(session, lane, ready, acked_total, shared_jar)| {
            (
                session,
                tokio::spawn(async move {
                    if let Some(jar) = shared_jar.as_ref().filter(|_| lane > 0)
                        && let Err(e) = session_started(jar, Duration::from_secs(30)).await
                    {
                        return (CounterSession::default(), Some(e));
                    }
                    let mut s = CounterSession { shared_jar, ..CounterSession::default() };
                    let mut failure = None;
                    while Instant::now() < deadline {
                        match s.incr(&ready).await {
                            Ok(_) => {
                                acked_total.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    (s, failure)
                }),
            )
        })
        .collect();

    let mut killed = 0u64;
    let mut terminated = 0u64;
    let mut hung: Option<usize> = None;
    let mut retired_takeovers = 0.0;
    let mut next_fault = started + args.kill_every;
    let mut next_report = started + Duration::from_secs(1);
    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_fault {
            next_fault += args.kill_every;
            if let Some(stopped) = hung.take() {
                // The pod hung since the last fault: it goes now (its replacement already runs).
                pool.kill_pod(stopped).await;
            }
            let running = pool.running();
            let faults_so_far = killed + terminated;
            let victim = running[faults_so_far as usize % running.len()];
            let name = pool.pods[victim].name.clone();
            if let Some(page) = scrape(pool.pods[victim].admin()).await {
                retired_takeovers += metric_sum(&page, "handover_takeovers_total");
            }
            match args.faults[faults_so_far as usize % args.faults.len().max(1)] {
                Fault::Kill => {
                    pool.kill_pod(victim).await;
                    killed += 1;
                    println!("  {:>5.1}s  SIGKILL {name}", started.elapsed().as_secs_f64());
                }
                Fault::Term => {
                    println!("  {:>5.1}s  SIGTERM {name} (graceful drain)", started.elapsed().as_secs_f64());
                    pool.terminate_pod(victim).await?;
                    terminated += 1;
                }
                Fault::Stop => {
                    pool.signal_pod(victim, Sig::Stop);
                    hung = Some(victim);
                    killed += 1;
                    println!(
                        "  {:>5.1}s  SIGSTOP {name} (hangs until the next fault)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            let added = pool.add_pod().await?;
            println!("  {:>5.1}s  started {} to replace it", started.elapsed().as_secs_f64(), pool.pods[added].name);
        }
        if now >= next_report {
            next_report += Duration::from_secs(1);
            let acked = acked_total.load(Ordering::Relaxed);
            println!(
                "  {:>5.1}s  acknowledged updates {acked:>7}  ({:.0}/s)  ready pods {}",
                started.elapsed().as_secs_f64(),
                acked as f64 / started.elapsed().as_secs_f64(),
                pool.ready_addrs().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    if let Some(stopped) = hung.take() {
        pool.kill_pod(stopped).await;
    }
    // Each session's clients (one per request in flight).
    let mut groups: Vec<Vec<CounterSession>> = (0..args.sessions).map(|_| Vec::new()).collect();
    let mut failures = Vec::new();
    for (session, c) in clients {
        let (s, failure) = c.await.map_err(|e| format!("a client task failed: {e}"))?;
        if let Some(f) = failure {
            failures.push(f);
        }
        groups[session].push(s);
    }
    let elapsed = started.elapsed();
    println!("clients stopped; verifying every session's count against what its clients were acknowledged…");
    let mut lost_updates = 0;
    for group in &mut groups {
        if group.is_empty() {
            continue;
        }
        // Every acknowledged increment of every connection must be in the session's count.
        let SessionCheck { count, increments, rollbacks } = check_session(group, &ready).await?;
        let lost = increments.saturating_sub(count).max(rollbacks);
        if lost > 0 {
            println!(
                "session {}: {lost} acknowledged updates lost (count {count}, acknowledged {increments})",
                group[0].session
            );
        }
        lost_updates += lost;
    }
    let sessions: Vec<CounterSession> = groups.into_iter().flatten().collect();
    let takeovers = retired_takeovers + pool.metric("handover_takeovers_total").await;

    let mut recoveries: Vec<Duration> = sessions.iter().flat_map(|s| s.recoveries.iter().copied()).collect();
    recoveries.sort();
    let summary = Summary {
        mode: args.mode,
        pods: args.pods,
        sessions: args.sessions,
        concurrency: args.concurrency,
        duration_seconds: elapsed.as_secs_f64(),
        requests: sessions.iter().map(|s| s.requests).sum(),
        acknowledged_updates: sessions.iter().map(|s| s.increments).sum(),
        client_errors: sessions.iter().map(|s| s.errors).sum(),
        pods_killed: killed,
        pods_terminated: terminated,
        failovers: recoveries.len() as u64,
        takeovers: takeovers as u64,
        failover_ms_p50: percentile(&recoveries, 50.0),
        failover_ms_p99: percentile(&recoveries, 99.0),
        lost_updates,
        network: pool.network(),
    };
    drop(pool);

    println!();
    println!("sessions              {} ({} request(s) in flight each)", summary.sessions, summary.concurrency);
    println!(
        "requests              {}  ({:.0}/s)",
        summary.requests,
        summary.requests as f64 / summary.duration_seconds
    );
    println!("acknowledged updates  {}", summary.acknowledged_updates);
    println!("pods killed           {} SIGKILL or SIGSTOP, {} graceful", summary.pods_killed, summary.pods_terminated);
    println!("failovers             {} (client saw errors, then went on)", summary.failovers);
    println!("takeovers             {} (sessions restored on a successor)", summary.takeovers);
    println!("failover latency      p50 {:.1} ms, p99 {:.1} ms", summary.failover_ms_p50, summary.failover_ms_p99);
    println!("lost updates          {}", summary.lost_updates);
    for f in &failures {
        println!("client failure        {f}");
    }
    println!("{}", serde_json::to_string(&summary).map_err(|e| e.to_string())?);

    let must_be_lossless = args.mode != Mode::Pull;
    if !failures.is_empty() {
        return Err(format!("{} sessions could not go on", failures.len()));
    }
    if must_be_lossless && summary.lost_updates > 0 {
        return Err(format!("{} acknowledged updates were lost in {:?} mode", summary.lost_updates, args.mode));
    }
    Ok(())
}
