//! `backup-agent`: the command line on top of the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use backup_agent::daemon;
use backup_agent::observe::health;
use backup_core::config::DEFAULT_CONFIG_PATH;
use backup_core::logging;
use backup_core::state::StateStore;

mod commands;

use commands::{parse_now, EXIT_FAILED, EXIT_INVALID};

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
    /// Point-in-time recovery: archive the binary log of every source (or one) once, from
    /// where the last pass ended to its current end, as sealed segments in every store (the
    /// daemon streams it continuously). Exit 0 done, 1 failed (the position stays at the
    /// last stored segment).
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
                let problems: Vec<serde_json::Value> = e
                    .problems
                    .iter()
                    .map(commands::check::problem_json)
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"valid": false, "file": cli.config, "notes": [], "warnings": [], "problems": problems})
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
        Command::CheckConfig { json } => commands::check::check_config(&cfg, json),
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
            (Ok(now), Ok(slot)) => rt().block_on(commands::backup::run_backups(
                &cfg,
                source.as_deref(),
                now,
                slot,
                json,
            )),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("backup-agent: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::List { source, json } => commands::stores::list(&cfg, source.as_deref(), json),
        Command::ArchiveBinlog {
            source,
            segment_size,
        } => rt().block_on(commands::backup::archive_binlog(
            &cfg,
            source.as_deref(),
            &segment_size,
        )),
        Command::Prune {
            source,
            dry_run,
            json,
            now,
        } => match parse_now(&now) {
            Ok(now) => commands::stores::prune(&cfg, source.as_deref(), dry_run, json, now),
            Err(e) => {
                eprintln!("backup-agent: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Scrub { source, all, json } => {
            commands::stores::scrub(&cfg, source.as_deref(), all, json)
        }
        Command::Repair { source } => commands::stores::repair(&cfg, source.as_deref()),
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
