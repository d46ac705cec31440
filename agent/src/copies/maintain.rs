//! Upkeep of the stores of one source: repair (copy missing or broken copies from a
//! verified one), scrub (re-read and re-hash stored copies, a share at a time), prune
//! (retention, with its safety rules and an audit log) and the cached policy verdict.
//! Everything here blocks: run it on a blocking thread.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::copies;
use crate::copies::inventory::{self, BackupRow, Inventory, OpenStore};
use backup_core::config::{Config, SourceConfig};
use backup_core::policy::retention::{self, Candidate};
use backup_core::state::{CopyMark, PolicyMark, StateStore};

fn store_of<'a>(stores: &'a [OpenStore], name: &str) -> Option<&'a dyn backup_core::store::Store> {
    stores
        .iter()
        .find(|s| s.cfg.name == name)
        .and_then(|s| s.store.as_ref().ok())
        .map(|b| b.as_ref())
}

/// Records verification results in the ledger.
pub fn record_marks(state: &StateStore, prefix: &str, id: &str, marks: &[(String, CopyMark)]) {
    let _ = state.update(|s| {
        for (store, m) in marks {
            s.copies
                .entry(store.clone())
                .or_default()
                .insert(inventory::ledger_key(prefix, id), m.clone());
        }
    });
}

/// Builds the inventory and caches the newest backup's verdict in the state.
pub fn refresh(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &StateStore,
    now: DateTime<Utc>,
) -> Inventory {
    let st = state.load().unwrap_or_default();
    let inv = inventory::build(cfg, src, stores, &st, now);
    if let Some(b) = inv.newest() {
        let mut reasons = b.verdict.reasons.clone();
        for (s, e) in &inv.store_errors {
            reasons.push(format!("store {s} unreachable: {e}"));
        }
        let mark = PolicyMark {
            backup_id: b.id.clone(),
            compliant: b.verdict.compliant,
            reasons,
            verified_stores: b
                .copies
                .iter()
                .filter(|c| c.status == "verified")
                .map(|c| c.store.clone())
                .collect(),
            checked_at: now,
        };
        let newest = backup_core::state::NewestBackup {
            id: b.id.clone(),
            finished_at: b.finished_at,
            size: b.size,
            stores: b.copies.iter().map(|c| c.store.clone()).collect(),
        };
        let _ = state.update(|s| {
            let e = s.sources.entry(src.name.clone()).or_default();
            e.policy = Some(mark);
            if e.newest_backup.as_ref().is_none_or(|n| n.id <= newest.id) {
                e.newest_backup = Some(newest);
            }
        });
    }
    inv
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub copied: Vec<String>,
    pub failed: Vec<String>,
}

/// Copies each backup that has a verified copy to every store that lacks a good one and
/// whose retention would keep it. A copy that failed verification is replaced (removed,
/// manifest first, then copied again) unless it is under object lock.
pub fn repair(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &StateStore,
    now: DateTime<Utc>,
) -> RepairReport {
    repair_into(cfg, src, stores, state, now, |_| true)
}

