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

pub mod schedule;

use schedule::Schedule;

use crate::backup::{self, BackupError, BackupReport};
use crate::copies::inventory::{self, OpenStore};
use crate::copies::maintain;
use crate::observe::health;
use crate::seal::crypto::SealingKeys;
use crate::source::galera::{self, Claim};
use backup_core::alert::{Alert, Alerter};
use backup_core::config::{Config, EncryptionConfig, SourceConfig};
use backup_core::policy::Verdict;
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

/// What one run produced: the backup, its 3-2-1 verdict after repair, the repairs.
#[derive(Debug)]
pub struct RunReport {
    pub backup: BackupReport,
    pub verdict: Verdict,
    pub repair: maintain::RepairReport,
}

/// The cluster lease a run holds, recorded in the manifest.
#[derive(Debug, Clone)]
pub struct LeaseTag {
    pub slot: String,
    pub holder: String,
    pub takeover_from: Option<String>,
}

/// Chooses the node, desyncs it if configured, and dumps, retrying a dump that replicated
/// DDL aborted (deadlock 1213) up to `dump_retries` times. The desync is turned off on
/// every way out (the guard's drop covers cancellation).
#[allow(clippy::too_many_arguments)]
async fn dump_from_best_node(
    cfg: &Config,
    src: &SourceConfig,
    enc: &EncryptionConfig,
    keys: Arc<SealingKeys>,
    targets: &[backup::Target<'_>],
    started: DateTime<Utc>,
    now: Option<DateTime<Utc>>,
    lease: Option<&LeaseTag>,
) -> Result<BackupReport, BackupError> {
    let gerr = |message: String| BackupError::Galera {
        source_name: src.name.clone(),
        message,
    };
    let (own_desync, leftover) = galera::clear_leftover_desync(&cfg.agent.state_dir, src).await;
    for e in &leftover {
        tracing::error!(event = "desync_leftover", source = %src.name, error = %e);
    }
    let password =
        backup_core::secret::read_secret_file(&src.password_file.path, &src.password_file.key)
            .map_err(|err| BackupError::Secret {
                source_name: src.name.clone(),
                err,
            })?;
    let probes = galera::probe_all(src, &password).await;
    drop(password);
    let chosen = galera::choose(&probes, &cfg.agent.site, &own_desync);
    let i = match chosen {
        Ok(i) => i,
        // One standalone server that cannot be reached: the dump's own connect error says it.
        Err(_) if src.galera.is_none() && probes.len() == 1 => 0,
        Err(e) => return Err(gerr(e.to_string())),
    };
    let node = &probes[i].node;
    if src.galera.is_some() || probes.len() > 1 {
        let verdicts = galera::eligibility(&probes, &own_desync);
        let states: Vec<String> = probes
            .iter()
            .zip(&verdicts)
            .map(|(p, v)| p.describe(v))
            .collect();
        tracing::info!(event = "node_chosen", source = %src.name, node = %node.name, nodes = %states.join("; "));
    }
    let guard = match src.galera.as_ref().filter(|g| g.desync) {
        Some(_) => Some(
            galera::DesyncGuard::engage(&cfg.agent.state_dir, src, node)
                .await
                .map_err(gerr)?,
        ),
        None => None,
    };
    let retries = src.galera.as_ref().map(|g| g.dump_retries).unwrap_or(0);
    let mut attempt = 0u32;
    let result = loop {
        attempt += 1;
        let mut extra = serde_json::Map::new();
        extra.insert("desynced".into(), guard.is_some().into());
        extra.insert("attempts".into(), attempt.into());
        if let Some(l) = lease {
            extra.insert(
                "lease".into(),
                serde_json::json!({"slot": l.slot, "holder": l.holder, "takeover_from": l.takeover_from}),
            );
        }
        let t = if attempt == 1 {
            started
        } else {
            now.map(|n| n + chrono::Duration::seconds(attempt as i64 - 1))
                .unwrap_or_else(Utc::now)
        };
        let from = backup::DumpFrom { node, extra };
        let r = backup::run_backup(src, enc, keys.clone(), targets, t, &from).await;
        match r {
            Err(e) if e.is_deadlock() && attempt <= retries => {
                tracing::warn!(event = "dump_retry", source = %src.name, node = %node.name, attempt, error = %e, "replicated writes or DDL aborted the dump's snapshot; dumping again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) if e.is_deadlock() => {
                break Err(gerr(format!(
                    "the dump from node {} was aborted {attempt} times by conflicting replicated writes or DDL (deadlock 1213), giving up (dump_retries = {retries}); last error: {e}",
                    node.name
                )))
            }
            Err(BackupError::Dump { err, .. }) if src.galera.is_some() => {
                break Err(gerr(format!(
                    "the dump from node {} ({}) failed: {err}; nothing was kept; the next run chooses a healthy node",
                    node.name, node.endpoint
                )))
            }
            r => break r,
        }
    };
    if let Some(g) = guard {
        if let Err(e) = g.release().await {
            tracing::error!(event = "desync_off_failed", source = %src.name, node = %node.name, error = %e, "wsrep_desync is still ON; the next run (or start) turns it off");
        }
    }
    result
}

/// Runs one backup of `src` with the bookkeeping every run needs: state (attempt,
/// success, failures, ledger), repair of missing copies, the policy verdict, alerts
/// (failed, succeeded, policy degraded, recovered), logs. Used by the daemon and by
/// `backup-agent backup`. `now` is the run's clock (injectable for simulations).
pub async fn backup_once(
    cfg: &Config,
    src: &SourceConfig,
    keys: Arc<SealingKeys>,
    state: &StateStore,
    alerter: &Alerter,
    now: Option<DateTime<Utc>>,
    lease: Option<&LeaseTag>,
) -> Result<RunReport, BackupError> {
    let enc = cfg.encryption.as_ref().expect("checked at start");
    let stores: Vec<OpenStore> = tokio::task::block_in_place(|| inventory::open_all(cfg));
    let started = now.unwrap_or_else(Utc::now);
    let _ = state
        .update(|s| s.sources.entry(src.name.clone()).or_default().last_attempt = Some(started));
    tracing::info!(event = "backup_started", source = %src.name, stores = stores.len());
    let targets: Vec<backup::Target> = stores
        .iter()
        .map(|o| backup::Target {
            cfg: &o.cfg,
            store: o.store.as_ref().map(|b| b.as_ref()).map_err(|e| e.clone()),
        })
        .collect();
    let result = dump_from_best_node(cfg, src, enc, keys, &targets, started, now, lease).await;
    let result = match result {
        Ok(r) => {
            maintain::record_marks(state, &src.prefix, &r.manifest.backup_id, &r.marks);
            let failed: Vec<String> = r.failed_stores.iter().map(|(s, _)| s.clone()).collect();
            let _ = state.update(|s| {
                s.sources.entry(src.name.clone()).or_default().failed_stores = failed.clone()
            });
            for (s, e) in &r.failed_stores {
                tracing::error!(event = "store_failed", source = %src.name, store = %s, error = %e);
            }
            let now2 = now.map(|n| n + chrono::Duration::seconds(r.duration_secs as i64));
            let (repair, inv) = tokio::task::block_in_place(|| {
                let t = now2.unwrap_or_else(Utc::now);
                let rep = maintain::repair(cfg, src, &stores, state, t);
                let inv = maintain::refresh(cfg, src, &stores, state, t);
                (rep, inv)
            });
            let mut verdict = inv
                .backups
                .iter()
                .find(|b| b.id == r.manifest.backup_id)
                .map(|b| b.verdict.clone())
                .unwrap_or_else(|| Verdict {
                    compliant: false,
                    verified_copies: 0,
                    media: 0,
                    offsite: 0,
                    immutable: 0,
                    reasons: vec!["the new backup is not in the stores' listing".into()],
                });
            for (s, e) in &r.failed_stores {
                verdict.reasons.push(format!("store {s} failed: {e}"));
            }
            Ok(RunReport {
                backup: r,
                verdict,
                repair,
            })
        }
        Err(e) => Err(e),
    };
    match &result {
        Ok(RunReport {
            backup: r, verdict, ..
        }) => {
            for t in &r.non_transactional {
                tracing::warn!(event = "non_transactional_table", source = %src.name, table = %t, "dumped without snapshot consistency");
            }
            tracing::info!(
                event = "backup_succeeded",
                source = %src.name,
                backup = %r.manifest.backup_id,
                stores = %r.stores.join(","),
                compliant = verdict.compliant,
                bytes = r.manifest.data.size,
                duration = r.duration_secs,
                tables = r.manifest.tables,
                rows = r.rows,
            );
            let finished = now
                .map(|n| n + chrono::Duration::seconds(r.duration_secs as i64))
                .unwrap_or_else(Utc::now);
            let _ = state.update(|s| {
                let e = s.sources.entry(src.name.clone()).or_default();
                e.last_success = Some(finished);
                e.last_duration_secs = Some(r.duration_secs);
                e.last_size_bytes = Some(r.manifest.data.size);
                e.last_backup_id = Some(r.manifest.backup_id.clone());
                e.last_error = None;
                e.newest_backup = Some(NewestBackup {
                    id: r.manifest.backup_id.clone(),
                    finished_at: finished,
                    size: r.manifest.data.size,
                    stores: r.stores.clone(),
                });
            });
            alerter
                .clear(&format!("{}/failed", src.name), &src.name)
                .await;
            let degraded = || {
                let mut a = Alert::new(
                    "policy_degraded",
                    &src.name,
                    false,
                    format!(
                        "backup {} of source {} does not meet the 3-2-1 policy: {}",
                        r.manifest.backup_id,
                        src.name,
                        verdict.reasons.join("; ")
                    ),
                );
                a.backup = Some(r.manifest.backup_id.clone());
                a.details =
                    serde_json::json!({"verdict": verdict, "failed_stores": r.failed_stores});
                a
            };
            alerter
                .condition(
                    &format!("{}/policy", src.name),
                    !verdict.compliant,
                    degraded,
                    &src.name,
                )
                .await;
            let mut a = Alert::new(
                "backup_succeeded",
                &src.name,
                true,
                format!(
                    "backup {} of source {} stored ({} bytes, {:.1}s)",
                    r.manifest.backup_id, src.name, r.manifest.data.size, r.duration_secs
                ),
            );
            a.backup = Some(r.manifest.backup_id.clone());
            a.details = serde_json::json!({"bytes": r.manifest.data.size, "duration_seconds": r.duration_secs, "stores": r.stores});
            alerter.send(&a).await;
        }
        Err(e) => record_failure(cfg, src, state, alerter, e, started).await,
    }
    desync_condition(cfg, src, alerter).await;
    result
}

/// Alerts `desync_stuck` while a node this agent desynced could not be turned back (its
/// marker remains: the turning off failed, here or at a start), and `recovered` once a
/// later run or start managed it.
pub async fn desync_condition(cfg: &Config, src: &SourceConfig, alerter: &Alerter) {
    if src.galera.is_none() {
        return;
    }
    let stuck = galera::stuck_desyncs(&cfg.agent.state_dir, src);
    let alert = || {
        let nodes: Vec<String> = stuck
            .iter()
            .map(|(_, m)| format!("{} ({}) since {}", m.node, m.endpoint, m.since.to_rfc3339()))
            .collect();
        let mut a = Alert::new(
            "desync_stuck",
            &src.name,
            false,
            format!(
                "source {}: wsrep_desync is still ON on {}: the node is outside flow control and may fall behind the cluster; the agent retries at every run and start; to fix it now, run SET GLOBAL wsrep_desync=OFF on that node (the agent then notices at its next run)",
                src.name,
                nodes.join(", ")
            ),
        );
        a.details = serde_json::json!({
            "nodes": stuck.iter().map(|(p, m)| serde_json::json!({
                "node": m.node, "address": m.endpoint, "since": m.since, "marker": p,
            })).collect::<Vec<_>>(),
        });
        a
    };
    alerter
        .condition(
            &format!("{}/desync", src.name),
            !stuck.is_empty(),
            alert,
            &src.name,
        )
        .await;
}

/// A failed run: state, log, alert (once, then every repeat interval).
async fn record_failure(
    cfg: &Config,
    src: &SourceConfig,
    state: &StateStore,
    alerter: &Alerter,
    e: &BackupError,
    started: DateTime<Utc>,
) {
    tracing::error!(event = "backup_failed", source = %src.name, error = %e);
    let msg = e.to_string();
    let all: Vec<String> = cfg.stores.iter().map(|s| s.name.clone()).collect();
    let _ = state.update(|s| {
        let e = s.sources.entry(src.name.clone()).or_default();
        e.failures_total += 1;
        e.last_error = Some(msg.clone());
        // No pruning anywhere until a good run.
        e.failed_stores = all.clone();
    });
    let alert = || {
        let mut a = Alert::new(
            "backup_failed",
            &src.name,
            false,
            format!("backup of source {} failed: {msg}", src.name),
        );
        a.details = serde_json::json!({"error": msg, "started_at": started.to_rfc3339()});
        a
    };
    alerter
        .condition(&format!("{}/failed", src.name), true, alert, &src.name)
        .await;
}

/// How a slot ended for this agent.
#[derive(Debug)]
pub enum SlotOutcome {
    /// This agent ran the slot (or tried to).
    Ran(Box<Result<RunReport, BackupError>>),
    /// Another agent of the cluster produced it; `here` is what this agent's stores hold
    /// of that backup (None: not visible in any of them).
    Elsewhere {
        holder: String,
        backup_id: Option<String>,
        here: Option<Verdict>,
    },
}

/// The standby's check of a slot another agent produced: the backup must be in this
/// agent's stores (the shared offsite stores); its copies are verified now (never-checked
/// copies first), so this agent's verdict, metrics and healthcheck count them, and it is
/// copied into this agent's local stores (the site's own disk).
async fn confirm_elsewhere(
    cfg: &Config,
    src: &SourceConfig,
    state: &StateStore,
    slot: &str,
    holder: &str,
    backup_id: Option<&str>,
) -> Option<Verdict> {
    let id = backup_id?.to_string();
    let (c, st, s) = (cfg.clone(), state.clone(), src.clone());
    let id2 = id.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let stores = inventory::open_all(&c);
        let now = Utc::now();
        maintain::scrub(&c, &s, &stores, &st, now, 0.0);
        // This site's own disks get a copy too (if their retention keeps it); the shared
        // stores are the lease holder's.
        let rep = maintain::repair_into(&c, &s, &stores, &st, now, |sc| {
            matches!(sc.kind, backup_core::config::StoreKind::Local { .. })
        });
        for x in &rep.copied {
            tracing::info!(event = "copied_from_other_agent", source = %s.name, copy = %x);
        }
        for x in &rep.failed {
            tracing::warn!(event = "repair_failed", source = %s.name, error = %x);
        }
        let inv = maintain::refresh(&c, &s, &stores, &st, now);
        inv.backups
            .iter()
            .find(|b| b.id == id2)
            .map(|b| b.verdict.clone())
    })
    .await
    .ok()
    .flatten();
    match &verdict {
        Some(v) => {
            tracing::info!(event = "slot_confirmed", source = %src.name, slot = %slot, holder = %holder, backup = %id, verified_copies = v.verified_copies, compliant = v.compliant)
        }
        None => tracing::warn!(
            event = "slot_not_visible",
            source = %src.name,
            slot = %slot,
            holder = %holder,
            backup = %id,
            "another agent produced this slot's backup, but none of this agent's stores holds it; give both agents the shared offsite stores (operations.md, Two sites) or this agent cannot tell whether backups are fresh"
        ),
    }
    verdict
}

