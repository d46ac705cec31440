//! `backup` (every source or one, at once up to the daemon's limit) and `archive-binlog`.

use std::process::ExitCode;
use std::sync::Arc;

use backup_agent::backup::{self, slot};
use backup_agent::seal::crypto;
use backup_core::alert::Alerter;
use backup_core::config::Config;
use backup_core::state::StateStore;

use super::{EXIT_DEGRADED, EXIT_FAILED, EXIT_INVALID};

pub async fn run_backups(
    cfg: &Config,
    only: Option<&str>,
    now: Option<chrono::DateTime<chrono::Utc>>,
    slot: Option<chrono::DateTime<chrono::Utc>>,
    json: bool,
) -> ExitCode {
    let enc = match cfg.require_backup_parts() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("backup-agent: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let sources = match cfg.source(only) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backup-agent: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let state = StateStore::new(&cfg.agent.state_dir);
    let alerter = Alerter::new(cfg.alerts.clone(), state.clone());
    let keys = match crypto::SealingKeys::load(enc).and_then(|k| k.with_tenants(&cfg.sources)) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::error!(event = "backup_failed", error = %e, "cannot load keys");
            eprintln!("backup-agent: backup failed: {e}");
            for src in &sources {
                let a = backup_core::alert::Alert::new(
                    "backup_failed",
                    &src.name,
                    false,
                    format!("backup of source {} failed: {e}", src.name),
                );
                alerter.send(&a).await;
            }
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // Split sources are listed on their servers now: one backup per database.
    let expansion = backup::units::expand(
        &sources,
        &state,
        &alerter,
        now.unwrap_or_else(chrono::Utc::now),
    )
    .await;
    let mut listing_failures = Vec::new();
    for (src, e) in &expansion.failed {
        eprintln!("backup-agent: backup failed: {e}");
        listing_failures.push((
            true,
            false,
            serde_json::json!({"source": src.name, "status": "failed", "error": e}),
        ));
    }
    // Sources run at once up to the daemon's limit (max_concurrent_backups), and at most
    // max_connections_per_server connections to one server; each report printed as it
    // finishes; the exit code is the worst of them.
    use futures_util::StreamExt;
    let budget = backup::units::Budget::new(cfg);
    let one = |src: &backup_core::config::SourceConfig| {
        let (keys, state, alerter, budget) = (keys.clone(), &state, &alerter, &budget);
        let src = src.clone();
        async move {
            let src = &src;
            let connections = budget.take(src).await;
            let mut failed = false;
            let mut degraded = false;
            let report;
            let slot_label = match slot {
                Some(t) => slot::slot_name(t),
                None => format!(
                    "manual {}",
                    slot::slot_name(now.unwrap_or_else(chrono::Utc::now))
                ),
            };
            let outcome = slot::run_slot(
                cfg,
                src,
                keys.clone(),
                state,
                alerter,
                &slot_label,
                now,
                false,
                std::future::pending::<()>(),
                Some(connections.semaphore()),
            )
            .await;
            let result = match outcome {
                slot::SlotOutcome::Ran(r) => *r,
                slot::SlotOutcome::Elsewhere {
                    holder,
                    backup_id,
                    here,
                } => {
                    if !json {
                        println!(
                            "slot {slot_label} of source {}: produced by agent {holder} (backup {}); nothing to do",
                            src.name,
                            backup_id.as_deref().unwrap_or("unknown")
                        );
                    }
                    match &here {
                        Some(v) if !json => println!(
                            "that backup in this agent's stores: {} verified copies, policy {}",
                            v.verified_copies,
                            if v.compliant { "compliant" } else { "not met" }
                        ),
                        Some(_) => {}
                        None => eprintln!(
                            "backup-agent: that backup is in none of this agent's stores; give both agents the shared offsite stores (docs/operations.md, Two sites)"
                        ),
                    }
                    let report = serde_json::json!({
                        "source": src.name,
                        "status": "elsewhere",
                        "slot": slot_label,
                        "holder": holder,
                        "backup": backup_id,
                        "verified_copies_here": here.as_ref().map(|v| v.verified_copies),
                        "policy_compliant": here.as_ref().map(|v| v.compliant),
                    });
                    return (false, false, report);
                }
            };
            match result {
                Ok(r) => {
                    let b = &r.backup;
                    report = serde_json::json!({
                        "source": src.name,
                        "status": if r.verdict.compliant { "ok" } else { "degraded" },
                        "backup": b.manifest.backup_id,
                        "bytes": b.manifest.data.size,
                        "sha256": b.manifest.data.sha256,
                        "tables": b.manifest.tables,
                        "rows": b.rows,
                        "duration_seconds": b.duration_secs,
                        "stores": b.stores,
                        "failed_stores": b.failed_stores.iter().map(|(s, e)| serde_json::json!({"store": s, "error": e.to_string()})).collect::<Vec<_>>(),
                        "repaired": r.repair.copied,
                        "repair_failed": r.repair.failed,
                        "policy": {"compliant": r.verdict.compliant, "reasons": r.verdict.reasons},
                    });
                    if !json {
                        println!(
                        "backup {} of source {}: {} ({} bytes), sha256 {}, {} tables, {} rows, {:.1}s, verified copies on: {}",
                        b.manifest.backup_id,
                        src.name,
                        backup_core::format::human_size(b.manifest.data.size),
                        b.manifest.data.size,
                        b.manifest.data.sha256,
                        b.manifest.tables,
                        b.rows,
                        b.duration_secs,
                        b.stores.join(", "),
                    );
                    }
                    for (s, e) in &b.failed_stores {
                        eprintln!("backup-agent: store {s} failed: {e}");
                    }
                    for c in r.repair.copied.iter().filter(|_| !json) {
                        println!("repaired {c}");
                    }
                    for f in &r.repair.failed {
                        eprintln!("backup-agent: repair failed: {f}");
                    }
                    if r.verdict.compliant {
                        if !json {
                            println!("policy: compliant");
                        }
                    } else {
                        degraded = true;
                        eprintln!(
                            "backup-agent: policy degraded: {}",
                            r.verdict.reasons.join("; ")
                        );
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("backup-agent: backup failed: {e}");
                    report = serde_json::json!({
                        "source": src.name,
                        "status": "failed",
                        "error": e.to_string(),
                    });
                }
            }
            (failed, degraded, report)
        }
    };
    let mut results: Vec<(bool, bool, serde_json::Value)> =
        futures_util::stream::iter(expansion.units.iter())
            .map(one)
            .buffer_unordered(cfg.agent.max_concurrent_backups.max(1))
            .collect()
            .await;
    results.append(&mut listing_failures);
    if json {
        let reports: Vec<&serde_json::Value> = results.iter().map(|r| &r.2).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serializable")
        );
    }
    let failed = results.iter().any(|r| r.0);
    let degraded = results.iter().any(|r| r.1);
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else if degraded {
        ExitCode::from(EXIT_DEGRADED)
    } else {
        ExitCode::SUCCESS
    }
}

pub async fn archive_binlog(cfg: &Config, only: Option<&str>, segment_size: &str) -> ExitCode {
    let fail = |e: String| {
        eprintln!("backup-agent: {e}");
        ExitCode::from(EXIT_INVALID)
    };
    let Some(max) = backup_core::config::parse_size(segment_size).filter(|n| *n >= 4096) else {
        return fail(format!(
            "--segment-size {segment_size:?} is not a size of at least 4KiB; write e.g. \"64MiB\""
        ));
    };
    let enc = match cfg.require_backup_parts() {
        Ok(e) => e,
        Err(e) => return fail(e.to_string()),
    };
    let sources = match cfg.source(only) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let keys = match crypto::SealingKeys::load(enc) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let state = StateStore::new(&cfg.agent.state_dir);
    let mut code = ExitCode::SUCCESS;
    for src in sources {
        match backup_agent::archive::archive_until_now(cfg, src, &keys, &state, max as usize).await
        {
            Ok(done) => println!(
                "source {}: {} segment(s) archived{}",
                src.name,
                done.len(),
                done.last()
                    .map(|a| format!(", up to GTID {}", a.manifest.last_gtid))
                    .unwrap_or_default()
            ),
            Err(e) => {
                tracing::error!(event = "archive_failed", source = %src.name, error = %e);
                eprintln!("backup-agent: binlog archiving failed: {e}");
                code = ExitCode::from(EXIT_FAILED);
            }
        }
    }
    code
}