/// Repair that writes only to the stores `target` accepts (reading from any). The standby
/// agent of a cluster uses it to copy a slot the other agent produced into its own local
/// stores, leaving the shared stores to the lease holder.
pub fn repair_into(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &StateStore,
    now: DateTime<Utc>,
    target: impl Fn(&backup_core::config::StoreConfig) -> bool,
) -> RepairReport {
    let mut rep = RepairReport::default();
    let st = state.load().unwrap_or_default();
    let inv = inventory::build(cfg, src, stores, &st, now);
    for os in stores {
        if !target(&os.cfg) {
            continue;
        }
        let Ok(to) = os.store.as_ref() else { continue };
        if inv.store_errors.contains_key(&os.cfg.name) {
            continue;
        }
        // Which backups this store's retention would keep if it had them all.
        let all: Vec<Candidate> = inv
            .backups
            .iter()
            .map(|b| Candidate {
                id: b.id.clone(),
                time: b.finished_at,
                compliant: b.verdict.compliant,
            })
            .collect();
        let plan = retention::plan(&all, now, &os.cfg.retention);
        for b in &inv.backups {
            if !plan.iter().any(|d| d.id == b.id && d.keep) {
                continue;
            }
            let here = b.copies.iter().find(|c| c.store == os.cfg.name);
            match here {
                Some(c) if c.status != "failed" => continue,
                Some(c) if c.lock_until.is_some_and(|t| t > now) => {
                    rep.failed.push(format!(
                        "{}: copy on {} failed verification but is locked until {}; it cannot be replaced, fix by hand",
                        b.id,
                        os.cfg.name,
                        c.lock_until.expect("some").to_rfc3339()
                    ));
                    continue;
                }
                _ => {}
            }
            let Some(from) = b
                .copies
                .iter()
                .filter(|c| c.status == "verified" && c.store != os.cfg.name)
                .find_map(|c| store_of(stores, &c.store))
            else {
                continue;
            };
            if here.is_some() {
                if let Err(e) = copies::remove_backup(to.as_ref(), &src.prefix, &b.id) {
                    rep.failed.push(format!(
                        "{}: removing the broken copy on {}: {e}",
                        b.id, os.cfg.name
                    ));
                    continue;
                }
            }
            match copies::copy_backup(from, to.as_ref(), &src.prefix, &b.signed) {
                Ok(()) => {
                    let mark = copies::verify_copy(
                        to.as_ref(),
                        os.cfg.verify,
                        &src.prefix,
                        &b.signed,
                        None,
                    );
                    let ok = mark.verified;
                    record_marks(state, &src.prefix, &b.id, &[(os.cfg.name.clone(), mark)]);
                    if ok {
                        tracing::info!(event = "repaired", source = %src.name, backup = %b.id, from = %from.name(), to = %os.cfg.name);
                        rep.copied.push(format!(
                            "{} -> {} (from {})",
                            b.id,
                            os.cfg.name,
                            from.name()
                        ));
                    } else {
                        rep.failed.push(format!(
                            "{}: the copy on {} did not verify",
                            b.id, os.cfg.name
                        ));
                    }
                }
                Err(e) => {
                    tracing::warn!(event = "repair_failed", source = %src.name, backup = %b.id, to = %os.cfg.name, error = %e);
                    rep.failed.push(format!("{} -> {}: {e}", b.id, os.cfg.name));
                }
            }
        }
    }
    rep
}

#[derive(Debug, Default, Serialize)]
pub struct ScrubReport {
    pub checked: usize,
    pub failed: Vec<String>,
}

/// Re-reads copies: every copy never checked by this agent, plus the copies whose last
/// check is oldest, `share` of all copies (0..=1; 1 = everything).
pub fn scrub(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &StateStore,
    now: DateTime<Utc>,
    share: f64,
) -> ScrubReport {
    let st = state.load().unwrap_or_default();
    let inv = inventory::build(cfg, src, stores, &st, now);
    let mut due: Vec<(Option<DateTime<Utc>>, &inventory::BackupRow, String)> = Vec::new();
    for b in &inv.backups {
        for c in &b.copies {
            due.push((c.checked_at, b, c.store.clone()));
        }
    }
    let total = due.len();
    due.sort_by_key(|(t, _, _)| *t); // never checked (None) first, then oldest
    let unchecked = due.iter().filter(|(t, _, _)| t.is_none()).count();
    let quota = ((total as f64 * share).ceil() as usize)
        .max(unchecked)
        .min(total);
    let mut rep = ScrubReport::default();
    for (_, b, store_name) in due.into_iter().take(quota) {
        let Some(store) = store_of(stores, &store_name) else {
            continue;
        };
        let os = stores
            .iter()
            .find(|s| s.cfg.name == store_name)
            .expect("configured");
        let prev = inventory::mark(&st, &store_name, &src.prefix, &b.id);
        let mark = copies::verify_copy(store, os.cfg.verify, &src.prefix, &b.signed, prev);
        rep.checked += 1;
        if !mark.verified {
            let e = mark.error.clone().unwrap_or_default();
            tracing::error!(event = "scrub_failed", source = %src.name, backup = %b.id, store = %store_name, error = %e);
            rep.failed.push(format!("{} on {store_name}: {e}", b.id));
        }
        record_marks(state, &src.prefix, &b.id, &[(store_name.clone(), mark)]);
    }
    rep
}

