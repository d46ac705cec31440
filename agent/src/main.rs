//! `backup-agent`: the command line on top of the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use backup_agent::backup::{self, slot};
use backup_agent::check;
use backup_agent::copies::inventory;
use backup_agent::copies::maintain;
use backup_agent::copies::segments;
use backup_agent::daemon;
use backup_agent::observe::health;
use backup_agent::seal::crypto;
use backup_core::alert::Alerter;
use backup_core::config::{Config, DEFAULT_CONFIG_PATH};
use backup_core::logging;
use backup_core::state::StateStore;

#[derive(Parser)]
#[command(
    name = "backup-agent",
    version,
    about = "Consistent, sealed, verified MariaDB/Galera backups"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BACKUP_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: schedules, HTTP /healthz and /metrics, alerts.
    Run {
        /// At SIGTERM/SIGINT, how long a running backup may take to finish before it is
        /// cancelled (nothing partial is kept either way).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        shutdown_timeout: std::time::Duration,
    },
    /// Take one backup now, of every source (or one), into every store; then repair
    /// missing copies. Exit 0 complete and policy met, 1 failed, 3 stored but degraded.
    Backup {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Run as if the clock showed this time (RFC 3339); for simulations and tests.
        #[arg(long, hide = true)]
        now: Option<String>,
        /// Schedule slot to claim in the cluster lease (RFC 3339, e.g. 2026-11-21T02:00:00Z),
        /// as the daemon does; another agent of the cluster may already have produced it.
        /// Default: a manual slot of its own.
        #[arg(long)]
        slot: Option<String>,
        /// Print one JSON array on stdout (an object per source: status, backup, bytes,
        /// stores, policy, error) instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Point-in-time recovery (in progress): archive the binary log of every source (or
    /// one) from where the last pass ended to its current end, as sealed segments in every
    /// store. Exit 0 done, 1 failed (the position stays at the last stored segment).
    ArchiveBinlog {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Largest segment: a binary log file of at most this size before compression.
        #[arg(long, default_value = "64MiB")]
        segment_size: String,
    },
    /// Every backup across stores: copies, verification, lock, 3-2-1 verdict.
    List {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Apply each store's retention rules; print the plan and what was deleted and why.
    Prune {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Print the plan, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[arg(long, hide = true)]
        now: Option<String>,
    },
    /// Re-read and re-hash stored copies now (all of them with --all; else the share due).
    Scrub {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Every copy now, not only the share due.
        #[arg(long)]
        all: bool,
        /// Print one JSON array (an object per source: copies checked, failures, the
        /// newest backup's policy verdict, the binary log segments) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy backups to stores that lack a verified copy, from a verified one.
    Repair {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Freshness verdict, one short line: exit 0 OK, 1 CRITICAL, 2 no complete backup.
    Healthcheck {
        /// After the line, every clause (each problem, each source) on a line of its own.
        #[arg(long)]
        verbose: bool,
        /// The verdict as one JSON object (status, code, line, every clause, each source).
        #[arg(long, conflicts_with = "verbose")]
        json: bool,
    },
    /// Validate the configuration: keys, secrets readable, certificates usable.
    CheckConfig {
        /// Print one JSON object (valid, notes, problems with key, file, line and column).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, e.g. `backup-agent man > backup-agent.1`.
    Man,
}

/// Exit codes from the contract.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_DEGRADED: u8 = 3;

fn parse_now(now: &Option<String>) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    now.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&chrono::Utc))
                .map_err(|e| format!("{t:?}: {e}; write e.g. 2026-11-21T02:00:00Z"))
        })
        .transpose()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the CLI definitions; no configuration needed.
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "backup-agent",
                &mut script,
            );
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backup-agent: cannot write the completion script: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            };
        }
        Command::Man => {
            return match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backup-agent: cannot write the manual page: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            };
        }
        _ => {}
    }
    logging::init();
    let cfg = match backup_agent::config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            if matches!(cli.command, Command::Healthcheck { .. }) {
                // The healthcheck always prints one line.
                println!(
                    "CRITICAL: invalid configuration: {}",
                    e.to_string().replace('\n', " ")
                );
                return ExitCode::from(health::CRITICAL);
            }
            if matches!(cli.command, Command::CheckConfig { json: true }) {
                let problems: Vec<serde_json::Value> =
                    e.problems.iter().map(problem_json).collect();
                println!(
                    "{}",
                    serde_json::json!({"valid": false, "file": cli.config, "notes": [], "problems": problems})
                );
            } else {
                eprintln!("backup-agent: {e}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // `--source <split source>/<database>` names a unit, whether the state knows it yet
    // or not; commands that read the stores see every unit the state knows.
    let mut cfg = cfg;
    if let Some(name) = cli.command.source() {
        if let Err(e) = cfg.add_unit(name) {
            eprintln!("backup-agent: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    }
    if matches!(
        cli.command,
        Command::List { .. }
            | Command::Prune { .. }
            | Command::Scrub { .. }
            | Command::Repair { .. }
    ) {
        let known = StateStore::new(&cfg.agent.state_dir)
            .load()
            .map(|s| s.split)
            .unwrap_or_default();
        cfg = cfg.expanded(&known);
    }
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    match cli.command {
        Command::CheckConfig { json } => check_config(&cfg, json),
        Command::Completions { .. } | Command::Man => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Healthcheck { verbose, json } => {
            let (v, facts, _) = health::check(&cfg);
            if json {
                println!("{}", health::to_json(&v, &facts));
            } else {
                println!("{}", v.line);
                if verbose {
                    for d in &v.details {
                        println!("  {d}");
                    }
                }
            }
            ExitCode::from(v.code)
        }
        Command::Backup {
            source,
            now,
            slot,
            json,
        } => match (parse_now(&now), parse_now(&slot)) {
            (Ok(now), Ok(slot)) => {
                rt().block_on(run_backups(&cfg, source.as_deref(), now, slot, json))
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("backup-agent: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::List { source, json } => list(&cfg, source.as_deref(), json),
        Command::ArchiveBinlog {
            source,
            segment_size,
        } => rt().block_on(archive_binlog(&cfg, source.as_deref(), &segment_size)),
        Command::Prune {
            source,
            dry_run,
            json,
            now,
        } => match parse_now(&now) {
            Ok(now) => prune(&cfg, source.as_deref(), dry_run, json, now),
            Err(e) => {
                eprintln!("backup-agent: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Scrub { source, all, json } => scrub(&cfg, source.as_deref(), all, json),
        Command::Repair { source } => repair(&cfg, source.as_deref()),
        Command::Run { shutdown_timeout } => {
            match rt().block_on(daemon::run(cfg, shutdown_timeout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(event = "daemon_failed", error = %format!("{e:#}"));
                    eprintln!("backup-agent: {e:#}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
    }
}

/// A configuration problem as JSON: the key, where in which file, and what is wrong.
fn problem_json(p: &backup_core::config::ConfigProblem) -> serde_json::Value {
    serde_json::json!({
        "key": p.key,
        "file": p.file,
        "line": p.position.map(|x| x.0),
        "column": p.position.map(|x| x.1),
        "message": p.message,
    })
}

fn check_config(cfg: &Config, json: bool) -> ExitCode {
    let mut r = check::check(cfg);
    let logins = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(check::check_sources(cfg));
    r.problems.extend(logins);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "valid": r.problems.is_empty(),
                "file": cfg.file,
                "notes": r.notes,
                "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
            }))
            .expect("serializable")
        );
        return if r.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_INVALID)
        };
    }
    for n in &r.notes {
        println!("ok: {n}");
    }
    if r.problems.is_empty() {
        println!("configuration {} is valid", cfg.file.display());
        ExitCode::SUCCESS
    } else {
        for p in &r.problems {
            println!("problem: {p}");
        }
        println!(
            "configuration {} has {} problem(s)",
            cfg.file.display(),
            r.problems.len()
        );
        ExitCode::from(EXIT_INVALID)
    }
}

fn sources_or_exit<'a>(
    cfg: &'a Config,
    only: Option<&str>,
) -> Result<Vec<&'a backup_core::config::SourceConfig>, ExitCode> {
    if cfg.stores.is_empty() {
        eprintln!(
            "backup-agent: no [[store]] configured in {}",
            cfg.file.display()
        );
        return Err(ExitCode::from(EXIT_INVALID));
    }
    cfg.source(only).map_err(|e| {
        eprintln!("backup-agent: {e}");
        ExitCode::from(EXIT_INVALID)
    })
}

/// The state store, if its file can be read: `list` and `prune` decide nothing from a
/// state they cannot read (prune's safety rules depend on it).
fn readable_state(cfg: &Config) -> Result<StateStore, ExitCode> {
    let state = StateStore::new(&cfg.agent.state_dir);
    match state.load() {
        Ok(_) => Ok(state),
        Err(e) => {
            eprintln!("backup-agent: {e}");
            Err(ExitCode::from(EXIT_FAILED))
        }
    }
}

fn verdict_text(v: &backup_core::policy::Verdict) -> String {
    if v.compliant {
        "compliant".to_string()
    } else {
        format!("NOT compliant: {}", v.reasons.join("; "))
    }
}

fn list(cfg: &Config, only: Option<&str>, json: bool) -> ExitCode {
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
    let invs: Vec<_> = sources
        .iter()
        .map(|src| {
            let mut inv = maintain::refresh(cfg, src, &stores, &state, now);
            inv.binlog = segments::summary(cfg, src, &stores, &st, now);
            inv
        })
        .collect();
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
    for (src, inv) in sources.iter().zip(&invs) {
        let segs = match src.binlog {
            Some(_) => segments::inventory(cfg, src, &stores, false, now).0,
            None => Vec::new(),
        };
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

fn prune(
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

fn scrub(cfg: &Config, only: Option<&str>, all: bool, json: bool) -> ExitCode {
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
fn scrub_segments(
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

fn repair(cfg: &Config, only: Option<&str>) -> ExitCode {
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

async fn run_backups(
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
            let _connections = budget.take(src).await;
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

async fn archive_binlog(cfg: &Config, only: Option<&str>, segment_size: &str) -> ExitCode {
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

impl Command {
    /// The `--source` a command was given.
    fn source(&self) -> Option<&str> {
        match self {
            Command::Backup { source, .. }
            | Command::List { source, .. }
            | Command::Prune { source, .. }
            | Command::Scrub { source, .. }
            | Command::Repair { source }
            | Command::ArchiveBinlog { source, .. } => source.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every command says what it does in `--help`.
    #[test]
    fn every_flag_has_a_help_text() {
        fn check(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !a.is_hide_set() && !builtin && a.get_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_id()));
                }
            }
            for s in c.get_subcommands() {
                if s.get_about().is_none() && s.get_name() != "help" {
                    missing.push(format!("{path} {}", s.get_name()));
                }
                check(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&super::Cli::command(), "backup-agent", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
