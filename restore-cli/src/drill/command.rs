//! `--verify`: the drill (or the log drill with `--pitr`) run, recorded, alerted and
//! reported.

use anyhow::{anyhow, Result};

use backup_core::config::Config;
use backup_core::secret::read_secret_file;

use crate::drill;
use crate::{load_keys, Cli};

pub(crate) async fn verify(cli: &Cli, cfg: Option<&Config>) -> Result<()> {
    let started = chrono::Utc::now();
    let mut report = drill::DrillReport {
        started_at: started.to_rfc3339(),
        ..Default::default()
    };
    let keys = load_keys(cli, cfg)?;
    let scratch_password = match &cli.scratch_password_file {
        Some(f) => Some(read_secret_file(f, "--scratch-password-file")?),
        None => None,
    };
    let backup = cli.backup.as_ref().map(|b| b.display().to_string());
    let args = drill::DrillArgs {
        source: cli.source.as_deref(),
        backup: backup.as_deref(),
        store: cli.store.as_deref(),
        scratch: cli.scratch.as_deref(),
        scratch_password,
        jobs: cli.jobs,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = async {
            if cli.pitr {
                drill::run_pitr(cfg, &args, &keys.dpo, &keys.trusted, &mut report).await
            } else {
                drill::run(cfg, &args, &keys.dpo, &keys.trusted, &mut report).await
            }
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; the scratch server was removed")),
        _ = term.recv() => Err(anyhow!("terminated; the scratch server was removed")),
    };
    if let Err(e) = &outcome {
        report.error = Some(format!("{e:#}"));
    }
    report.success =
        outcome.is_ok() && report.mismatches.is_empty() && report.checks.iter().all(|c| c.ok);
    report.finished_at = Some(chrono::Utc::now().to_rfc3339());
    let notes = drill::record(cfg, &report);
    if let Some(cfg) = cfg {
        let alerter = backup_core::alert::Alerter::new(
            cfg.alerts.clone(),
            backup_core::state::StateStore::new(&cfg.agent.state_dir),
        );
        let src = report.source.clone().unwrap_or_else(|| "-".into());
        let (event, msg) = if report.success {
            (
                "drill_succeeded",
                format!(
                    "{} passed: {} tables identical",
                    drill_name(&report),
                    report.tables_compared
                ),
            )
        } else {
            (
                "drill_failed",
                format!(
                    "{} FAILED: {}",
                    drill_name(&report),
                    report
                        .error
                        .clone()
                        .unwrap_or_else(|| report.mismatches.join("; "))
                ),
            )
        };
        let mut a = backup_core::alert::Alert::new(event, &src, report.success, msg);
        a.backup = report.backup_id.clone();
        a.details = serde_json::json!({"pitr": report.pitr, "base_backup_id": report.base_backup_id, "tables_compared": report.tables_compared, "restore_seconds": report.restore_seconds, "mismatches": report.mismatches});
        alerter.send(&a).await;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} (source {}, store {})",
            drill_name(&report),
            report.source.as_deref().unwrap_or("?"),
            report.store.as_deref().unwrap_or("-")
        );
        if let Some(age) = report.backup_age_seconds {
            println!(
                "  backup finished {} ({}h old), {} bytes",
                report.backup_finished_at.as_deref().unwrap_or("?"),
                age / 3600,
                report.data_bytes.unwrap_or(0)
            );
        }
        println!("  scratch: {}", report.scratch);
        for c in &report.checks {
            println!(
                "  [{}] {}: {}",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            );
        }
        if let Some(t) = report.restore_seconds {
            println!("  time to restore (RTO for this size): {t:.1}s");
        }
        for n in &notes {
            println!("  {n}");
        }
        println!(
            "{}",
            if report.success {
                "DRILL PASSED"
            } else {
                "DRILL FAILED"
            }
        );
    }
    if report.success {
        Ok(())
    } else {
        Err(anyhow!(
            "the drill failed: {}",
            report
                .error
                .clone()
                .unwrap_or_else(|| report.mismatches.join("; "))
        ))
    }
}

/// "restore drill of ID", or for the log drill "log drill (PITR): OLD + archived log = NEW".
pub(crate) fn drill_name(r: &drill::DrillReport) -> String {
    let id = r.backup_id.as_deref().unwrap_or("?");
    match (&r.base_backup_id, r.pitr) {
        (Some(base), true) => {
            format!("log drill (PITR): backup {base} + archived binary log = backup {id}")
        }
        (None, true) => format!("log drill (PITR) to backup {id}"),
        _ => format!("restore drill of {id}"),
    }
}
