//! Logs: one JSON object per line when not on a terminal (the container), readable text on
//! a terminal. Level from RUST_LOG (default info). The daemon logs to stdout (the
//! container's log); one-shot commands log to stderr so that their output on stdout stays
//! parseable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(to_stdout: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("BACKUP_AGENT_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ if to_stdout => !std::io::stdout().is_terminal(),
        _ => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match (json, to_stdout) {
        (true, true) => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (true, false) => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .try_init(),
        (false, true) => b.with_writer(std::io::stdout).try_init(),
        (false, false) => b.with_writer(std::io::stderr).try_init(),
    };
}
