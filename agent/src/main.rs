//! `backup-agent`: the command line on top of the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use backup_agent::alert::Alerter;
use backup_agent::config::{Config, DEFAULT_CONFIG_PATH};
use backup_agent::state::StateStore;
use backup_agent::{check, crypto, daemon, health, logging, store};

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
    /// Take one backup now, of every source (or one), into the configured store.
    Backup {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Freshness verdict, one line: exit 0 OK, 1 CRITICAL, 2 no complete backup.
    Healthcheck,
    /// Validate the configuration: keys, secrets readable, certificates usable.
    CheckConfig,
}

/// Exit codes from the contract.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(matches!(cli.command, Command::Run { .. }));
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            if matches!(cli.command, Command::Healthcheck) {
                // The healthcheck always prints one line.
                println!(
                    "CRITICAL: invalid configuration: {}",
                    e.to_string().replace('\n', " ")
                );
                return ExitCode::from(health::CRITICAL);
            }
            eprintln!("backup-agent: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    match cli.command {
        Command::CheckConfig => check_config(&cfg),
        Command::Healthcheck => {
            let (v, _, _) = health::check(&cfg);
            println!("{}", v.line);
            ExitCode::from(v.code)
        }
        Command::Backup { source } => rt().block_on(run_backups(&cfg, source.as_deref())),
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

fn check_config(cfg: &Config) -> ExitCode {
    let r = check::check(cfg);
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

async fn run_backups(cfg: &Config, only: Option<&str>) -> ExitCode {
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
    let keys = match crypto::SealingKeys::load(enc) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::error!(event = "backup_failed", error = %e, "cannot load keys");
            eprintln!("backup-agent: backup failed: {e}");
            for src in &sources {
                let a = backup_agent::alert::Alert::new(
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
    let st = store::open_store(&cfg.stores[0]);
    let mut failed = false;
    for src in sources {
        match daemon::backup_once(cfg, src, keys.clone(), &state, &alerter).await {
            Ok(r) => println!(
                "backup {} of source {}: {} bytes, sha256 {}, {} tables, {} rows, {:.1}s, store {} ({})",
                r.manifest.backup_id,
                src.name,
                r.manifest.data.size,
                r.manifest.data.sha256,
                r.manifest.tables,
                r.rows,
                r.duration_secs,
                st.name(),
                st.describe(&format!("{}/{}", src.prefix, r.manifest.data.name)),
            ),
            Err(e) => {
                failed = true;
                eprintln!("backup-agent: backup failed: {e}");
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
