//! What is in the stores: `list`, `prune`, `scrub` and `repair`.

use std::process::ExitCode;

use backup_agent::copies::inventory;
use backup_agent::copies::maintain;
use backup_agent::copies::segments;
use backup_core::config::Config;
use backup_core::state::StateStore;

use super::{readable_state, sources_or_exit, verdict_text, EXIT_DEGRADED, EXIT_FAILED};

pub fn list(cfg: &Config, only: Option<&str>, json: bool) -> ExitCode {
    let sources = match sources_or_exit(cfg, only) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let state = match readable_state(cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let stores = inventory::open_all(cfg);
    let now = chrono::Utc::now();
    let st = state.load().unwrap_or_default();
    // Each source's backups and archived binary log segments, each store read once.
    let (invs, segs): (Vec<_>, Vec<_>) = sources
        .iter()
        .map(|src| {
            let mut inv = maintain::refresh(cfg, src, &stores, &state, now);
            let (rows, problems) = segments::inventory(cfg, src, &stores, false, now);
            inv.binlog = segments::summary(src, &rows, problems, &st);
            (inv, rows)
        })
        .unzip();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&invs).expect("serializable")
        );
        return ExitCode::SUCCESS;
    }
    // The listing's one text format (restore --list prints the same table), then what
    // each source has beyond its backups.
    let mut table = Vec::new();
    for (inv, segs) in invs.iter().zip(&segs) {
        let all: Vec<&backup_core::manifest::SegmentManifest> =
            segs.iter().map(|r| &r.manifest).collect();
        for b in &inv.backups {
            table.push(backup_core::listing::Row {
                source: inv.source.clone(),
                backup: b.id.clone(),
                finished: b
                    .finished_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                size: b.size,
                copies: b
                    .copies
                    .iter()
                    .map(|c| {
                        let status = match c.lock_until {
                            Some(t) => format!("{} lock {}", c.status, t.format("%Y-%m-%d")),
                            None => c.status.clone(),
                        };
                        (c.store.clone(), status)
                    })
                    .collect(),
                verdict: Some(verdict_text(&b.verdict)),
                until: backup_core::listing::reach(&b.manifest, &all).map(|r| r.0),
            });
        }
    }
    print!("{}", backup_core::listing::render(&table));
    for inv in &invs {
        for (s, e) in &inv.store_errors {
            println!("source {}: store {s}: UNREACHABLE: {e}", inv.source);
        }
        if inv.backups.is_empty() {
            println!("source {}: no complete backup", inv.source);
        }
        if let Some(b) = &inv.binlog {
            println!(
                "source {}: binary log: {} segment(s), events {} .. {} (last GTID {})",
                inv.source,
                b["segments"],
                b["first_event_at"].as_str().unwrap_or("-"),
                b["last_event_at"].as_str().unwrap_or("-"),
                b["last_gtid"].as_str().unwrap_or("-")
            );
            if let Some(g) = b["gap"].as_object() {
                println!(
                    "source {}: binary log GAP after GTID {} (archiving resumed at {}, found {}): {}",
                    inv.source,
                    g["after_gtid"].as_str().unwrap_or("?"),
                    g["resumed_at_gtid"].as_str().unwrap_or("?"),
                    g["found_at"].as_str().unwrap_or("?"),
                    g["reason"].as_str().unwrap_or("")
                );
            }
            for f in b["failed_copies"].as_array().into_iter().flatten() {
                println!(
                    "source {}: binary log copy FAILED: {}",
                    inv.source,
                    f.as_str().unwrap_or("")
                );
            }
            let below = b["below_policy"].as_array().map_or(0, Vec::len);
            if below > 0 {
                println!(
                    "source {}: binary log: {below} segment(s) below the 3-2-1 policy (run repair)",
                    inv.source
                );
            }
        }
        for n in &inv.notes {
            println!("source {}: note: {n}", inv.source);
        }
        for (s, names) in &inv.foreign {
            println!(
                "source {}: store {s}: {} object(s) not ours under the prefix (left alone)",
                inv.source,
                names.len()
            );
        }
    }
    ExitCode::SUCCESS
}