/// The share of copies one scrub run checks, so that all are checked within `period`
/// when runs come every `interval`.
pub fn scrub_share(interval: Duration, period: Duration) -> f64 {
    (interval.as_secs_f64() / period.as_secs_f64().max(1.0)).clamp(0.0, 1.0)
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneAction {
    pub store: String,
    pub backup: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// What retention does with one binary log segment on one store.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentAction {
    pub store: String,
    pub segment: String,
    pub keep: bool,
    pub reason: String,
}

/// Consecutive segments of one store with the same fate, for the report: "keep FIRST ..
/// LAST (N segments): needed from backup B".
#[derive(Debug, Serialize, PartialEq)]
pub struct SegmentRange {
    pub store: String,
    pub first: String,
    pub last: String,
    pub count: usize,
    pub keep: bool,
    pub reason: String,
}

/// Groups the segment actions (in chain order per store) into ranges.
pub fn segment_ranges(actions: &[SegmentAction]) -> Vec<SegmentRange> {
    let mut out: Vec<SegmentRange> = Vec::new();
    for a in actions {
        match out.last_mut() {
            Some(r) if r.store == a.store && r.keep == a.keep && r.reason == a.reason => {
                r.last = a.segment.clone();
                r.count += 1;
            }
            _ => out.push(SegmentRange {
                store: a.store.clone(),
                first: a.segment.clone(),
                last: a.segment.clone(),
                count: 1,
                keep: a.keep,
                reason: a.reason.clone(),
            }),
        }
    }
    out
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub plan: Vec<PruneAction>,
    /// Binary log segments (point-in-time recovery).
    pub segments: Vec<SegmentAction>,
    pub deleted: Vec<String>,
    pub skipped_stores: Vec<String>,
    pub reported: Vec<String>,
    pub errors: Vec<String>,
}

/// One line of the audit log.
#[derive(Serialize)]
struct AuditLine<'a> {
    time: String,
    source: &'a str,
    store: &'a str,
    object: &'a str,
    rule: &'a str,
}

pub fn audit_log_path(cfg: &Config) -> std::path::PathBuf {
    cfg.agent.state_dir.join("audit.jsonl")
}

fn audit(cfg: &Config, src: &str, store: &str, object: &str, rule: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(&cfg.agent.state_dir)?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(audit_log_path(cfg))?;
    let line = serde_json::to_string(&AuditLine {
        time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source: src,
        store,
        object,
        rule,
    })
    .expect("serializable");
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_all()
}

