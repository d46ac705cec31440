//! Logs: on standard error, one JSON object per line when it is not a terminal (the
//! container, journald, a file), readable text on a terminal, never ANSI colour codes
//! outside one. Level from RUST_LOG (default info). Standard output carries only the
//! commands' own output (reports, `--json`), so it stays parseable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match std::env::var("BACKUP_AGENT_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !terminal,
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        b.try_init()
    };
}
