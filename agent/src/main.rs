//! `backup-agent`: the command line on top of the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use backup_agent::config::{Config, DEFAULT_CONFIG_PATH};
use backup_agent::{backup, check, crypto, logging, store};

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
    /// Take one backup now, of every source (or one), into the configured store.
    Backup {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Validate the configuration: keys, secrets readable, certificates usable.
    CheckConfig,
}

/// Exit codes from the contract.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("backup-agent: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match cli.command {
        Command::CheckConfig => check_config(&cfg),
        Command::Backup { source } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(run_backups(&cfg, source.as_deref()))
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
    let keys = match crypto::SealingKeys::load(enc) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::error!(event = "backup_failed", error = %e, "cannot load keys");
            eprintln!("backup-agent: backup failed: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let st = store::open_store(&cfg.stores[0]);
    let mut failed = false;
    for src in sources {
        tracing::info!(event = "backup_started", source = %src.name, store = %st.name());
        match backup::run_backup(src, enc, keys.clone(), st.as_ref()).await {
            Ok(r) => {
                for t in &r.non_transactional {
                    tracing::warn!(event = "non_transactional_table", source = %src.name, table = %t, "dumped without snapshot consistency");
                }
                tracing::info!(
                    event = "backup_succeeded",
                    source = %src.name,
                    backup = %r.manifest.backup_id,
                    store = %st.name(),
                    bytes = r.manifest.data.size,
                    duration = r.duration_secs,
                    tables = r.manifest.tables,
                    rows = r.rows,
                );
                println!(
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
                );
            }
            Err(e) => {
                failed = true;
                tracing::error!(event = "backup_failed", source = %src.name, error = %e);
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