/// Applies retention to every store of a source. Safety rules: nothing is deleted on a
/// store without retention rules, on a store that failed in the last run or cannot be
/// listed now, under an object lock, or that is not ours; the newest compliant backup
/// (and the newest of all) is always kept; manifests go first, then the data. Our own
/// debris older than the grace period (temp files, pending uploads, data without
/// manifest) is removed; anything else unexpected is only reported.
pub fn prune(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &StateStore,
    now: DateTime<Utc>,
    dry_run: bool,
) -> PruneReport {
    let st = state.load().unwrap_or_default();
    let inv = inventory::build(cfg, src, stores, &st, now);
    let failed_last = st
        .sources
        .get(&src.name)
        .map(|s| s.failed_stores.clone())
        .unwrap_or_default();
    let mut rep = PruneReport::default();
    rep.reported.extend(inv.notes.iter().cloned());
    for (store, names) in &inv.foreign {
        for n in names {
            rep.reported.push(format!(
                "store {store}: {}/{n} is not ours; left alone",
                src.prefix
            ));
        }
    }
    let newest_compliant = inv.newest_compliant().map(|b| b.id.clone());
    for os in stores {
        let name = &os.cfg.name;
        let Ok(store) = os.store.as_ref() else {
            rep.skipped_stores.push(format!("{name}: cannot be opened"));
            continue;
        };
        if let Some(e) = inv.store_errors.get(name) {
            rep.skipped_stores
                .push(format!("{name}: cannot be listed ({e})"));
            continue;
        }
        if failed_last.contains(name) {
            rep.skipped_stores.push(format!(
                "{name}: failed in the last run; no deletion until a good run"
            ));
            continue;
        }
        // Debris of our own, past the grace period.
        if !dry_run {
            match store.clean_debris(&src.prefix, cfg.policy.debris_grace, &|n| {
                backup_core::layout::backup_id_of(n).is_some()
            }) {
                Ok(v) => {
                    for k in v {
                        let _ = audit(cfg, &src.name, name, &k, "debris");
                        rep.deleted.push(format!("{name}: {k} (debris)"));
                    }
                }
                Err(e) => rep.errors.push(format!("{name}: cleaning debris: {e}")),
            }
            for (n, modified) in inv.orphans.get(name).into_iter().flatten() {
                // Debris ages on the real clock, as the stores' own debris does: `now`
                // may be injected (tests run retention on other days).
                let old = modified.is_some_and(|m| {
                    (Utc::now() - m).to_std().unwrap_or_default() > cfg.policy.debris_grace
                });
                if !old {
                    continue;
                }
                let k = backup_core::layout::key(&src.prefix, n);
                let locked = store
                    .stat(&k)
                    .ok()
                    .flatten()
                    .and_then(|i| i.lock_until)
                    .is_some_and(|t| t > now);
                if locked {
                    continue;
                }
                match store.remove(&k) {
                    Ok(()) => {
                        let _ = audit(cfg, &src.name, name, &k, "debris: data without manifest");
                        rep.deleted
                            .push(format!("{name}: {k} (debris: no manifest)"));
                    }
                    Err(e) => rep.errors.push(e.to_string()),
                }
            }
        }
        if os.cfg.retention.is_empty() {
            continue;
        }
        let here: Vec<Candidate> = inv
            .backups
            .iter()
            .filter(|b| b.copies.iter().any(|c| c.store == *name))
            .map(|b| Candidate {
                id: b.id.clone(),
                time: b.finished_at,
                compliant: b.verdict.compliant,
            })
            .collect();
        for d in retention::plan(&here, now, &os.cfg.retention) {
            let mut keep = d.keep;
            let mut reasons = d.reasons.clone();
            if Some(&d.id) == newest_compliant.as_ref() && !keep {
                keep = true;
                reasons = vec!["newest compliant backup (always kept)".into()];
            }
            let lock = inv
                .backups
                .iter()
                .find(|b| b.id == d.id)
                .and_then(|b| b.copies.iter().find(|c| c.store == *name))
                .and_then(|c| c.lock_until);
            if !keep {
                if let Some(t) = lock.filter(|t| *t > now) {
                    keep = true;
                    reasons = vec![format!(
                        "dropped by retention, but locked until {}; deleted after that",
                        t.to_rfc3339()
                    )];
                }
            }
            if !keep && !dry_run {
                match copies::remove_backup(store.as_ref(), &src.prefix, &d.id) {
                    Ok(keys) => {
                        for k in keys {
                            let _ = audit(cfg, &src.name, name, &k, &reasons.join("; "));
                            rep.deleted.push(format!("{name}: {k}"));
                        }
                        let _ = state.update(|s| {
                            if let Some(m) = s.copies.get_mut(name) {
                                m.remove(&inventory::ledger_key(&src.prefix, &d.id));
                            }
                        });
                    }
                    Err(e) => rep.errors.push(format!("{name}: {}: {e}", d.id)),
                }
            }
            rep.plan.push(PruneAction {
                store: name.clone(),
                backup: d.id,
                time: d.time,
                keep,
                reasons,
            });
        }
        if let Some(bl) = &src.binlog {
            let kept: Vec<&BackupRow> = rep
                .plan
                .iter()
                .filter(|a| a.store == *name && a.keep)
                .filter_map(|a| inv.backups.iter().find(|b| b.id == a.backup))
                .collect();
            prune_segments(
                cfg,
                src,
                bl,
                store.as_ref(),
                name,
                &kept,
                now,
                dry_run,
                &mut rep,
            );
        }
    }
    rep
}

