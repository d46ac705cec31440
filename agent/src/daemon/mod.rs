//! `backup-agent run`: the sidecar daemon. Per source a scheduler (cron, time zone, no
//! overlapping runs, a missed slot caught up once), a limit on concurrent backups, a
//! freshness timer that notices a dead schedule, HTTP `/healthz` and `/metrics`, alerts.
//!
//! Shutdown: the first SIGTERM/SIGINT stops new work and gives running backups a deadline;
//! when it passes (or at a second signal) they are cancelled. A cancelled backup drops its
//! uncommitted object, so nothing partial is ever visible; the process exits 0.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Semaphore};

use crate::schedule::Schedule;

use crate::backup::slot::{desync_condition, run_slot, slot_name};
use crate::copies::inventory::{self};
use crate::copies::maintain;
use crate::observe::health;
use crate::seal::crypto::SealingKeys;
use crate::source::galera::{self};
use backup_core::alert::{Alert, Alerter};
use backup_core::config::Config;
use backup_core::state::{NewestBackup, StateStore};
use backup_core::store::clean_local_debris;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop starting backups; let running ones finish.
    Draining,
    /// Cancel running backups now.
    Abort,
}

/// How often the daemon scrubs a share of the stored copies.
const SCRUB_INTERVAL: Duration = Duration::from_secs(3600);

struct Daemon {
    cfg: Arc<Config>,
    keys: Arc<SealingKeys>,
    state: StateStore,
    alerter: Arc<Alerter>,
    sem: Arc<Semaphore>,
    /// Connections per server (`agent.max_connections_per_server`).
    budget: Arc<crate::backup::units::Budget>,
    started: DateTime<Utc>,
    /// Per source, in the order of `cfg.sources`.
    schedules: Vec<Schedule>,
}

pub async fn run(cfg: Config, shutdown_timeout: Duration) -> anyhow::Result<()> {
    let enc = cfg
        .require_backup_parts()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    let keys = Arc::new(SealingKeys::load(&enc)?.with_tenants(&cfg.sources)?);
    let schedules = cfg
        .sources
        .iter()
        .map(|s| {
            Schedule::of(&s.schedule).map_err(|e| {
                anyhow::anyhow!(
                    "source {}: schedule {:?}: {}; fix it and run check-config",
                    s.name,
                    s.schedule.expr,
                    e.message
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state = StateStore::new(&cfg.agent.state_dir);
    state.update(|_| ())?;
    for st in &cfg.stores {
        if let backup_core::config::StoreKind::Local { path } = &st.kind {
            let n = clean_local_debris(&path.path);
            if n > 0 {
                tracing::warn!(event = "debris_removed", store = %st.name, files = n, "removed temp files of an interrupted run");
            }
        }
    }
    // A desync left on by a killed run is turned off before anything else (the units of
    // split sources included).
    let known = state.load().map(|s| s.split).unwrap_or_default();
    for src in &cfg.expanded(&known).sources {
        let (cleared, errors) = galera::clear_leftover_desync(&cfg.agent.state_dir, src).await;
        for n in cleared {
            tracing::warn!(event = "desync_cleared_at_start", source = %src.name, node = %n);
        }
        for e in errors {
            tracing::error!(event = "desync_leftover", source = %src.name, error = %e);
        }
    }
    let cfg = Arc::new(cfg);
    let d = Arc::new(Daemon {
        alerter: Arc::new(Alerter::new(cfg.alerts.clone(), state.clone())),
        sem: Arc::new(Semaphore::new(cfg.agent.max_concurrent_backups)),
        budget: Arc::new(crate::backup::units::Budget::new(&cfg)),
        cfg: cfg.clone(),
        keys,
        state,
        started: Utc::now(),
        schedules,
    });
    for src in &cfg.expanded(&known).sources {
        desync_condition(&cfg, src, &d.alerter).await;
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);

    let listener = tokio::net::TcpListener::bind(&cfg.agent.http_bind)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (agent.http_bind): {e}",
                cfg.agent.http_bind
            )
        })?;
    tracing::info!(event = "daemon_started", http = %cfg.agent.http_bind, sources = cfg.sources.len(), max_concurrent = cfg.agent.max_concurrent_backups);
    let http = tokio::spawn(crate::observe::http::serve_http(listener, cfg.clone()));
    let checker = tokio::spawn(freshness_loop(d.clone(), phase_rx.clone()));
    let mut loops = Vec::new();
    for i in 0..cfg.sources.len() {
        loops.push(tokio::spawn(source_loop(d.clone(), i, phase_rx.clone())));
        if cfg.sources[i].binlog.is_some() {
            loops.push(tokio::spawn(binlog_loop(d.clone(), i, phase_rx.clone())));
        }
    }

    // Signals: first drains with a deadline, second (or the deadline) aborts.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let all_done = async {
        for l in loops.iter_mut() {
            let _ = l.await;
        }
    };
    tokio::pin!(all_done);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = &mut all_done => {}
    }
    tracing::info!(
        event = "shutdown_requested",
        deadline_secs = shutdown_timeout.as_secs_f64(),
        "no new backups; running ones get the deadline"
    );
    let _ = phase_tx.send(Phase::Draining);
    tokio::select! {
        _ = &mut all_done => {}
        _ = tokio::time::sleep(shutdown_timeout) => {
            tracing::warn!(event = "shutdown_deadline", "cancelling running backups");
            let _ = phase_tx.send(Phase::Abort);
            all_done.as_mut().await;
        }
        _ = term.recv() => {
            tracing::warn!(event = "shutdown_abort", "second signal: cancelling running backups");
            let _ = phase_tx.send(Phase::Abort);
            all_done.as_mut().await;
        }
        _ = int.recv() => {
            tracing::warn!(event = "shutdown_abort", "second signal: cancelling running backups");
            let _ = phase_tx.send(Phase::Abort);
            all_done.as_mut().await;
        }
    }
    checker.abort();
    http.abort();
    tracing::info!(event = "daemon_stopped");
    Ok(())
}