pub fn prune(
    cfg: &Config,
    only: Option<&str>,
    dry_run: bool,
    json: bool,
    now: Option<chrono::DateTime<chrono::Utc>>,
) -> ExitCode {
    let sources = match sources_or_exit(cfg, only) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let state = match readable_state(cfg) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let stores = inventory::open_all(cfg);
    let now = now.unwrap_or_else(chrono::Utc::now);
    let mut failed = false;
    let mut all = Vec::new();
    for src in sources {
        let r = maintain::prune(cfg, src, &stores, &state, now, dry_run);
        failed |= !r.errors.is_empty();
        if !json {
            println!(
                "source {}{}",
                src.name,
                if dry_run {
                    " (dry run: nothing deleted)"
                } else {
                    ""
                }
            );
            for a in &r.plan {
                println!(
                    "  {} {:<26} on {:<14} {}",
                    if a.keep { "keep" } else { "drop" },
                    a.backup,
                    a.store,
                    a.reasons.join("; ")
                );
            }
            for g in backup_agent::copies::maintain::segment_ranges(&r.segments) {
                let what = if g.count == 1 {
                    g.first
                } else {
                    format!("{} .. {} ({} segments)", g.first, g.last, g.count)
                };
                println!(
                    "  {} {what} on {}: {}",
                    if g.keep { "keep" } else { "drop" },
                    g.store,
                    g.reason
                );
            }
            for s in &r.skipped_stores {
                println!("  skipped store {s}");
            }
            for d in &r.deleted {
                println!("  deleted {d}");
            }
            for n in &r.reported {
                println!("  note: {n}");
            }
            for e in &r.errors {
                println!("  ERROR: {e}");
            }
        }
        all.push(serde_json::json!({"source": src.name, "report": r}));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("serializable")
        );
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn scrub(cfg: &Config, only: Option<&str>, all: bool, json: bool) -> ExitCode {
    let sources = match sources_or_exit(cfg, only) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let stores = inventory::open_all(cfg);
    let state = StateStore::new(&cfg.agent.state_dir);
    let share = if all {
        1.0
    } else {
        maintain::scrub_share(
            std::time::Duration::from_secs(86400),
            cfg.policy.scrub_period,
        )
    };
    let mut bad = false;
    let mut reports = Vec::new();
    for src in sources {
        let r = maintain::scrub(cfg, src, &stores, &state, chrono::Utc::now(), share);
        if !json {
            println!(
                "source {}: {} cop{} checked, {} failed",
                src.name,
                r.checked,
                if r.checked == 1 { "y" } else { "ies" },
                r.failed.len()
            );
            for f in &r.failed {
                println!("  FAILED: {f}");
            }
        }
        bad |= !r.failed.is_empty();
        let inv = maintain::refresh(cfg, src, &stores, &state, chrono::Utc::now());
        let newest = inv.newest().map(|b| {
            if !json {
                println!("  newest backup {}: {}", b.id, verdict_text(&b.verdict));
            }
            bad |= !b.verdict.compliant;
            serde_json::json!({"backup": b.id, "compliant": b.verdict.compliant, "reasons": b.verdict.reasons})
        });
        let segs = scrub_segments(cfg, src, &stores, json);
        bad |= !segs.0;
        reports.push(serde_json::json!({
            "source": src.name,
            "checked": r.checked,
            "failed": r.failed,
            "newest": newest,
            "binlog": segs.1,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serializable")
        );
    }
    if bad {
        ExitCode::from(EXIT_DEGRADED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Hashes every copy of every archived binary log segment of `src`; prints the failed
/// copies and the segments that do not meet the 3-2-1 policy (or, with `json`, returns
/// them). True when all is well.
pub fn scrub_segments(
    cfg: &Config,
    src: &backup_core::config::SourceConfig,
    stores: &[inventory::OpenStore],
    json: bool,
) -> (bool, Option<serde_json::Value>) {
    let (rows, problems) = segments::inventory(cfg, src, stores, true, chrono::Utc::now());
    if rows.is_empty() && problems.is_empty() {
        return (true, None);
    }
    let copies: usize = rows.iter().map(|r| r.copies.len()).sum();
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.copies.iter().filter(|c| !c.ok).map(move |c| {
                format!(
                    "segment {} on {}: {}",
                    r.id,
                    c.store,
                    c.error.clone().unwrap_or_default()
                )
            })
        })
        .chain(problems.iter().cloned())
        .collect();
    let degraded: Vec<&segments::SegRow> = rows.iter().filter(|r| !r.verdict.compliant).collect();
    let ok = failed.is_empty() && degraded.is_empty();
    if json {
        return (
            ok,
            Some(serde_json::json!({
                "segments": rows.len(),
                "copies_checked": copies,
                "failed": failed,
                "not_compliant": degraded.iter().map(|r| serde_json::json!({"segment": r.id, "reasons": r.verdict.reasons})).collect::<Vec<_>>(),
            })),
        );
    }
    println!(
        "  binary log: {} segment(s), {copies} cop{} checked, {} failed, {} not meeting the policy",
        rows.len(),
        if copies == 1 { "y" } else { "ies" },
        failed.len(),
        degraded.len()
    );
    for f in &failed {
        println!("  FAILED: {f}");
    }
    for r in &degraded {
        println!("  segment {}: {}", r.id, verdict_text(&r.verdict));
    }
    (ok, None)
}

pub fn repair(cfg: &Config, only: Option<&str>) -> ExitCode {
    let sources = match sources_or_exit(cfg, only) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let stores = inventory::open_all(cfg);
    let state = StateStore::new(&cfg.agent.state_dir);
    let mut bad = false;
    for src in sources {
        let r = maintain::repair(cfg, src, &stores, &state, chrono::Utc::now());
        for c in &r.copied {
            println!("copied {c}");
        }
        for f in &r.failed {
            println!("FAILED: {f}");
        }
        bad |= !r.failed.is_empty();
        let (rows, _) = segments::inventory(cfg, src, &stores, true, chrono::Utc::now());
        let (copied, failed) = segments::repair(src, &stores, &rows);
        for c in &copied {
            println!("copied {c}");
        }
        for f in &failed {
            println!("FAILED: {f}");
        }
        bad |= !failed.is_empty();
        if !rows.is_empty() {
            bad |= !scrub_segments(cfg, src, &stores, false).0;
        }
        let inv = maintain::refresh(cfg, src, &stores, &state, chrono::Utc::now());
        if let Some(b) = inv.newest() {
            bad |= !b.verdict.compliant;
            println!(
                "source {}: newest backup {}: {}",
                src.name,
                b.id,
                verdict_text(&b.verdict)
            );
        }
    }
    if bad {
        ExitCode::from(EXIT_DEGRADED)
    } else {
        ExitCode::SUCCESS
    }
}
