//! One run of one source for one schedule slot, as the daemon and `backup-agent backup`
//! make it: the cluster lease, node choice and desync, the backup, repair and prune, the
//! state and the alerts.

use std::sync::Arc;

use std::time::Duration;
use tokio::sync::Semaphore;

use chrono::{DateTime, Utc};

use crate::backup::{self, BackupError, BackupReport};
use crate::copies::inventory::{self, OpenStore};
use crate::copies::maintain;
use crate::seal::crypto::SealingKeys;
use crate::source::galera::{self, Claim};
use backup_core::alert::{Alert, Alerter};
use backup_core::config::{Config, EncryptionConfig, SourceConfig};
use backup_core::policy::Verdict;
use backup_core::state::{NewestBackup, StateStore};

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
    spare: Option<&Arc<Semaphore>>,
) -> Result<BackupReport, BackupError> {
    let gerr = |message: String| BackupError::Galera {
        source_name: src.name.clone(),
        message,
    };
    let (mut own_desync, leftover) = galera::clear_leftover_desync(&cfg.agent.state_dir, src).await;
    // A node another backup of this agent holds desynced (units of one split source)
    // is no one else's desync.
    own_desync.extend(galera::desynced_here(src).await);
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
                .map_err(|e| gerr(e.to_string()))?,
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
        let from = backup::DumpFrom {
            node,
            extra,
            spare: spare.cloned(),
        };
        let journal = backup::journal::path(&cfg.agent.state_dir, &src.name);
        let r = backup::run_backup(src, enc, keys.clone(), targets, t, &from, &journal).await;
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
#[allow(clippy::too_many_arguments)]
pub async fn backup_once(
    cfg: &Config,
    src: &SourceConfig,
    keys: Arc<SealingKeys>,
    state: &StateStore,
    alerter: &Alerter,
    now: Option<DateTime<Utc>>,
    lease: Option<&LeaseTag>,
    spare: Option<&Arc<Semaphore>>,
) -> Result<RunReport, BackupError> {
    let enc = cfg.encryption.as_ref().expect("checked at start");
    let stores: Vec<OpenStore> = tokio::task::block_in_place(|| inventory::open_all(cfg));
    let started = now.unwrap_or_else(Utc::now);
    let _ = state
        .update(|s| s.sources.entry(src.name.clone()).or_default().last_attempt = Some(started));
    tracing::info!(event = "backup_started", source = %src.name, stores = stores.len());
    // The caller holds the source's lock: ids in the journal are a dead run's.
    let journal = backup::journal::path(&cfg.agent.state_dir, &src.name);
    let dead = backup::journal::read(&journal);
    if !dead.is_empty() {
        tokio::task::block_in_place(|| remove_dead_runs(src, &stores, &dead));
    }
    let _clear = backup::journal::Clear(journal);
    backup_core::os::test_kill_point("locked");
    let targets: Vec<backup::Target> = stores
        .iter()
        .map(|o| backup::Target {
            cfg: &o.cfg,
            store: o.store.as_ref().map(|b| b.as_ref()),
        })
        .collect();
    let result =
        dump_from_best_node(cfg, src, enc, keys, &targets, started, now, lease, spare).await;
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
            let mut again = 0;
            for t in &r.non_transactional {
                if crate::observe::warnings::first(&src.name, "non_transactional_table", t) {
                    tracing::warn!(event = "non_transactional_table", source = %src.name, table = %t, "dumped without snapshot consistency (logged once per agent start, counted in backup_warnings_total)");
                } else {
                    again += 1;
                }
            }
            if again > 0 {
                tracing::debug!(event = "non_transactional_table", source = %src.name, tables = again, "dumped without snapshot consistency, as already logged");
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

/// Removes, in every store, the debris of runs of this source that were killed (their ids
/// from the journal), logging each object removed.
fn remove_dead_runs(src: &SourceConfig, stores: &[OpenStore], dead: &[String]) {
    for os in stores {
        let Ok(store) = os.store.as_ref() else {
            continue;
        };
        for id in dead {
            match crate::copies::remove_dead_run(store.as_ref(), &src.prefix, id) {
                Ok(removed) => {
                    for k in removed {
                        tracing::warn!(event = "dead_run_debris_removed", source = %src.name, store = %os.cfg.name, backup = %id, object = %k, "left by a run of this source that was killed; removed");
                    }
                }
                Err(e) => {
                    tracing::error!(event = "dead_run_debris_left", source = %src.name, store = %os.cfg.name, backup = %id, error = %e, "left by a killed run; removing it failed (prune removes it after the grace period)")
                }
            }
        }
    }
}

/// The exclusive lock of one source on this host: `<state_dir>/locks/<source>.lock`,
/// held (flock) for the whole run and released when dropped or when the process dies;
/// the file names the holder for the refused run's message.
struct SourceLock {
    _file: std::fs::File,
}

impl SourceLock {
    fn take(state_dir: &std::path::Path, source: &str) -> Result<SourceLock, BackupError> {
        use std::io::{Read, Seek, Write};
        let dir = state_dir.join("locks");
        let stem = backup_core::config::split::file_stem(source);
        let path = dir.join(format!("{stem}.lock"));
        let lock_err = |err: std::io::Error| BackupError::Lock {
            source_name: source.to_string(),
            path: path.display().to_string(),
            err,
        };
        std::fs::create_dir_all(&dir).map_err(lock_err)?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                return Err(BackupError::Busy {
                    source_name: source.to_string(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let me = format!(
            "pid {} since {}",
            std::process::id(),
            Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        let _ = f
            .set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| f.write_all(me.as_bytes()));
        Ok(SourceLock { _file: f })
    }
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
    spare: Option<&Arc<Semaphore>>,
) -> SlotOutcome {
    // One run of a source at a time on this host (the daemon's slot and a `backup` by
    // hand): the second is refused at once, and touches nothing.
    let _lock = match SourceLock::take(&cfg.agent.state_dir, &src.name) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(event = "source_busy", source = %src.name, error = %e);
            return SlotOutcome::Ran(Box::new(Err(e)));
        }
    };
    let work = |lease: Option<LeaseTag>| async move {
        let r = backup_once(
            cfg,
            src,
            keys.clone(),
            state,
            alerter,
            now,
            lease.as_ref(),
            spare,
        )
        .await;
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
