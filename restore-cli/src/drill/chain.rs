//! `restore --verify --pitr`: the drill that proves the archived binary log. It restores
//! the second-newest backup into the scratch server, applies the archived transactions
//! up to the newest backup's snapshot GTID, and compares every table with the newest
//! backup's own per-table digests (rows, content, definition) and its objects. Equal
//! digests prove that the log between two backups replays to exactly the data the next
//! dump saw. Every check of a restore comes first, for both backups and every segment:
//! nothing unverified reaches the scratch server.

use anyhow::{anyhow, bail, Result};
use std::time::Instant;

use backup_core::binlog::GtidPos;
use backup_core::catalog;
use backup_core::config::Config;
use backup_core::manifest::Manifest;
use backup_core::store::open_store;

use super::{choose, verify_chosen, DrillArgs, DrillReport, Scratch};
use crate::crypto::{DpoKey, TrustedSigners};
use crate::pitr::{self, Until};

/// The two backups the drill joins: the one it restores and the one it must reach.
fn pair(
    cfg: &Config,
    source: &str,
    a: &DrillArgs,
    trusted: &TrustedSigners,
) -> Result<(Manifest, Manifest)> {
    let src = cfg
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| anyhow!("no source named {source:?} in {}", cfg.file.display()))?;
    let trust = trusted.trust();
    let mut all: std::collections::BTreeMap<String, Manifest> = Default::default();
    for st in cfg
        .stores
        .iter()
        .filter(|s| a.store.is_none_or(|n| s.name == n))
    {
        let Ok(store) = open_store(st) else { continue };
        if let Ok(l) = catalog::complete_backups(store.as_ref(), &src.prefix, &trust) {
            for m in l.backups {
                all.entry(m.backup_id.clone()).or_insert(m);
            }
        }
    }
    let with_gtid: Vec<Manifest> = all
        .into_values()
        .filter(|m| m.binlog.as_ref().and_then(|b| b.gtid.as_ref()).is_some())
        .collect();
    let newer_at = match a.backup.filter(|b| *b != "latest") {
        Some(id) => with_gtid
            .iter()
            .position(|m| m.backup_id == id)
            .ok_or_else(|| anyhow!("no complete, trusted backup {id} with a GTID position of source {source} in the stores"))?,
        None => with_gtid.len().checked_sub(1).ok_or_else(|| {
            anyhow!("the log drill needs two backups of source {source} with a GTID position; there is none")
        })?,
    };
    if newer_at == 0 {
        bail!(
            "the log drill needs a backup before {} to start from; source {source} has none with a GTID position",
            with_gtid[newer_at].backup_id
        );
    }
    Ok((with_gtid[newer_at - 1].clone(), with_gtid[newer_at].clone()))
}

fn gtid_of(m: &Manifest) -> GtidPos {
    m.binlog
        .as_ref()
        .and_then(|b| b.gtid.as_deref())
        .and_then(GtidPos::parse)
        .unwrap_or_default()
}

/// Runs the log drill; every outcome is in the report (Err for what stops it early).
pub async fn run(
    cfg: Option<&Config>,
    a: &DrillArgs<'_>,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    report: &mut DrillReport,
) -> Result<()> {
    let cfg = cfg.ok_or_else(|| {
        anyhow!("--verify --pitr needs --config (the stores that hold the backups and the archived binary log)")
    })?;
    let source = match a.source {
        Some(s) => s.to_string(),
        None if cfg.sources.len() == 1 => cfg.sources[0].name.clone(),
        None => bail!("several sources are configured; choose one with --source NAME"),
    };
    report.pitr = true;
    report.source = Some(source.clone());
    let (older, newer) = pair(cfg, &source, a, trusted)?;
    report.backup_id = Some(newer.backup_id.clone());
    report.base_backup_id = Some(older.backup_id.clone());
    report.backup_finished_at = Some(newer.finished_at.clone());
    report.backup_age_seconds =
        catalog::finished_at(&newer).map(|t| (chrono::Utc::now() - t).num_seconds());

    // The newer backup: verified whole, for its digests.
    let newer_args = DrillArgs {
        source: Some(&source),
        backup: Some(&newer.backup_id),
        store: a.store,
        scratch: None,
        scratch_password: None,
        jobs: a.jobs,
    };
    let chosen_newer = choose(Some(cfg), &newer_args, trusted)?;
    let mut sub = DrillReport::default();
    let verified_newer = verify_chosen(&chosen_newer, dpo, trusted, &mut sub);
    for c in sub.checks {
        report.check(
            &format!("backup {} (to reach): {}", newer.backup_id, c.name),
            c.ok,
            c.detail,
        );
    }
    let (v_newer, _, _) = verified_newer?;

    // The older backup: the one restored.
    let older_args = DrillArgs {
        source: Some(&source),
        backup: Some(&older.backup_id),
        store: a.store,
        scratch: None,
        scratch_password: None,
        jobs: a.jobs,
    };
    let chosen = choose(Some(cfg), &older_args, trusted)?;
    report.store = chosen.store.clone();
    report.file = Some(chosen.file.display().to_string());
    let (v, pins, limit) = verify_chosen(&chosen, dpo, trusted, report)?;

    // The log between them: to the newer snapshot, in the domains that moved.
    let from = gtid_of(&older);
    let to = gtid_of(&newer);
    let target = to.only(|d| from.seq(d) != to.seq(d));
    let mut wanted: Vec<String> = v.trailer.databases.clone();
    for d in &v_newer.trailer.databases {
        if !wanted.contains(d) {
            wanted.push(d.clone());
        }
    }
    let mut plan = if target.is_empty() {
        report.check(
            "binary log",
            true,
            format!("no transaction between the two backups (both at GTID {to})"),
        );
        None
    } else {
        let mut plan = match pitr::plan(
            cfg,
            &source,
            a.store,
            Some(&older.backup_id),
            &Until::Gtid(target.clone()),
            trusted,
        ) {
            Ok(p) => p,
            Err(e) => {
                report.check("binary log", false, format!("{e:#}"));
                return Err(e);
            }
        };
        match pitr::verify(&mut plan, &wanted, dpo, trusted) {
            Ok(s) => report.check(
                "binary log",
                true,
                format!(
                    "{} segment(s) from GTID {from} to {target}: checksums, decryption, MDC, trusted signatures, every event and continuity; {} transaction(s) to apply",
                    plan.segments.len(),
                    s.applied
                ),
            ),
            Err(e) => {
                report.check("binary log", false, format!("{e:#}"));
                return Err(e);
            }
        }
        report.segments = Some(plan.segments.len());
        Some(plan)
    };

    let mut scratch = Scratch::open(Some(cfg), a, report, &wanted).await?;
    let t0 = Instant::now();
    let n = scratch
        .replay(&chosen, &pins, limit, &v, dpo, trusted, report)
        .await?;
    report.check(
        "replay",
        true,
        format!("backup {}: {n} statements", older.backup_id),
    );
    if let Some(plan) = plan.as_mut() {
        let m = pitr::apply(plan, &wanted, dpo, trusted, &mut scratch.conn).await?;
        report.check(
            "apply",
            true,
            format!("binary log to GTID {target}: {m} statements"),
        );
    }
    report.restore_seconds = Some(t0.elapsed().as_secs_f64());
    let what = format!(
        "backup {} plus the archived log equals backup {}: ",
        older.backup_id, newer.backup_id
    );
    scratch.compare(&v_newer.trailer, report, &what).await?;
    scratch.close().await;
    Ok(())
}