/// Resolves when the phase reaches at least `want`.
async fn reached(rx: &mut watch::Receiver<Phase>, want: Phase) {
    let rank = |p: Phase| match p {
        Phase::Running => 0,
        Phase::Draining => 1,
        Phase::Abort => 2,
    };
    let _ = rx.wait_for(|p| rank(*p) >= rank(want)).await;
}

async fn source_loop(d: Arc<Daemon>, i: usize, mut phase: watch::Receiver<Phase>) {
    let src = &d.cfg.sources[i];
    let schedule = &d.schedules[i];
    let now = Utc::now();
    let last_slot = d
        .state
        .load()
        .ok()
        .and_then(|s| s.sources.get(&src.name).and_then(|x| x.last_slot));
    // A slot missed while the daemon was down is run once, now; older ones are not.
    let mut owed = last_slot.and_then(|ls| schedule.missed_slot(ls, now));
    if let Some(s) = owed {
        tracing::info!(event = "catch_up", source = %src.name, slot = %s, "running a slot missed while the agent was down");
    }
    loop {
        let slot = match owed.take() {
            Some(s) => s,
            None => {
                let Some(next) = schedule.next_after(Utc::now()) else {
                    return;
                };
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = reached(&mut phase, Phase::Draining) => return,
                }
                next
            }
        };
        if src.split.is_some() {
            if *phase.borrow() != Phase::Running {
                return;
            }
            let _ = d
                .state
                .update(|s| s.sources.entry(src.name.clone()).or_default().last_slot = Some(slot));
            let exp = crate::backup::units::expand(&[src], &d.state, &d.alerter, Utc::now()).await;
            // Every unit of the slot, at once up to the limits; each takes its own permit.
            let runs = exp
                .units
                .iter()
                .map(|u| run_unit(&d, u, slot, phase.clone(), false));
            futures_util::future::join_all(runs).await;
            continue;
        }
        run_unit(&d, src, slot, phase.clone(), true).await;
    }
}

/// One backup of a source (or a split source's unit) for a slot: it waits for a permit
/// (max_concurrent_backups) and for its connections (max_connections_per_server), and is
/// cancelled at shutdown's deadline. With `record_slot`, the slot counts as taken (no
/// catch-up after a restart) once the run starts, not while it waits.
async fn run_unit(
    d: &Daemon,
    src: &backup_core::config::SourceConfig,
    slot: DateTime<Utc>,
    mut phase: watch::Receiver<Phase>,
    record_slot: bool,
) {
    let permit = tokio::select! {
        p = d.sem.clone().acquire_owned() => p.expect("semaphore open"),
        _ = reached(&mut phase, Phase::Draining) => return,
    };
    let connections = tokio::select! {
        c = d.budget.take(src) => c,
        _ = reached(&mut phase, Phase::Draining) => return,
    };
    if *phase.borrow() != Phase::Running {
        return;
    }
    if record_slot {
        let _ = d
            .state
            .update(|s| s.sources.entry(src.name.clone()).or_default().last_slot = Some(slot));
    }
    let mut waiting = phase.clone();
    let slot_label = slot_name(slot);
    let run = run_slot(
        &d.cfg,
        src,
        d.keys.clone(),
        &d.state,
        &d.alerter,
        &slot_label,
        None,
        true,
        async move { reached(&mut waiting, Phase::Draining).await },
        Some(connections.semaphore()),
    );
    tokio::select! {
        _ = run => {}
        _ = reached(&mut phase, Phase::Abort) => {
            tracing::warn!(event = "backup_cancelled", source = %src.name, "cancelled at shutdown; nothing partial was kept");
        }
    }
    drop(connections);
    drop(permit);
}