/// The lease name of a schedule slot.
pub fn slot_name(slot: DateTime<Utc>) -> String {
    slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs one schedule slot of `src`: with a cluster lease (Galera sources), only the agent
/// that claims the slot dumps, repairs and prunes, while the lease is renewed; losing the
/// lease cancels the run. Without a lease, just the run. `cancel` ends a wait for the lease.
#[allow(clippy::too_many_arguments)]
pub async fn run_slot(
    cfg: &Config,
    src: &SourceConfig,
    keys: Arc<SealingKeys>,
    state: &StateStore,
    alerter: &Alerter,
    slot: &str,
    now: Option<DateTime<Utc>>,
    prune: bool,
    cancel: impl std::future::Future<Output = ()>,
) -> SlotOutcome {
    let work = |lease: Option<LeaseTag>| async move {
        let r = backup_once(cfg, src, keys.clone(), state, alerter, now, lease.as_ref()).await;
        if prune && r.is_ok() {
            prune_source(cfg, src, state).await;
        }
        r
    };
    if !src.galera.as_ref().is_some_and(|g| g.lease) {
        return SlotOutcome::Ran(Box::new(work(None).await));
    }
    let started = now.unwrap_or_else(Utc::now);
    let fail = |message: String| BackupError::Galera {
        source_name: src.name.clone(),
        message,
    };
    let claim = galera::acquire(src, &cfg.agent.site, &cfg.agent.name, slot, cancel).await;
    match claim {
        Err(e) => {
            let err = fail(format!("cluster lease for slot {slot}: {e}"));
            record_failure(cfg, src, state, alerter, &err, started).await;
            SlotOutcome::Ran(Box::new(Err(err)))
        }
        Ok(Claim::Done { holder, backup_id }) => {
            tracing::info!(event = "slot_done_elsewhere", source = %src.name, slot = %slot, holder = %holder, backup = ?backup_id, "another agent produced this slot");
            let here =
                confirm_elsewhere(cfg, src, state, slot, &holder, backup_id.as_deref()).await;
            SlotOutcome::Elsewhere {
                holder,
                backup_id,
                here,
            }
        }
        Ok(Claim::GaveUp { holder, attempts }) => {
            let err = fail(format!(
                "slot {slot}: {attempts} attempts by the cluster's agents failed (last by {holder}); no agent tries again; see the lease table and those agents' logs"
            ));
            record_failure(cfg, src, state, alerter, &err, started).await;
            SlotOutcome::Ran(Box::new(Err(err)))
        }
        Ok(Claim::Held(mut lease)) => {
            tracing::info!(event = "lease_held", source = %src.name, slot = %slot, holder = %lease.holder, takeover_from = ?lease.takeover_from);
            let tag = LeaseTag {
                slot: slot.to_string(),
                holder: lease.holder.clone(),
                takeover_from: lease.takeover_from.clone(),
            };
            let r = tokio::select! {
                r = work(Some(tag)) => r,
                why = lease.lost() => {
                    let err = fail(format!("{why}; this run was cancelled and kept nothing"));
                    record_failure(cfg, src, state, alerter, &err, started).await;
                    Err(err)
                }
            };
            match &r {
                Ok(rep) => {
                    lease
                        .finish(true, Some(rep.backup.manifest.backup_id.clone()), None)
                        .await
                }
                Err(e) => lease.finish(false, None, Some(e.to_string())).await,
            }
            SlotOutcome::Ran(Box::new(r))
        }
    }
}

/// Applies retention to `src` (after a good run, under the same lease).
async fn prune_source(cfg: &Config, src: &SourceConfig, state: &StateStore) {
    let (c, st, s) = (cfg.clone(), state.clone(), src.clone());
    let rep = tokio::task::spawn_blocking(move || {
        let stores = inventory::open_all(&c);
        maintain::prune(&c, &s, &stores, &st, Utc::now(), false)
    })
    .await;
    if let Ok(rep) = rep {
        for e in &rep.errors {
            tracing::error!(event = "prune_failed", source = %src.name, error = %e);
        }
        for x in &rep.deleted {
            tracing::info!(event = "pruned", source = %src.name, object = %x);
        }
    }
}

/// How often the daemon scrubs a share of the stored copies.
const SCRUB_INTERVAL: Duration = Duration::from_secs(3600);

struct Daemon {
    cfg: Arc<Config>,
    keys: Arc<SealingKeys>,
    state: StateStore,
    alerter: Arc<Alerter>,
    sem: Arc<Semaphore>,
    started: DateTime<Utc>,
    /// Per source, in the order of `cfg.sources`.
    schedules: Vec<Schedule>,
}

pub async fn run(cfg: Config, shutdown_timeout: Duration) -> anyhow::Result<()> {
    let enc = cfg
        .require_backup_parts()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    let keys = Arc::new(SealingKeys::load(&enc)?);
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
    // A desync left on by a killed run is turned off before anything else.
    for src in &cfg.sources {
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
        cfg: cfg.clone(),
        keys,
        state,
        started: Utc::now(),
        schedules,
    });
    for src in &cfg.sources {
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
    let http = tokio::spawn(serve_http(listener, cfg.clone()));
    let checker = tokio::spawn(freshness_loop(d.clone(), phase_rx.clone()));
    let mut loops = Vec::new();
    for i in 0..cfg.sources.len() {
        loops.push(tokio::spawn(source_loop(d.clone(), i, phase_rx.clone())));
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
        let permit = tokio::select! {
            p = d.sem.clone().acquire_owned() => p.expect("semaphore open"),
            _ = reached(&mut phase, Phase::Draining) => return,
        };
        if *phase.borrow() != Phase::Running {
            return;
        }
        let _ = d
            .state
            .update(|s| s.sources.entry(src.name.clone()).or_default().last_slot = Some(slot));
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
        );
        tokio::select! {
            _ = run => {}
            _ = reached(&mut phase, Phase::Abort) => {
                tracing::warn!(event = "backup_cancelled", source = %src.name, "cancelled at shutdown; nothing partial was kept");
            }
        }
        drop(permit);
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
        let (cfg, state) = (d.cfg.clone(), d.state.clone());
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
                }
                let inv = maintain::refresh(&cfg, src, &stores, &state, Utc::now());
                out.push((src.name.clone(), inv.newest().map(|b| (b.id.clone(), b.finished_at, b.verdict.clone()))));
            }
            out
        })
        .await
        .unwrap_or_default();
        for (name, newest) in verdicts {
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
        let cfg = d.cfg.clone();
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
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(d.cfg.agent.check_interval) => {}
            _ = reached(&mut phase, Phase::Draining) => return,
        }
    }
}

async fn serve_http(listener: tokio::net::TcpListener, cfg: Arc<Config>) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let c1 = cfg.clone();
    let c2 = cfg.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let cfg = c1.clone();
                async move {
                    let (v, _, _) = tokio::task::spawn_blocking(move || health::check(&cfg))
                        .await
                        .expect("healthcheck task");
                    let code = if v.code == health::OK {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, format!("{}\n", v.line))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let cfg = c2.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || {
                        let (v, facts, state) = health::check(&cfg);
                        crate::observe::metrics::render(&state, &facts, v.code)
                    })
                    .await
                    .expect("metrics task");
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(event = "http_failed", error = %e);
    }
}