/// Segment retention on one store: a point-in-time restore to any instant of the window
/// (`pitr_window` back from now) starts from the newest kept backup at or before the
/// window's start (the anchor) and needs every segment after its snapshot. Segments that
/// end at or before the anchor's snapshot are dropped; every other one is kept, named with
/// the backup it serves. Without an anchor with a GTID position nothing is dropped; a
/// segment whose manifest is not trusted is only reported; a locked one waits.
#[allow(clippy::too_many_arguments)]
fn prune_segments(
    cfg: &Config,
    src: &SourceConfig,
    bl: &backup_core::config::BinlogConfig,
    store: &dyn backup_core::store::Store,
    name: &str,
    kept: &[&BackupRow],
    now: DateTime<Utc>,
    dry_run: bool,
    rep: &mut PruneReport,
) {
    use backup_core::binlog::GtidPos;
    let Ok(trust) = crate::seal::crypto::manifest_trust(cfg.encryption.as_ref()) else {
        return;
    };
    let list = match backup_core::catalog::complete_segments(store, &src.prefix, &trust) {
        Ok(l) => l,
        Err(e) => {
            rep.errors.push(format!("{name}: listing segments: {e}"));
            return;
        }
    };
    for (id, p) in &list.problems {
        rep.reported
            .push(format!("store {name}: segment {id}: {p}; left alone"));
    }
    let pos = |b: &BackupRow| {
        b.manifest
            .binlog
            .as_ref()
            .and_then(|x| x.gtid.as_deref())
            .and_then(GtidPos::parse)
    };
    let start = now - chrono::Duration::from_std(bl.pitr_window).unwrap_or_default();
    let with_pos: Vec<(&BackupRow, GtidPos)> = kept
        .iter()
        .filter_map(|b| pos(b).map(|p| (*b, p)))
        .collect();
    let anchor = with_pos
        .iter()
        .filter(|(b, _)| b.finished_at <= start)
        .max_by_key(|(b, _)| b.finished_at)
        .or_else(|| with_pos.iter().min_by_key(|(b, _)| b.finished_at));
    for m in &list.segments {
        // What the segment holds: its end, in the domains it moved (a domain it only
        // carries along, such as a Galera node's local one, says nothing of it).
        let prev = GtidPos::parse(&m.previous_gtid).unwrap_or_default();
        let end = GtidPos::parse(&m.end_position).unwrap_or_default();
        let held = end.only(|d| prev.seq(d) != end.seq(d));
        let (keep, reason) = match anchor {
            None => (
                true,
                "no kept backup with a GTID position to anchor the window".to_string(),
            ),
            Some((a, apos)) if held.le(apos) => (
                false,
                format!(
                    "before backup {}, the oldest a restore inside the {} window starts from",
                    a.id,
                    humantime::format_duration(bl.pitr_window)
                ),
            ),
            Some(_) => {
                let serves = with_pos
                    .iter()
                    // The newest backup the segment holds transactions after.
                    .filter(|(_, p)| !held.le(p))
                    .max_by_key(|(b, _)| b.finished_at)
                    .map(|(b, _)| b.id.clone())
                    .unwrap_or_else(|| "the next backup".into());
                (true, format!("needed from backup {serves}"))
            }
        };
        let mut keep = keep;
        let mut reason = reason;
        if !keep {
            let data = backup_core::layout::segment_key(
                &src.prefix,
                &m.segment_id,
                backup_core::layout::SEGMENT_DATA_SUFFIX,
            );
            if let Some(t) = store
                .stat(&data)
                .ok()
                .flatten()
                .and_then(|i| i.lock_until)
                .filter(|t| *t > now)
            {
                keep = true;
                reason = format!(
                    "{reason}; locked until {}, deleted after that",
                    t.to_rfc3339()
                );
            }
        }
        if !keep && !dry_run {
            for suffix in backup_core::layout::SEGMENT_SUFFIXES.iter().rev() {
                let k = backup_core::layout::segment_key(&src.prefix, &m.segment_id, suffix);
                match store
                    .exists(&k)
                    .and_then(|e| if e { store.remove(&k) } else { Ok(()) })
                {
                    Ok(()) => {
                        let _ = audit(cfg, &src.name, name, &k, &reason);
                        rep.deleted.push(format!("{name}: {k}"));
                    }
                    Err(e) => {
                        rep.errors.push(format!("{name}: {}: {e}", m.segment_id));
                        break;
                    }
                }
            }
        }
        rep.segments.push(SegmentAction {
            store: name.to_string(),
            segment: m.segment_id.clone(),
            keep,
            reason,
        });
    }
}