/// Follows a source's binary log while the daemon runs; after a failure, alerts
/// (`binlog_failed`, a condition) and retries with a growing pause (5 s to 1 min). For a
/// Galera source with the cluster lease, only the agent that holds the archiver's lease
/// follows; the others wait (standby) and take over within the lease's TTL when the
/// holder stops renewing it. A holder that loses the lease stops at once and stores
/// nothing more.
async fn binlog_loop(d: Arc<Daemon>, i: usize, mut phase: watch::Receiver<Phase>) {
    let src = &d.cfg.sources[i];
    let bl = src.binlog.clone().expect("binlog configured");
    let leased = src.galera.as_ref().is_some_and(|g| g.lease);
    let mut pause = Duration::from_secs(5);
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        let started = std::time::Instant::now();
        let mut lease = None;
        let r = if leased {
            match archiver_lease(&d, src, &phase).await {
                Ok(Some(l)) => {
                    lease = Some(l);
                    Ok(())
                }
                Ok(None) => return,
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        let r = match r {
            Err(e) => Err(crate::archive::ArchiveError::Stream {
                source_name: src.name.clone(),
                message: format!("cluster lease for the archiver: {e}"),
            }),
            Ok(()) => {
                let mut stop = phase.clone();
                let held = lease.as_mut();
                crate::archive::follow::follow(
                    &d.cfg,
                    src,
                    &bl,
                    &d.keys,
                    &d.state,
                    &d.alerter,
                    async move {
                        use crate::archive::follow::Stop;
                        match held {
                            Some(l) => tokio::select! {
                                _ = reached(&mut stop, Phase::Draining) => Stop::Flush,
                                why = l.lost() => Stop::Abandon(why),
                            },
                            None => {
                                reached(&mut stop, Phase::Draining).await;
                                Stop::Flush
                            }
                        }
                    },
                )
                .await
            }
        };
        if let Some(l) = lease {
            // Released (not done): the other agents take over at once.
            let why = match &r {
                Ok(()) => "released at shutdown".to_string(),
                Err(e) => format!("released: {e}"),
            };
            l.release(why).await;
        }
        let e = match r {
            Ok(()) => return,
            // Recorded and alerted; go on at once from where the server's log begins.
            Err(crate::archive::ArchiveError::Gap { .. }) => continue,
            // Another agent archives now; wait for the lease again.
            Err(e @ crate::archive::ArchiveError::LeaseLost { .. }) => {
                tracing::warn!(event = "archiver_lease_lost", source = %src.name, error = %e);
                continue;
            }
            Err(e) => e.to_string(),
        };
        tracing::error!(event = "binlog_failed", source = %src.name, error = %e);
        let now = Utc::now();
        let _ = d.state.update(|s| {
            let b = &mut s.sources.entry(src.name.clone()).or_default().binlog;
            b.error = Some(e.clone());
            b.error_since.get_or_insert(now);
        });
        d.alerter
            .condition(
                &format!("{}/binlog", src.name),
                true,
                || {
                    Alert::new(
                        "binlog_failed",
                        &src.name,
                        false,
                        format!("source {}: binary log archiving failed: {e}", src.name),
                    )
                },
                &src.name,
            )
            .await;
        if started.elapsed() > Duration::from_secs(60) {
            pause = Duration::from_secs(5);
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = reached(&mut phase, Phase::Draining) => return,
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

/// Waits for the archiver's lease of a Galera source (None: the daemon stops first).
/// While another agent holds it, this agent is on standby: the state says so, and the
/// freshness checks leave the archive's lag to the holder.
async fn archiver_lease(
    d: &Daemon,
    src: &backup_core::config::SourceConfig,
    phase: &watch::Receiver<Phase>,
) -> Result<Option<galera::Lease>, String> {
    let set_standby = |v: Option<String>| {
        let _ = d.state.update(|s| {
            s.sources
                .entry(src.name.clone())
                .or_default()
                .binlog
                .standby = v;
        });
    };
    set_standby(Some("another agent of the cluster".into()));
    let mut cancel = phase.clone();
    let claim = galera::acquire(
        src,
        &d.cfg.agent.site,
        &d.cfg.agent.name,
        galera::ARCHIVER_SLOT,
        async move { reached(&mut cancel, Phase::Draining).await },
    )
    .await;
    match claim {
        Ok(galera::Claim::Held(l)) => {
            set_standby(None);
            tracing::info!(event = "archiver_lease_held", source = %src.name, holder = %l.holder, takeover_from = ?l.takeover_from);
            Ok(Some(l))
        }
        Err(galera::GaleraError::ShuttingDown) => Ok(None),
        Err(e) => Err(e.to_string()),
        // The archiver's slot is never done nor given up (see galera::acquire).
        Ok(other) => Err(format!(
            "unexpected claim of the archiver's slot: {other:?}"
        )),
    }
}

async fn freshness_loop(d: Arc<Daemon>, mut phase: watch::Receiver<Phase>) {
    let mut last_scrub: Option<std::time::Instant> = None;
    loop {
        // List every store (S3 too), cache the verdicts; scrub a share once an hour.
        let scrub_now = last_scrub.is_none_or(|t| t.elapsed() >= SCRUB_INTERVAL);
        if scrub_now {
            last_scrub = Some(std::time::Instant::now());
        }
        // The units of split sources, as the state knows them now.
        let known = d.state.load().map(|s| s.split).unwrap_or_default();
        let expanded = Arc::new(d.cfg.expanded(&known));
        let (cfg, state) = (expanded.clone(), d.state.clone());
        let verdicts = tokio::task::spawn_blocking(move || {
            let stores = inventory::open_all(&cfg);
            let share = maintain::scrub_share(SCRUB_INTERVAL, cfg.policy.scrub_period);
            health::cache_remote_drill(&cfg, &stores);
            let mut out = Vec::new();
            for src in &cfg.sources {
                if scrub_now {
                    let r = maintain::scrub(&cfg, src, &stores, &state, Utc::now(), share);
                    if r.checked > 0 {
                        tracing::info!(event = "scrubbed", source = %src.name, copies = r.checked, failed = r.failed.len());
                    }
                    // A dropped database of a split source has no more runs: its backups
                    // are pruned under retention here, as a run would.
                    if src.unit_of.as_ref().is_some_and(|u| u.dropped.is_some()) {
                        let rep = maintain::prune(&cfg, src, &stores, &state, Utc::now(), false);
                        for e in &rep.errors {
                            tracing::error!(event = "prune_failed", source = %src.name, error = %e);
                        }
                        for x in &rep.deleted {
                            tracing::info!(event = "pruned", source = %src.name, object = %x);
                        }
                    }
                }
                let inv = maintain::refresh(&cfg, src, &stores, &state, Utc::now());
                // The archived segments, once an hour: every copy present with its size,
                // its manifest trusted and the same on every store, each segment on
                // enough stores (`scrub` also hashes them).
                // The segments another agent of the cluster archived are copied to this
                // agent's stores that have none of them (from a verified copy, byte for
                // byte, as `repair` does): they reach its own disk, as its backups do.
                let seg_problems = (scrub_now && src.binlog.is_some()).then(|| {
                    let (rows, _) =
                        crate::copies::segments::inventory(&cfg, src, &stores, false, Utc::now());
                    let (copied, failed) = crate::copies::segments::copy_from_peers(
                        src,
                        &stores,
                        &rows,
                        &cfg.agent.name,
                    );
                    if !copied.is_empty() || !failed.is_empty() {
                        tracing::info!(event = "segments_copied", source = %src.name, copied = copied.len(), failed = %failed.join("; "));
                    }
                    let (rows, mut problems) =
                        crate::copies::segments::inventory(&cfg, src, &stores, false, Utc::now());
                    for r in &rows {
                        for c in r.copies.iter().filter(|c| !c.ok) {
                            problems.push(format!("segment {} on {}: {}", r.id, c.store, c.error.clone().unwrap_or_default()));
                        }
                        if !r.verdict.compliant {
                            problems.push(format!("segment {}: {}", r.id, r.verdict.reasons.join("; ")));
                        }
                    }
                    problems
                });
                out.push((src.name.clone(), inv.newest().map(|b| (b.id.clone(), b.finished_at, b.verdict.clone())), seg_problems));
            }
            out
        })
        .await
        .unwrap_or_default();
        for (name, newest, seg_problems) in verdicts {
            if let Some(problems) = seg_problems {
                let n = problems.len();
                d.alerter
                    .condition(
                        &format!("{name}/binlog_policy"),
                        !problems.is_empty(),
                        || {
                            let mut a = Alert::new(
                                "policy_degraded",
                                &name,
                                false,
                                format!(
                                    "source {name}: {n} problem(s) with the archived binary log segments: {}; run backup-agent scrub and repair",
                                    problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                                ),
                            );
                            a.details = serde_json::json!({"segment_problems": problems});
                            a
                        },
                        &name,
                    )
                    .await;
            }
            if let Some((id, finished, v)) = newest {
                let past_grace =
                    (Utc::now() - finished).to_std().unwrap_or_default() > d.cfg.policy.grace;
                let degraded = !v.compliant && past_grace;
                let alert = || {
                    let mut a = Alert::new(
                        "policy_degraded",
                        &name,
                        false,
                        format!(
                            "newest backup {id} of source {name} does not meet the 3-2-1 policy: {}",
                            v.reasons.join("; ")
                        ),
                    );
                    a.backup = Some(id.clone());
                    a.details = serde_json::json!({"verdict": v});
                    a
                };
                if degraded || v.compliant {
                    d.alerter
                        .condition(&format!("{name}/policy"), degraded, alert, &name)
                        .await;
                }
            }
        }
        let cfg = expanded.clone();
        let state = d.state.load().unwrap_or_default();
        let facts =
            tokio::task::spawn_blocking(move || health::gather(&cfg, &state, Utc::now())).await;
        if let Ok(facts) = facts {
            for s in &facts.sources {
                if let Some((id, t)) = &s.newest {
                    let stores = s.stores_with_newest.clone();
                    let _ = d.state.update(|st| {
                        let e = st.sources.entry(s.name.clone()).or_default();
                        if e.newest_backup.as_ref().is_none_or(|n| n.id < *id) {
                            e.newest_backup = Some(NewestBackup {
                                id: id.clone(),
                                finished_at: *t,
                                size: 0,
                                stores,
                            });
                        }
                    });
                }
                let src_max_age = s.max_age;
                // With no backup at all, staleness counts from the daemon's start.
                let stale = match &s.newest {
                    Some(_) => health::is_stale(s, facts.now),
                    None => (facts.now - d.started).to_std().unwrap_or_default() > src_max_age,
                };
                let alert = || {
                    let msg = match &s.newest {
                        Some((id, t)) => format!(
                            "source {}: no complete backup within max age {}; newest is {id} from {}",
                            s.name,
                            humantime::format_duration(src_max_age),
                            t.to_rfc3339()
                        ),
                        None => format!("source {}: no complete backup within max age {}", s.name, humantime::format_duration(src_max_age)),
                    };
                    let mut a = Alert::new("backup_stale", &s.name, false, msg);
                    a.backup = s.newest.as_ref().map(|(id, _)| id.clone());
                    a
                };
                d.alerter
                    .condition(&format!("{}/stale", s.name), stale, alert, &s.name)
                    .await;
                if let Some(b) = &s.binlog {
                    let since_start = (facts.now - d.started).to_std().unwrap_or_default();
                    let lagging = b.lagging(since_start);
                    let lag_alert = || {
                        Alert::new(
                            "binlog_lag",
                            &s.name,
                            false,
                            format!(
                                "source {}: the binary log archive is behind by {} (max_lag {}){}; point-in-time recovery cannot reach the last minutes",
                                s.name,
                                b.lag.map(|l| humantime::format_duration(Duration::from_secs(l.as_secs())).to_string()).unwrap_or_else(|| "everything (nothing archived yet)".into()),
                                humantime::format_duration(b.max_lag),
                                b.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                            ),
                        )
                    };
                    d.alerter
                        .condition(
                            &format!("{}/binlog_lag", s.name),
                            lagging,
                            lag_alert,
                            &s.name,
                        )
                        .await;
                    let gap_alert = || {
                        let g = b.open_gap.clone().expect("active");
                        let mut a = Alert::new(
                            "binlog_gap",
                            &s.name,
                            false,
                            format!(
                                "source {}: gap in the archived binary log after GTID {} (found {}); point-in-time recovery ends there until the next backup: take one now",
                                s.name,
                                g.after_gtid,
                                g.found_at.to_rfc3339()
                            ),
                        );
                        a.details = serde_json::json!({"after_gtid": g.after_gtid, "resumed_at_gtid": g.resumed_at_gtid});
                        a
                    };
                    d.alerter
                        .condition(
                            &format!("{}/binlog_gap", s.name),
                            b.open_gap.is_some(),
                            gap_alert,
                            &s.name,
                        )
                        .await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(d.cfg.agent.check_interval) => {}
            _ = reached(&mut phase, Phase::Draining) => return,
        }
    }
}
