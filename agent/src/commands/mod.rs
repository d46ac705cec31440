//! The commands of `backup-agent` other than the daemon: one module per family, and what
//! they share (exit codes, the sources a command applies to, the state it may trust).

use std::process::ExitCode;

use backup_core::config::Config;
use backup_core::state::StateStore;

pub mod backup;
pub mod check;
pub mod stores;

/// Exit codes from the contract.
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_DEGRADED: u8 = 3;

pub fn parse_now(now: &Option<String>) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    now.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&chrono::Utc))
                .map_err(|e| format!("{t:?}: {e}; write e.g. 2026-11-21T02:00:00Z"))
        })
        .transpose()
}

pub fn sources_or_exit<'a>(
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
pub fn readable_state(cfg: &Config) -> Result<StateStore, ExitCode> {
    let state = StateStore::new(&cfg.agent.state_dir);
    match state.load() {
        Ok(_) => Ok(state),
        Err(e) => {
            eprintln!("backup-agent: {e}");
            Err(ExitCode::from(EXIT_FAILED))
        }
    }
}

pub fn verdict_text(v: &backup_core::policy::Verdict) -> String {
    if v.compliant {
        "compliant".to_string()
    } else {
        format!("NOT compliant: {}", v.reasons.join("; "))
    }
}
